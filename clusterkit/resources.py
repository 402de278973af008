"""Where clusterkit's own files are: the playbooks (an Ansible collection's roles and site.yml)
and the node image recipes, whether clusterkit runs from a checkout or an installed wheel."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def playbook_dir() -> Path:
    return Path(str(files("clusterkit") / "playbooks"))
