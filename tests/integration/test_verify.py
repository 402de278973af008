"""``verify`` on a real configured cluster (a head and two computes), healthy then broken.

One cluster serves the module; the tests run in order and each breaks a little more: first
all is well, then slurmd dies on compute-st-1, then compute-st-2 stops answering SSH.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from clusterkit.checks import ACCOUNTING_CHECKS
from clusterkit.verify import COMPUTE_CHECKS, HEAD_CHECKS, Check, failures, verify
from tests.driver import Clusterkit

NAME = "vfy-it"
HEAD = f"{NAME}-head"
COMPUTES = ("compute-st-1", "compute-st-2")
STEP_CHECKS = {"cgroup-cpus", "cgroup-memory"}


@pytest.fixture(scope="module")
def cluster(ck: Clusterkit) -> Iterator[str]:
    ck.up(NAME, len(COMPUTES), configure=True)
    yield NAME
    ck.run("down", NAME, check=False)


@pytest.fixture
def home(ck: Clusterkit, monkeypatch: pytest.MonkeyPatch) -> None:
    """``verify`` runs in this process: point it at the module's CLUSTERKIT_HOME."""
    monkeypatch.setenv("CLUSTERKIT_HOME", str(ck.home))


def names_by_node(checks: list[Check]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for check in checks:
        found.setdefault(check.node, []).append(check.name)
    return found


# A node supervisor's services: a test takes one away (then waits out a pass that still had
# it) before killing it, or ck-supervise has it back within a second.
SERVICES = "/etc/clusterkit/services"


@pytest.mark.usefixtures("home")
def test_a_healthy_cluster_passes_every_check_on_every_node(ck: Clusterkit, cluster: str) -> None:
    start = time.monotonic()
    checks = verify(cluster)
    elapsed = time.monotonic() - start
    assert failures(checks) == []
    by_node = names_by_node(checks)
    assert list(by_node) == [HEAD, *COMPUTES]
    assert by_node[HEAD] == [*HEAD_CHECKS, *ACCOUNTING_CHECKS]  # accounting is on by default
    assert all(by_node[c] == list(COMPUTE_CHECKS) for c in COMPUTES)
    assert elapsed < 30, f"verify took {elapsed:.1f}s"
    # What shared-rw wrote is gone (the head's shared directory is the cluster's shared/).
    assert list((ck.cluster_dir(cluster) / "shared").glob(".ck-verify-*")) == []


@pytest.mark.usefixtures("home")
def test_a_dead_slurmd_fails_that_nodes_slurmd_check(ck: Clusterkit, cluster: str) -> None:
    # Unsupervised first: ck-supervise would have slurmd back within a second.
    ck.ssh(cluster, "compute-st-1", f"rm {SERVICES}/slurmd.json && sleep 1.5 && pkill -x slurmd")
    failed = failures(verify(cluster))
    assert {c.node for c in failed} == {"compute-st-1"}
    names = {c.name for c in failed}
    assert "slurmd" in names
    assert names <= {"slurmd", "slurm-idle", *STEP_CHECKS}  # Slurm may not have noticed yet
    slurmd = next(c for c in failed if c.name == "slurmd")
    assert slurmd.detail == "slurmd is not running on compute-st-1"


@pytest.mark.usefixtures("home")
def test_a_node_without_ssh_gives_failed_checks_not_an_exception(
    ck: Clusterkit, cluster: str
) -> None:
    # Unsupervised first (ck-supervise would restart sshd); the pkill ends this session too.
    ck.ssh(
        cluster,
        "compute-st-2",
        f"rm {SERVICES}/sshd.json && sleep 1.5 && pkill -x sshd",
        check=False,
    )
    checks = verify(cluster)
    node_checks = [c for c in checks if c.node == "compute-st-2"]
    assert [c.name for c in node_checks] == list(COMPUTE_CHECKS)
    lost = [c for c in node_checks if c.name != "slurm-idle"]  # slurmctld's view, not SSH
    assert all(not c.ok for c in lost)
    assert all("SSH to compute-st-2 failed" in c.detail for c in lost)
    assert [c for c in failures(checks) if c.node == HEAD] == []
