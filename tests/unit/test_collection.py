"""The playbooks as an Ansible collection an ops team installs: every role declares every
``ck_*`` input it reads, and a missing or mistyped input stops the play with its name."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from clusterkit.resources import playbook_dir

ROLES = playbook_dir() / "roles"
BIN = Path(sys.executable).parent
VARIABLE = re.compile(r"(?<![/\w])ck_[a-z_]+")  # not a file such as /etc/ssh/ck_node_key


def _declared(role: Path) -> set[str]:
    spec = yaml.safe_load((role / "meta" / "argument_specs.yml").read_text(encoding="utf-8"))
    return {o for entry in spec["argument_specs"].values() for o in entry["options"]}


def _used(role: Path) -> set[str]:
    found: set[str] = set()
    for path in role.rglob("*"):
        if path.is_file() and "meta" not in path.parts:
            found |= set(VARIABLE.findall(path.read_text(encoding="utf-8")))
    return found


@pytest.mark.parametrize("role", sorted(p.name for p in ROLES.iterdir()))
def test_every_input_a_role_reads_is_declared(role: str) -> None:
    path = ROLES / role
    registered = {m for m in _used(path) if m.startswith(f"ck_{role}")}  # its own results
    assert _used(path) - registered <= _declared(path)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The collection built from playbooks/ and installed, as ops teams get it."""
    root = tmp_path_factory.mktemp("collection")
    galaxy = str(BIN / "ansible-galaxy")
    subprocess.run([galaxy, "collection", "build", str(playbook_dir()), "--output-path",
                    str(root)], check=True, capture_output=True)  # fmt: skip
    tarball = next(root.glob("clusterkit-cluster-*.tar.gz"))
    subprocess.run([galaxy, "collection", "install", str(tarball), "-p", str(root / "installed")],
                   check=True, capture_output=True)  # fmt: skip
    return root


def _play(installed: Path, extra: dict[str, str]) -> str:
    play = installed / "play.yml"
    play.write_text(
        "- hosts: localhost\n  connection: local\n  gather_facts: false\n"
        "  roles: [clusterkit.cluster.munge]\n"
    )
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(installed),
           "ANSIBLE_COLLECTIONS_PATH": str(installed / "installed")}  # fmt: skip
    proc = subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", "localhost,", str(play), "-e", json.dumps(extra)],
        env=env, capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert proc.returncode != 0, proc.stdout
    return proc.stdout


def test_a_missing_input_stops_the_role_naming_it(installed: Path) -> None:
    out = _play(installed, {})
    assert "missing required arguments: ck_munge_key_src" in out


def test_a_mistyped_input_stops_the_role_naming_it(installed: Path) -> None:
    out = _play(installed, {"ck_munge_key_src": "/k", "ck_service_manager": "upstart"})
    assert "value of ck_service_manager must be one of: systemd, direct, got: upstart" in out
