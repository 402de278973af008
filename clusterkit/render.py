"""All template rendering: Jinja2 with StrictUndefined, values computed by the caller.

Templates live in ``templates/`` (``resources.templates_dir``: at the top of a checkout, in
the package of a wheel or of the nodes' archive). A template only places values; any
decision is made in Python before rendering.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import jinja2

from clusterkit.resources import templates_dir


@cache
def environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(templates_dir()),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,  # noqa: S701 - config files, not HTML
    )


def render_file(path: Path, **values: Any) -> str:
    """Render a template kept outside ``templates/`` (an image recipe's), the same way."""
    return environment().from_string(path.read_text(encoding="utf-8")).render(**values)


def render(template: str, **values: Any) -> str:
    """Render ``templates/<template>``; a missing value raises instead of rendering empty."""
    return environment().get_template(template).render(**values)
