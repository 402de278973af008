"""The archive of clusterkit's node-side part, shipped to every node through shared storage.

Node tools run with the node's system python3, so only modules free of the controller's
dependencies go in. ``ARCHIVE`` names them, and ``make lint`` holds what it ships to the same
list: its modules import only each other, the standard library and ``NODE_PACKAGES``
(``tests/import_contracts.py``, an import-linter contract; functions' imports included).
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import clusterkit
from clusterkit.resources import templates_dir

# What of the package the nodes get: the package marker, errors, the subprocess helper,
# rendering, Slurm helpers (its JSON, its reader, hostlists), templates, and the node tools.
ARCHIVE = (
    "__init__.py", "errors.py", "proc.py", "render.py", "resources.py", "slurm.py",
    "slurmreader.py", "hostlist.py", "nodetools", "templates",
)  # fmt: skip
# What the nodes' python3 has besides the standard library (Debian's python3-jinja2 and
# python3-boto3, which the node image and the local host install).
NODE_PACKAGES = ("jinja2", "boto3", "botocore")


def archive_modules() -> list[str]:
    """The dotted names of the Python modules and packages ``ARCHIVE`` ships."""
    return [
        "clusterkit" if name == "__init__.py" else f"clusterkit.{name.removesuffix('.py')}"
        for name in ARCHIVE
        if name != "templates"
    ]


def write_nodetools_archive(path: Path) -> None:
    """The package's ``ARCHIVE`` part as a tarball at ``path``."""
    pkg = Path(clusterkit.__file__).parent
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in ARCHIVE:
            source = templates_dir() if name == "templates" else pkg / name
            tar.add(source, arcname=f"clusterkit/{name}", filter=_no_cache)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())


def _no_cache(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    return None if "__pycache__" in info.name else info
