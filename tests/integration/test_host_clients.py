"""The host is the login node: what a user has on it runs on the nodes, through Slurm
clients on the host (``clusterkit env``), whatever home clusterkit keeps its state in.

One cluster lives in a home whose path has a space; from it, a program and a Python venv
under /root run as jobs, and dask-jobqueue (a client no one here wrote) computes on two
nodes. A second, short-lived cluster lives in a symlinked home under /root."""

from __future__ import annotations

import ipaddress
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.driver import Clusterkit
from tests.local_residue import residue

NAME = "hostcl"
COMPUTES = ["compute-st-1", "compute-st-2"]


@pytest.fixture(scope="module")
def spaced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clusterkit]:
    ck = Clusterkit(tmp_path_factory.mktemp("homes") / "my clusters")
    ck.up(NAME, len(COMPUTES), configure=True)
    yield ck
    ck.run("down", NAME, check=False)


@pytest.fixture
def under_root() -> Iterator[Path]:
    """A directory of the user's under /root (the host's root home), removed after."""
    path = Path(tempfile.mkdtemp(prefix=".ck-test-", dir="/root"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def sbatch_wait(env: dict[str, str], out: Path, command: str) -> str:
    """Submit ``command`` from this machine, wait for it, return what it printed."""
    proc = subprocess.run(
        ["sbatch", "--wait", "-N1", "-o", str(out), "--wrap", command],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    printed = out.read_text() if out.exists() else "(no output file)"
    assert proc.returncode == 0, f"sbatch exited {proc.returncode}: {proc.stderr}\n{printed}"
    return printed


def test_the_home_with_a_space_holds_a_working_cluster(spaced: Clusterkit) -> None:
    assert " " in str(spaced.home)
    status = spaced.status(NAME)
    assert status["status"] == "ready"
    assert (spaced.cluster_dir(NAME) / "state.json").exists()
    assert [n["name"] for n in status["nodes"] if n["role"] == "compute"] == COMPUTES
    # The reconciler starts before slurmctld: its first passes are no error to show.
    assert [a for a in status["actions"] if a.get("action") == "error"] == []


def test_a_job_runs_a_program_and_a_venv_that_live_under_root(
    spaced: Clusterkit, under_root: Path, tmp_path: Path
) -> None:
    venv = under_root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    script = under_root / "where.py"
    script.write_text("import socket, sys\nprint(sys.prefix, socket.gethostname())\n")
    env = spaced.client_env(NAME)
    prefix, host = sbatch_wait(env, tmp_path / "venv.out", f"{venv}/bin/python {script}").split()
    assert prefix == str(venv)
    assert host in COMPUTES
    tool = under_root / "hello.sh"
    tool.write_text("#!/bin/sh\necho hello from $(hostname)\n")
    tool.chmod(0o755)
    assert sbatch_wait(env, tmp_path / "tool.out", str(tool)).split()[:2] == ["hello", "from"]


def test_root_on_a_node_keeps_its_own_home(spaced: Clusterkit) -> None:
    out = spaced.ssh(NAME, "compute-st-1", 'echo "$HOME"; touch ~/.ck-node-wrote').stdout
    assert out.strip() == "/var/lib/clusterkit/root"
    assert not Path("/root/.ck-node-wrote").exists()  # nothing of the node's lands on the host


def test_dask_jobqueue_computes_a_sum_on_two_nodes(
    spaced: Clusterkit, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dask_jobqueue import SLURMCluster
    from distributed import Client

    for key, value in spaced.client_env(NAME).items():
        monkeypatch.setenv(key, value)
    # The scheduler listens on the host's end of the cluster bridge, where workers reach it.
    bridge = str(next(ipaddress.ip_network(spaced.status(NAME)["subnet"]).hosts()))
    cluster = SLURMCluster(
        cores=2, processes=1, memory="1GB", walltime="00:10:00", python=sys.executable,
        scheduler_options={"host": bridge, "dashboard_address": f"{bridge}:0"},
        log_directory=str(tmp_path / "logs"),
    )  # fmt: skip
    try:
        cluster.scale(jobs=2)  # 2 cores each: one worker per node
        with Client(cluster) as client:
            client.wait_for_workers(2, timeout=120)
            hosts = client.run(socket.gethostname)
            assert sorted(hosts.values()) == COMPUTES
            squares = client.map(lambda x: x * x, range(100))
            assert client.submit(sum, squares).result(timeout=60) == 328350
    finally:
        cluster.close()


def test_a_symlinked_home_under_root_works_and_down_leaves_nothing(
    under_root: Path, tmp_path: Path
) -> None:
    real = under_root / "real home"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    ck = Clusterkit(link)
    try:
        ck.up("linked", 1, configure=True)
        assert (real / "clusters" / "linked" / "state.json").exists()
        out = ck.ssh("linked", "linked-head", "sbatch --wait -o /tmp/ck-linked.out "
                     "--wrap hostname >/dev/null && cat /tmp/ck-linked.out").stdout  # fmt: skip
        assert out.strip() == "compute-st-1"
    finally:
        ck.run("down", "linked", check=False)
    assert residue(ck, "linked") == []


def test_a_name_live_in_another_home_is_refused_at_once(spaced: Clusterkit, tmp_path: Path) -> None:
    other = Clusterkit(tmp_path / "other")
    proc = other.run("up", "-f", str(other.spec(NAME, 1)), check=False, timeout=30)
    assert proc.returncode == 1
    assert f"live on this machine from CLUSTERKIT_HOME={spaced.home}" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    down = other.run("down", NAME, check=False, timeout=30)
    assert down.returncode == 1 and "live on this machine" in down.stderr
    assert spaced.status(NAME)["status"] == "ready"  # the first home's cluster is untouched
    assert not (other.home / "clusters" / NAME).exists()


def test_down_leaves_nothing(spaced: Clusterkit) -> None:
    spaced.run("down", NAME)
    assert residue(spaced, NAME) == []
    assert not Path(f"/run/clusterkit/local/{NAME}").exists()
