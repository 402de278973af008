"""Ops teams' path: bare nodes from `up --no-configure`, then clusterkit's playbooks applied
with plain `ansible-playbook` and the inventory `clusterkit inventory` writes, give the same
working Slurm cluster as `up` does."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from clusterkit.resources import playbook_dir
from tests.driver import Clusterkit
from tests.local_residue import residue

NAME = "byhand"


def test_playbooks_by_hand_make_a_working_cluster(ck: Clusterkit, tmp_path: Path) -> None:
    ck.up(NAME, 2)  # bare: SSH only
    bare = ck.ssh(NAME, "compute-st-1", "pgrep -x slurmd", check=False)
    assert bare.returncode == 1  # nothing configured yet

    ck.run("inventory", NAME, "-o", str(tmp_path))
    inventory = tmp_path / "inventory.yml"
    assert "ck_munge_key_src" in inventory.read_text()
    playbook = subprocess.run(
        [str(Path(sys.executable).with_name("ansible-playbook")), "-i", str(inventory),
         str(playbook_dir() / "site.yml")],
        env={**ck.env, "ANSIBLE_ROLES_PATH": str(playbook_dir() / "roles")},
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert playbook.returncode == 0, playbook.stdout[-3000:]
    assert "failed=0" in playbook.stdout

    hosts = ck.run("ssh", NAME, "-u", "ckuser", "--", "srun -N2 hostname", timeout=120).stdout
    assert sorted(hosts.split()) == ["compute-st-1", "compute-st-2"]

    ck.run("down", NAME)
    assert residue(ck, NAME) == []
