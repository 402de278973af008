"""Processes of a local node: the namespace holder, sshd, and the means to enter and kill them.

A node is a network namespace (made by ``net``) plus a UTS and a mount namespace owned by a
*holder* process (``sleep infinity`` named ``ck-node:CLUSTER:NODE``). The holder sets the
hostname and bind-mounts the node's private directories before it starts sleeping; every
other process of the node is started inside the holder's namespaces with ``nsenter``.
Processes are found for killing by their network namespace, so nothing of a node escapes
``down`` even when the state never learned its pid.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from clusterkit.errors import ProviderError
from clusterkit.providers.local import net

# Host path inside the node dir -> where it is bind-mounted in the node. Files are listed
# apart from directories because the mount target of a file must be a file.
NODE_DIRS = {
    "etc/ssh": "/etc/ssh",
    "etc/slurm": "/etc/slurm",
    "etc/munge": "/etc/munge",
    "run/munge": "/run/munge",
    "spool/slurmd": "/var/spool/slurmd",
    "log/slurm": "/var/log/slurm",
}
NODE_FILES = {"hosts": "/etc/hosts"}

# The holder's script: everything before `exec` runs once in the new namespaces.
_HOLDER_SCRIPT = r"""
set -eu
node=$1; root=$2; shift 2
hostname "$node"
mkdir -p /run/sshd
while [ $# -gt 0 ]; do
    [ -e "$2" ] || mkdir -p "$2"
    mount --bind "$root/$1" "$2"
    shift 2
done
echo ready
exec -a "ck-node:$CK_CLUSTER:$node" sleep infinity
"""


@dataclass(frozen=True)
class LocalNode:
    cluster: str
    name: str
    index: int
    address: str
    root: Path  # the node's private directory on the host

    @property
    def netns(self) -> Path:
        return net.netns_path(self.cluster, self.name)

    def prepare_dirs(self) -> None:
        for rel in NODE_DIRS:
            (self.root / rel).mkdir(parents=True, exist_ok=True)
        for rel, target in NODE_FILES.items():
            (self.root / rel).touch(exist_ok=True)
            Path(target).touch(exist_ok=True)  # a file mount needs a file to cover
        (self.root / "etc/ssh/authorized_keys").mkdir(exist_ok=True)

    def start_holder(self, timeout: float = 10.0) -> int:
        """Start the holder in the node's netns; return its pid once mounts are in place."""
        binds: list[str] = []
        for rel, target in {**NODE_DIRS, **NODE_FILES}.items():
            binds += [rel, target]
        argv = [
            "nsenter", f"--net={self.netns}", "--",
            "unshare", "--uts", "--mount", "--propagation", "private", "--",
            "bash", "-c", _HOLDER_SCRIPT, "ck-holder", self.name, str(self.root), *binds,
        ]  # fmt: skip
        log = open(self.root / "holder.log", "wb")  # noqa: SIM115 - handed to the child
        with log:
            child = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                start_new_session=True,
                env={**_clean_env(), "CK_CLUSTER": self.cluster},
            )
        stdout = child.stdout
        if stdout is None:  # pragma: no cover - stdout=PIPE always gives a pipe
            raise ProviderError(f"node {self.name}: no pipe from the holder")
        ready, _, _ = select.select([stdout], [], [], timeout)
        line = stdout.readline() if ready else b""
        stdout.close()
        if line.strip() != b"ready":
            kill_pids([child.pid])
            tail = (self.root / "holder.log").read_text(errors="replace").strip()[-300:]
            raise ProviderError(f"node {self.name}: namespaces could not be set up: {tail}")
        return child.pid

    def enter_argv(self, holder: int) -> list[str]:
        """The ``nsenter`` prefix that runs a command inside this node."""
        return ["nsenter", "-t", str(holder), "--net", "--uts", "--mount", "--"]

    def spawn(self, holder: int, argv: list[str], log_name: str) -> int:
        """Start a long-running ``argv`` inside the node, detached; return its pid."""
        with open(self.root / log_name, "ab") as log:
            child = subprocess.Popen(
                [*self.enter_argv(holder), *argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                env=_clean_env(),
            )
        return child.pid

    def start_sshd(self, holder: int) -> int:
        return self.spawn(holder, ["/usr/sbin/sshd", "-D", "-e"], "sshd.log")


def _clean_env() -> dict[str, str]:
    """The environment node daemons start with: no secrets or venv of the caller leak in."""
    keep = ("PATH", "LANG", "LC_ALL", "TZ")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    return env


def alive(pid: int) -> bool:
    """True when ``pid`` runs (zombies count as gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def pids_in_netns(paths: list[Path]) -> list[int]:
    """Every live process whose network namespace is one of ``paths``."""
    wanted = {ino for ino in (net.netns_inode(p) for p in paths) if ino is not None}
    if not wanted:
        return []
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            ino = os.stat(f"/proc/{entry.name}/ns/net").st_ino
        except OSError:
            continue
        if ino in wanted:
            found.append(int(entry.name))
    return found


def kill_pids(pids: list[int], grace: float = 1.0) -> None:
    """SIGTERM, then SIGKILL what is left after ``grace`` seconds; return once all are gone."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        live = [p for p in pids if alive(p)]
        for pid in live:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while live and time.monotonic() < deadline:
            live = [p for p in live if alive(p)]
            if live:
                time.sleep(0.02)
        if not live:
            return
    raise ProviderError(f"processes {pids} survived SIGKILL; see `ps -p {pids[0]}`")
