"""Where clusterkit's own files are: its templates, its playbooks (an Ansible collection) and
its node image recipes.

They live at the top of the repository (``templates/``, ``playbooks/``, ``images/``), where
ops teams find them, and the build backend maps them into the wheel under the package
(``clusterkit/templates/`` ...). So a directory is looked for in the package first (an
installed wheel, and the nodes' archive), then beside it (a checkout, editable installs).
Standard library only: nodes render templates from the archive with it.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


def _find(name: str) -> Path:
    inside = PACKAGE / name
    return inside if inside.is_dir() else PACKAGE.parent / name


def templates_dir() -> Path:
    return _find("templates")


def playbook_dir() -> Path:
    return _find("playbooks")


def images_dir() -> Path:
    return _find("images")
