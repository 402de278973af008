"""A configured cluster (1 head + 2 computes) running real Slurm jobs as a cluster user:
distinct nodes, arrays, cgroup limits, MPI across nodes, shared storage, host-side clients,
and a munge key that stays private; then ``verify`` on it, healthy and broken. The tests
share one cluster and run in file order."""

from __future__ import annotations

import base64
import json
import os
import shlex
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from clusterkit.checks import ACCOUNTING_CHECKS
from clusterkit.verify import COMPUTE_CHECKS, HEAD_CHECKS, Check, failures, verify
from tests.driver import Clusterkit, Result
from tests.local_residue import residue

NAME = "slurmit"
USER = "ckuser"
COMPUTES = ["compute-st-1", "compute-st-2"]
EXAMPLES = Path(__file__).parents[2] / "examples"


@pytest.fixture(scope="module")
def cluster(ck: Clusterkit) -> dict[str, Any]:
    ck.up(NAME, 2, configure=True)
    return ck.status(NAME)


def as_user(ck: Clusterkit, command: str, check: bool = True) -> Result:
    """Run ``command`` on the head as the cluster user, in their home."""
    return ck.run("ssh", NAME, "-u", USER, "--", f"cd ~ && {command}", check=check, timeout=180)


def home(ck: Clusterkit) -> Path:
    """The user's home as the head stores it (the head's /shared lives in the cluster dir)."""
    return ck.cluster_dir(NAME) / "shared" / "home" / USER


def test_every_compute_is_idle_in_slurm(cluster: dict[str, Any]) -> None:
    assert cluster["slurm"]["error"] is None
    assert cluster["slurm"]["nodes"] == dict.fromkeys(COMPUTES, "IDLE")


def test_srun_runs_on_distinct_nodes(ck: Clusterkit, cluster: dict[str, Any]) -> None:
    out = as_user(ck, "srun -N2 hostname").stdout.split()
    assert sorted(out) == COMPUTES


def test_array_job_runs_every_task_as_the_user(ck: Clusterkit, cluster: dict[str, Any]) -> None:
    as_user(
        ck, "sbatch --wait --array=0-7 -o /dev/null --wrap 'hostname > task.$SLURM_ARRAY_TASK_ID'"
    )
    outputs = sorted(home(ck).glob("task.*"))
    assert [p.name for p in outputs] == [f"task.{i}" for i in range(8)]
    assert {p.read_text().strip() for p in outputs} <= set(COMPUTES)
    assert {p.stat().st_uid for p in outputs} == {2001}  # written by the user, not root


def test_cores_are_limited_by_cgroups(ck: Clusterkit, cluster: dict[str, Any]) -> None:
    assert as_user(ck, "srun -c1 nproc").stdout.strip() == "1"
    assert as_user(ck, "srun -c2 nproc").stdout.strip() == "2"


def test_a_job_over_its_memory_dies_and_its_neighbour_lives(
    ck: Clusterkit, cluster: dict[str, Any]
) -> None:
    hog = "python3 -c 'x = bytearray(400 * 1024 * 1024); print(len(x))'"
    neighbour = as_user(
        ck,
        "sbatch --parsable -w compute-st-1 -c1 --mem=100M -o neighbour.out "
        "--wrap 'sleep 4; echo alive'",
    ).stdout.strip()
    offender = as_user(
        ck,
        f"sbatch --wait -w compute-st-1 -c1 --mem=100M -o hog.out --wrap {shlex.quote(hog)}",
        check=False,
    )
    assert offender.returncode != 0
    as_user(ck, f"srun --dependency=afterany:{neighbour} -N1 true")  # waits for the neighbour
    assert (home(ck) / "neighbour.out").read_text().strip() == "alive"
    assert "oom" in (home(ck) / "hog.out").read_text().lower()


def test_mpi_program_across_two_nodes(ck: Clusterkit, cluster: dict[str, Any]) -> None:
    source = home(ck) / "mpi_hello.c"
    source.write_text((EXAMPLES / "jobs" / "mpi_hello.c").read_text())
    os.chown(source, 2001, 2001)
    as_user(ck, "mpicc -O2 -o mpi_hello mpi_hello.c")
    as_user(
        ck,
        "sbatch --wait -N2 --ntasks-per-node=1 -o mpi.out "
        "--wrap 'mpirun --hostfile \"$(ck-machinefile)\" ./mpi_hello'",
    )
    out = (home(ck) / "mpi.out").read_text()
    assert "sum 3 expected 3 OK" in out
    ranks = sorted(line.split()[-1] for line in out.splitlines() if line.startswith("rank "))
    assert ranks == COMPUTES


def test_a_file_written_on_one_compute_is_read_on_another(
    ck: Clusterkit, cluster: dict[str, Any]
) -> None:
    as_user(ck, "srun -w compute-st-1 bash -c 'echo from-$(hostname) > handoff'")
    assert as_user(ck, "srun -w compute-st-2 cat handoff").stdout.strip() == "from-compute-st-1"


def test_slurm_commands_on_this_machine_reach_the_cluster(
    ck: Clusterkit, cluster: dict[str, Any]
) -> None:
    env = ck.client_env(NAME)

    def host_side(*argv: str) -> str:
        return subprocess.run(
            argv, env=env, capture_output=True, text=True, timeout=60, check=True
        ).stdout

    assert sorted(set(host_side("sinfo", "-h", "-N", "-o", "%N").split())) == COMPUTES
    assert host_side("srun", "-N1", "hostname").strip() in COMPUTES


def test_munge_key_is_fresh_private_and_never_logged(
    ck: Clusterkit, cluster: dict[str, Any]
) -> None:
    root = ck.cluster_dir(NAME)
    key = (root / "keys" / "munge.key").read_bytes()
    assert len(key) == 1024
    assert (root / "keys" / "munge.key").stat().st_mode & 0o777 == 0o400
    for node in [f"{NAME}-head", *COMPUTES]:
        path = root / "nodes" / node / "etc" / "munge" / "munge.key"
        assert path.read_bytes() == key, node
        info = path.stat()
        assert info.st_mode & 0o777 == 0o400, node
        assert info.st_uid == _uid("munge"), node
    host_key = Path("/etc/munge/munge.key")
    assert not host_key.exists() or host_key.read_bytes() != key
    needles = [key[:64], base64.b64encode(key)[:64], key.hex()[:64].encode()]
    for path in [
        *(root / "ansible").rglob("*"),
        *(root / "nodes").rglob("*.log"),
        *(root / "logs").rglob("*"),
    ]:
        if path.is_file():
            data = path.read_bytes()
            assert not any(n in data for n in needles), f"munge key material in {path}"


def _uid(user: str) -> int:
    import pwd

    return pwd.getpwnam(user).pw_uid


def test_status_shows_slurm_state_and_queue(ck: Clusterkit, cluster: dict[str, Any]) -> None:
    job = as_user(ck, "sbatch --parsable -w compute-st-2 --wrap 'sleep 30'").stdout.strip()
    wait_running = (
        f"for _ in $(seq 100); do [ $(squeue -h -j {job} -o %T) = RUNNING ] && exit; "
        "sleep 0.2; done; exit 1"
    )
    try:
        as_user(ck, wait_running)
        status = json.loads(ck.run("status", NAME, "-o", "json").stdout)
        running = [j for j in status["slurm"]["jobs"] if str(j["job_id"]) == job]
        assert running and running[0]["user"] == USER
        assert status["slurm"]["nodes"]["compute-st-2"] in {"MIXED", "ALLOCATED"}
        table = ck.run("status", NAME).stdout
        assert job in table and "SLURM" in table
    finally:
        as_user(ck, f"scancel {job}")


def test_up_again_keeps_the_cluster_working(ck: Clusterkit, cluster: dict[str, Any]) -> None:
    before = json.loads((ck.cluster_dir(NAME) / "state.json").read_text())["nodes"]
    ck.up(NAME, 2, configure=True)
    after = json.loads((ck.cluster_dir(NAME) / "state.json").read_text())["nodes"]
    assert {n: v["pids"] for n, v in after.items()} == {n: v["pids"] for n, v in before.items()}
    assert sorted(as_user(ck, "srun -N2 hostname").stdout.split()) == COMPUTES


# --- verify, healthy then broken: each test breaks a little more (first all is well, then
# slurmd dies on compute-st-1, then compute-st-2 stops answering SSH), so they come last.

HEAD = f"{NAME}-head"
STEP_CHECKS = {"cgroup-cpus", "cgroup-memory"}
# A node supervisor's services: a test takes one away (then waits out a pass that still had
# it) before killing it, or ck-supervise has it back within a second.
SERVICES = "/etc/clusterkit/services"


@pytest.fixture
def here(ck: Clusterkit, monkeypatch: pytest.MonkeyPatch) -> None:
    """``verify`` runs in this process: point it at the module's CLUSTERKIT_HOME."""
    monkeypatch.setenv("CLUSTERKIT_HOME", str(ck.home))


def names_by_node(checks: list[Check]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for check in checks:
        found.setdefault(check.node, []).append(check.name)
    return found


@pytest.mark.usefixtures("here")
def test_a_healthy_cluster_passes_every_check_on_every_node(
    ck: Clusterkit, cluster: dict[str, Any]
) -> None:
    start = time.monotonic()
    checks = verify(NAME)
    elapsed = time.monotonic() - start
    assert failures(checks) == []
    by_node = names_by_node(checks)
    assert list(by_node) == [HEAD, *COMPUTES]
    assert by_node[HEAD] == [*HEAD_CHECKS, *ACCOUNTING_CHECKS]  # accounting is on by default
    assert all(by_node[c] == list(COMPUTE_CHECKS) for c in COMPUTES)
    assert elapsed < 30, f"verify took {elapsed:.1f}s"
    # What shared-rw wrote is gone (the head's shared directory is the cluster's shared/).
    assert list((ck.cluster_dir(NAME) / "shared").glob(".ck-verify-*")) == []


@pytest.mark.usefixtures("here")
def test_a_dead_slurmd_fails_that_nodes_slurmd_check(
    ck: Clusterkit, cluster: dict[str, Any]
) -> None:
    # Unsupervised first: ck-supervise would have slurmd back within a second.
    ck.ssh(NAME, "compute-st-1", f"rm {SERVICES}/slurmd.json && sleep 1.5 && pkill -x slurmd")
    failed = failures(verify(NAME))
    assert {c.node for c in failed} == {"compute-st-1"}
    names = {c.name for c in failed}
    assert "slurmd" in names
    assert names <= {"slurmd", "slurm-idle", *STEP_CHECKS}  # Slurm may not have noticed yet
    slurmd = next(c for c in failed if c.name == "slurmd")
    assert slurmd.detail == "slurmd is not running on compute-st-1"


@pytest.mark.usefixtures("here")
def test_a_node_without_ssh_gives_failed_checks_not_an_exception(
    ck: Clusterkit, cluster: dict[str, Any]
) -> None:
    # Unsupervised first (ck-supervise would restart sshd); the pkill ends this session too.
    ck.ssh(NAME, "compute-st-2", f"rm {SERVICES}/sshd.json && sleep 1.5 && pkill -x sshd",
           check=False)  # fmt: skip
    checks = verify(NAME)
    node_checks = [c for c in checks if c.node == "compute-st-2"]
    assert [c.name for c in node_checks] == list(COMPUTE_CHECKS)
    lost = [c for c in node_checks if c.name != "slurm-idle"]  # slurmctld's view, not SSH
    assert all(not c.ok for c in lost)
    assert all("SSH to compute-st-2 failed" in c.detail for c in lost)
    assert [c for c in failures(checks) if c.node == HEAD] == []


def test_down_leaves_nothing(ck: Clusterkit, cluster: dict[str, Any]) -> None:
    ck.run("down", NAME)
    assert residue(ck, NAME) == []
