"""Bigger local clusters on this machine: a configured head and 64 static compute nodes, each
verified by up; and a job that powers up 64 dynamic nodes at once. Each test builds its own
cluster and takes it down (one at a time: 64 nodes are about 2.8 GiB here)."""

from __future__ import annotations

import time

from tests.driver import Clusterkit
from tests.local_residue import residue

NODES = 64
USER = "ckuser"


def spec(ck: Clusterkit, name: str, static: int, dynamic: int) -> str:
    return str(ck.write_spec({
        "name": name,
        "groups": [{"name": "compute", "min": static, "max": static + dynamic, "cpus": 2,
                    "memory_mb": 1024}],
    }))  # fmt: skip


def test_a_head_and_64_nodes_come_up_verified(ck: Clusterkit) -> None:
    try:
        ck.run("up", "-f", spec(ck, "wide", NODES, 0), timeout=600)
        status = ck.status("wide")
        names = [f"compute-st-{i}" for i in range(1, NODES + 1)]
        assert status["status"] == "ready"
        assert [n["name"] for n in status["nodes"]] == ["wide-head", *names]
        assert status["slurm"]["nodes"] == dict.fromkeys(names, "IDLE")
    finally:
        ck.down("wide")
    assert residue(ck, "wide") == []


def test_one_job_powers_up_64_dynamic_nodes_at_once(ck: Clusterkit) -> None:
    try:
        ck.run("up", "-f", spec(ck, "burst", 0, NODES), timeout=600)
        start = time.monotonic()
        job = ck.run("ssh", "burst", "-u", USER, "--",
                     f"sbatch --parsable --wait -N{NODES} --wrap 'srun hostname' "
                     "-o out.txt && sort -u out.txt | wc -l",
                     timeout=400).stdout.split()  # fmt: skip
        took = time.monotonic() - start
        assert job[-1] == str(NODES), f"{job} after {took:.1f} s"  # every node ran its task
    finally:
        ck.down("burst")
    assert residue(ck, "burst") == []
