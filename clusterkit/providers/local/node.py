"""Processes of a local node: its init, sshd, and the means to enter and kill them.

A node is a network namespace (made by ``net``) plus UTS, mount and PID namespaces whose
first process is the node's *init* (named ``ck-node:CLUSTER:NODE``). Before it becomes init
it sets the hostname and bind-mounts the node's private directories; then it only reaps
orphans, as PID 1 must, or a busy node fills with zombie job steps. With a PID namespace of
its own, ``ps``/``pgrep`` on a node see that node's processes only, so service checks are
honest. Every other process is started inside with ``nsenter``. Processes are found for
killing by their network namespace, so nothing of a node escapes ``down`` even when the
state never learned its pid.
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
    "etc/clusterkit": "/etc/clusterkit",
    "run/munge": "/run/munge",
    "lib/munge": "/var/lib/munge",
    "lib/clusterkit": "/var/lib/clusterkit",
    "log/munge": "/var/log/munge",
    "log/slurm": "/var/log/slurm",
    "log/clusterkit": "/var/log/clusterkit",
    "spool/slurmd": "/var/spool/slurmd",
    "spool/slurmctld": "/var/spool/slurmctld",
    # The head's MariaDB (accounting): its tables, socket and log are the node's own.
    "lib/mysql": "/var/lib/mysql",
    "run/mysqld": "/run/mysqld",
    "log/mysql": "/var/log/mysql",
}
# root's home on a node. The host's /root stays visible at its own path, as the rest of the
# login node's file system does (a venv or script there runs in jobs), but root's logins on
# a node start in a private home: the host's shell start-up is not run, and what a node
# writes to ~ (Ansible's temp files, history, caches) stays the node's.
ROOT_HOME_DIR = "lib/clusterkit/root"  # in the node dir, so under /var/lib/clusterkit
ROOT_HOME = NODE_DIRS["lib/clusterkit"] + "/root"
NODE_FILES = {"hosts": "/etc/hosts", "passwd": "/etc/passwd", "group": "/etc/group"}
NODE_SECRET_FILES = {"shadow": "/etc/shadow"}  # root-only, like the host's

INIT_PYTHON = "/usr/bin/python3"


def covered_paths() -> list[str]:
    """Where a node mounts a directory of its own over the host's (files are not listed:
    nothing can lie under a file)."""
    return list(NODE_DIRS.values())


# PID 1 of a node: reap every orphan; exit on SIGTERM (the kernel then ends the whole node).
# ck-supervise keeps the node's daemons alive once the boot script registered them; the init
# keeps ck-supervise alive, rerunning the command it left (within SUPERVISOR_CHECK seconds).
_INIT = """
import json, os, signal, subprocess, sys
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
ARGV = "/etc/clusterkit/services/supervisor.argv"

def supervisor_runs():
    for pid in os.listdir("/proc"):
        try:
            if pid.isdigit() and open(f"/proc/{pid}/comm").read().strip() == "ck-supervise":
                return True
        except OSError:
            pass
    return False

def keep_supervisor():
    try:
        with open(ARGV) as fh:
            argv = json.load(fh)
        if supervisor_runs():
            return
        with open("/var/log/clusterkit/supervisor.log", "ab") as log:
            subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=True,
                preexec_fn=lambda: signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD}))
    except (OSError, ValueError, subprocess.SubprocessError):
        pass

while True:
    try:
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        pass
    keep_supervisor()
    signal.sigtimedwait({signal.SIGCHLD}, SUPERVISOR_CHECK)
""".replace("SUPERVISOR_CHECK", "3")

# Runs once in the new namespaces, then becomes the node's init. A node hides the host's
# cgroup2 mount beside the v1 controllers (a "hybrid" host): Slurm uses v1 here, and crun, which
# runs pack tasks in containers, refuses to start in a hybrid layout whose cgroup2 has controllers.
_SETUP_SCRIPT = r"""
set -eu
node=$1; shift
hostname "$node"
if [ "$(stat -f -c %T /sys/fs/cgroup)" = tmpfs ] && mountpoint -q /sys/fs/cgroup/unified; then
    umount -l /sys/fs/cgroup/unified
fi
mkdir -p /run/sshd
while [ $# -gt 0 ]; do
    [ -e "$2" ] || mkdir -p "$2"
    mount --bind "$1" "$2"
    shift 2
done
echo ready
exec -a "ck-node:$CK_CLUSTER:$node" "$CK_PYTHON" -c "$CK_INIT"
"""


@dataclass(frozen=True)
class LocalNode:
    cluster: str
    name: str
    index: int
    address: str
    root: Path  # the node's private directory on the host
    extra_binds: tuple[tuple[Path, Path], ...] = ()  # (host path, path in the node)

    @property
    def netns(self) -> Path:
        return net.netns_path(self.cluster, self.name)

    def prepare_dirs(self) -> None:
        for rel in NODE_DIRS:
            (self.root / rel).mkdir(parents=True, exist_ok=True)
        for rel, target in {**NODE_FILES, **NODE_SECRET_FILES}.items():
            (self.root / rel).touch(exist_ok=True)
            Path(target).touch(exist_ok=True)  # a file mount needs a file to cover
        os.chmod(self.root / "shadow", 0o640)
        home = self.root / ROOT_HOME_DIR
        home.mkdir(exist_ok=True)
        os.chmod(home, 0o700)
        (self.root / "etc/ssh/authorized_keys").mkdir(exist_ok=True)

    def binds(self) -> list[tuple[Path, Path]]:
        own = {**NODE_DIRS, **NODE_FILES, **NODE_SECRET_FILES}
        return [(self.root / rel, Path(t)) for rel, t in own.items()] + list(self.extra_binds)

    def start_init(self, timeout: float = 10.0) -> int:
        """Start the node's namespaces and init; return init's pid once mounts are in place."""
        pairs = [str(p) for bind in self.binds() for p in bind]
        argv = [
            "nsenter", f"--net={self.netns}", "--",
            "unshare", "--uts", "--pid", "--fork", "--mount-proc", "--propagation", "private",
            "--", "bash", "-c", _SETUP_SCRIPT, "ck-setup", self.name, *pairs,
        ]  # fmt: skip
        log = open(self.root / "init.log", "wb")  # noqa: SIM115 - handed to the child
        with log:
            child = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                start_new_session=True,
                env={
                    **_clean_env(),
                    "CK_CLUSTER": self.cluster,
                    "CK_PYTHON": INIT_PYTHON,
                    "CK_INIT": _INIT,
                },
            )
        stdout = child.stdout
        if stdout is None:  # pragma: no cover - stdout=PIPE always gives a pipe
            raise ProviderError(f"node {self.name}: no pipe from its init")
        ready, _, _ = select.select([stdout], [], [], timeout)
        line = stdout.readline() if ready else b""
        stdout.close()
        if line.strip() != b"ready":
            kill_pids([child.pid])
            tail = (self.root / "init.log").read_text(errors="replace").strip()[-300:]
            raise ProviderError(f"node {self.name}: namespaces could not be set up: {tail}")
        # `unshare --fork` waits for its child, which is the node's init (PID 1 inside).
        children = Path(f"/proc/{child.pid}/task/{child.pid}/children").read_text().split()
        if len(children) != 1:
            kill_pids([child.pid])
            raise ProviderError(f"node {self.name}: expected one init process, found {children}")
        return int(children[0])

    def enter_argv(self, init: int) -> list[str]:
        """The ``nsenter`` prefix that runs a command inside this node."""
        return ["nsenter", "-t", str(init), "--net", "--uts", "--mount", "--pid", "--"]

    def spawn(self, init: int, argv: list[str], log_name: str) -> int:
        """Start a long-running ``argv`` inside the node, detached; return its pid."""
        with open(self.root / log_name, "ab") as log:
            child = subprocess.Popen(
                [*self.enter_argv(init), *argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                env=_clean_env(),
            )
        return child.pid

    def start_sshd(self, init: int) -> int:
        return self.spawn(init, ["/usr/sbin/sshd", "-D", "-e"], "sshd.log")


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


def started_at(pid: int | None) -> float:
    """When process ``pid`` started (epoch seconds): a node's launch time is its init's.
    0.0 when it is gone."""
    if pid is None:
        return 0.0
    try:
        ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(
            float(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )
    except (OSError, IndexError, ValueError, StopIteration):
        return 0.0
    return boot + ticks / os.sysconf("SC_CLK_TCK")


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


def stop_nodes(netns: list[Path]) -> int:
    """End every process of the nodes whose network namespaces are ``netns``.

    Each node's init goes first: when it exits, the kernel ends everything in its PID
    namespace at once and the launchers outside (``unshare``, ``nsenter``) leave by
    themselves. Signalling all at once is slower: a signalled ``unshare`` holds its node's
    teardown up for seconds. An init can only finish once every process of its namespace is
    reaped, and one whose parent is a launcher outside that is stopped or busy is not: so
    the inits get a short wait, and whatever is left, inits included, is killed next and
    waited for. Returns how many processes the nodes had.
    """
    pids = pids_in_netns(netns)
    with contextlib.suppress(ProviderError):
        kill_pids([p for p in pids if _cmdline(p).startswith(b"ck-node:")], kill_wait=1.0)
    kill_pids([p for p in pids if alive(p)])
    return len(pids)


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read()
    except OSError:
        return b""


def kill_pids(pids: list[int], grace: float = 1.0, kill_wait: float = 5.0) -> None:
    """SIGTERM, then SIGKILL what is left after ``grace`` seconds; return once all are gone,
    or raise when some outlive ``kill_wait`` seconds after SIGKILL."""
    live = pids
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, kill_wait)):
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
    shown = "; ".join(_describe(p) for p in live[:4])
    raise ProviderError(f"{len(live)} processes survived SIGKILL ({shown})")


def _describe(pid: int) -> str:
    """``pid``, its state, what it waits in and its command, for an error naming survivors."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        wchan = Path(f"/proc/{pid}/wchan").read_text().strip() or "-"
    except (OSError, IndexError):
        return f"{pid} gone"
    command = _cmdline(pid).replace(b"\0", b" ").decode(errors="replace").strip()[:60]
    return f"pid {pid} state {state} in {wchan}: {command}"
