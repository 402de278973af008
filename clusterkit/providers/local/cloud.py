"""The local cloud service of a cluster, seen from this machine: where its socket is, how to
start, stop and talk to it. The service itself (a stand-in for the EC2 API and for the
instance metadata service) is ``cloudsvc``, run as a process of its own per cluster.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path

from clusterkit.errors import ProviderError
from clusterkit.nodetools.cloud import LocalCloud
from clusterkit.providers.local.node import kill_pids
from clusterkit.state import (
    ClusterState,
)

SOCKET_ROOT = Path("/run/clusterkit/cloud")
IN_HEAD = Path("/var/lib/clusterkit/cloud")  # where the head sees the socket's directory
MODULE = "clusterkit.providers.local.cloudsvc"  # the service, run as `python -m MODULE NAME`
START_TIMEOUT_SECONDS = 10.0
NOTICE_ACTIONS = ("terminate", "stop", "hibernate")  # what spot/instance-action may say
MAX_NOTICE_SECONDS = 86400.0
EVENT_SOURCE = "cloud"


def socket_dir(cluster: str) -> Path:
    return SOCKET_ROOT / cluster


def socket_path(cluster: str) -> Path:
    return socket_dir(cluster) / "cloud.sock"


def client(cluster: str) -> LocalCloud:
    """The host's client of cluster ``cluster``'s service."""
    return LocalCloud(str(socket_path(cluster)), timeout=30.0)


# ---------------------------------------------------------------------------------------------
# Starting and stopping it (from the provider)


def prepare_dir(cluster: str) -> Path:
    directory = socket_dir(cluster)
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o750)  # noqa: S103 - group slurm: the head's programs connect
    return directory


def start(state: ClusterState) -> int:
    """Start the service of ``state``'s cluster unless it runs; return its pid."""
    running = service_pids(state.name)
    serving = server_pids(state.name)
    if serving and len(running) > len(serving) and answers(state.name):
        return running[0]  # the keeper and its server
    kill_pids(running)
    import subprocess  # noqa: PLC0415

    (state.dir / "logs").mkdir(parents=True, exist_ok=True)
    with open(state.dir / "logs" / "cloud.log", "ab") as log:
        child = subprocess.Popen(
            [sys.executable, "-m", MODULE, state.name],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
            env={**os.environ, "CLUSTERKIT_HOME": str(state.dir.parent.parent)},
        )  # fmt: skip
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if answers(state.name):
            return child.pid
        if child.poll() is not None:
            break
        time.sleep(0.05)
    kill_pids([child.pid])
    raise ProviderError(
        f"the local cloud service of {state.name} did not start; see {state.dir}/logs/cloud.log"
    )


def answers(cluster: str) -> bool:
    """Whether the service of ``cluster`` accepts a connection on its socket."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(2)
            sock.connect(str(socket_path(cluster)))
        return True
    except OSError:
        return False


def server_pids(cluster: str) -> list[int]:
    """The server processes of ``cluster``'s service (its keeper apart)."""
    return [pid for pid in service_pids(cluster) if _argv(pid)[4:5] == [b"--serve"]]


def _argv(pid: int) -> list[bytes]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().split(b"\0")
    except OSError:
        return []


def service_pids(cluster: str) -> list[int]:
    """Processes of cluster ``cluster``'s service, its keeper and its server (found by
    command line: works without state)."""
    wanted = [b"-m", MODULE.encode(), cluster.encode()]
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as fh:
                argv = fh.read().split(b"\0")
        except OSError:
            continue
        if argv[1:4] == wanted:
            found.append(int(entry.name))
    return found


def stop(cluster: str) -> list[str]:
    """End the service and remove its socket directory; returns what was removed."""
    removed = []
    pids = service_pids(cluster)
    if pids:
        kill_pids(pids)
        removed.append(f"cloud service (pid {', '.join(map(str, pids))})")
    directory = socket_dir(cluster)
    if directory.exists():
        for child in directory.iterdir():
            child.unlink()
        directory.rmdir()
        removed.append(f"dir {directory}")
    return removed
