"""A configuration step that fails names the host, the task and the error, and leaves the
cluster in state so that `down` still removes all of it."""

from __future__ import annotations

import json
import subprocess

from tests.driver import Clusterkit
from tests.local_residue import residue

NAME = "cfgfail"


def test_failed_task_is_reported_and_down_still_cleans_up(ck: Clusterkit) -> None:
    ck.up(NAME, 1)  # bare nodes first, so the head's private /etc/slurm exists
    etc_slurm = ck.cluster_dir(NAME) / "nodes" / f"{NAME}-head" / "etc" / "slurm"
    subprocess.run(["chattr", "+i", str(etc_slurm)], check=True)  # nothing can be written there
    try:
        failed = ck.run("up", "-f", str(ck.spec(NAME, 1)), check=False, timeout=600)
    finally:
        subprocess.run(["chattr", "-i", str(etc_slurm)], check=True)
    assert failed.returncode == 1
    error = failed.stderr.strip().splitlines()[-1]
    assert error.startswith(f"error: configuration failed on {NAME}-head, task ")
    assert "Install the Slurm configuration" in error
    assert "(full log under " in error
    state = json.loads((ck.cluster_dir(NAME) / "state.json").read_text())
    assert state["status"] == "failed"
    assert "configure" not in state["steps"]

    ck.run("down", NAME)
    assert residue(ck, NAME) == []
