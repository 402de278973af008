"""Pack tasks in OCI containers (``clusterkit pack submit --container IMAGE``): the runner
(``packrun``) starts each task with Debian's ``crun``, inside the element's own cgroup.

The pack's image is a root file system unpacked once, at submit, into ``image/rootfs`` of
the pack's directory. Each task runs in a container that is rootless and made by the
cluster user itself:

- a user namespace that maps the user's own uid and gid, and nothing else: the task runs as
  the cluster user, with no capabilities and ``no_new_privs``, and every other file owner
  shows as ``nobody``;
- mount, PID and IPC namespaces: the image read-only as ``/``; ``/proc`` of its own;
  ``/tmp``, ``/dev/shm`` and ``/dev`` as fresh tmpfs (crun binds the standard devices);
  ``/sys``, ``/etc/hosts`` and ``/etc/resolv.conf`` read-only from the node; the pack's
  directory read-write at its own path, so ``CK_PACK_DIR`` means the same inside; the
  pack's ``--chdir`` read-only at its own path, as the task's working directory;
- the node's network (MPI, a Dask scheduler and the like reach their peers as without);
- no cgroup of its own (``--cgroup-manager=disabled``): the element's cgroup, which Slurm
  sized to one task, limits its CPUs and memory and its OOM killer counts as before.

Slurm 22.05's own ``--container`` (``oci.conf``) would run the whole element, the runner
and its Python included, in the image; a pack needs a container per task instead.

The task is its container's PID 1, so a SIGTERM reaches it only when it handles one (as in
any container without an init); a task over its time limit gets SIGTERM, then SIGKILL of
its PID 1, which ends the whole PID namespace and nothing can outlive it.

Standard library only: it runs with the node's ``/usr/bin/python3``.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ROOTFS = "image/rootfs"  # in the pack's directory
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# The element's variables a task sees inside (the others name the node's paths, such as
# LD_LIBRARY_PATH or PYTHONPATH, and would break the image's programs).
PASSED_PREFIXES = ("SLURM_", "CK_PACK_", "LC_", "CUDA_", "GPU_", "OMP_")
PASSED_NAMES = frozenset(("LANG", "TZ", "USER", "LOGNAME"))
MOUNTPOINTS = ("proc", "dev", "sys", "tmp", "etc")  # made in the image at submit
NODE_FILES = ("/etc/hosts", "/etc/resolv.conf")  # bound read-only where the node has them
_NO_CAPS: dict[str, list[str]] = {
    k: [] for k in ("bounding", "effective", "permitted", "inheritable", "ambient")
}


def find_crun(env: Mapping[str, str]) -> str | None:
    return shutil.which("crun", path=f"{env.get('PATH', '')}:/usr/bin:/usr/sbin:/bin")


def container_env(env: Mapping[str, str], home: str) -> list[str]:
    """The task's environment inside its container, as ``NAME=value`` strings."""
    kept = {k: v for k, v in env.items() if k in PASSED_NAMES or k.startswith(PASSED_PREFIXES)}
    kept.update(PATH=PATH, HOME=home, TMPDIR="/tmp")
    return [f"{k}={v}" for k, v in sorted(kept.items())]


def _bind(source: str, destination: str, *, writable: bool = False) -> dict[str, Any]:
    options = ["rbind", "nosuid", "nodev", "rw" if writable else "ro"]
    return {"destination": destination, "type": "none", "source": source, "options": options}


def _tmpfs(destination: str, mode: str, *extra: str) -> dict[str, Any]:
    options = ["nosuid", "nodev", *extra, f"mode={mode}"]
    return {"destination": destination, "type": "tmpfs", "source": "tmpfs", "options": options}


def oci_config(
    *,
    rootfs: str,
    args: list[str],
    env: list[str],
    cwd: str,
    uid: int,
    gid: int,
    writable: list[str],
    readable: list[str],
    devices: list[str],
) -> dict[str, Any]:
    """The OCI runtime config of one task (runtime-spec 1.0, as crun 1.8 reads it):
    ``writable`` and ``readable`` are the node's directories bound at their own paths,
    ``devices`` device files bound as they are (a task's GPUs)."""
    mounts = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        _tmpfs("/dev", "755", "strictatime", "size=65536k"),
        _tmpfs("/dev/shm", "1777", "noexec"),
        _tmpfs("/tmp", "1777"),
        _bind("/sys", "/sys"),
        *(_bind(f, f) for f in NODE_FILES if os.path.exists(f)),
        *(_bind(d, d) for d in readable),
        *(_bind(d, d, writable=True) for d in writable),
        *(
            {"destination": d, "type": "none", "source": d, "options": ["bind", "nosuid", "rw"]}
            for d in devices
        ),
    ]
    return {
        "ociVersion": "1.0.0",
        "process": {
            "terminal": False,
            "user": {"uid": uid, "gid": gid},
            "args": args,
            "env": env,
            "cwd": cwd,
            "noNewPrivileges": True,
            "capabilities": _NO_CAPS,
        },
        "root": {"path": rootfs, "readonly": True},
        "mounts": mounts,
        "linux": {
            "uidMappings": [{"containerID": uid, "hostID": uid, "size": 1}],
            "gidMappings": [{"containerID": gid, "hostID": gid, "size": 1}],
            "namespaces": [{"type": t} for t in ("user", "mount", "pid", "ipc")],
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"],
            "readonlyPaths": ["/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus"],
        },
    }


class Container:
    """How one element starts its tasks in containers: one bundle directory in the
    element's scratch, its ``config.json`` rewritten for each task."""

    def __init__(
        self, pack_root: Path, rootfs: str, chdir: str | None, scratch: Path,
        env: Mapping[str, str],
    ) -> None:  # fmt: skip
        self.rootfs = str(pack_root / rootfs)
        self.pack_root = str(pack_root)
        self.cwd = os.path.abspath(chdir) if chdir else self.pack_root
        self.readable = [self.cwd] if self.cwd != self.pack_root else []
        self.bundle = scratch / "bundle"
        self.state = scratch / "crun"
        self.crun = find_crun(env)
        self.devices = sorted(glob.glob("/dev/nvidia*")) if env.get("CUDA_VISIBLE_DEVICES") else []
        self.uid, self.gid = os.getuid(), os.getgid()
        self._serial = 0
        self._config: dict[str, Any] = {}  # every task's, but for its command and variables

    def argv(self, command: list[str], env: Mapping[str, str]) -> list[str]:
        """Write the task's config; the ``crun run`` argv that starts its container."""
        if self.crun is None:
            raise FileNotFoundError(2, "crun is not installed on this node (apt install crun)")
        if not self._serial:  # checked once: each look is a round trip on shared storage
            if not os.path.isdir(self.rootfs):
                raise FileNotFoundError(2, f"the pack's image is missing: {self.rootfs}")
            self.bundle.mkdir(parents=True, exist_ok=True)
            self._config = oci_config(
                rootfs=self.rootfs, args=[], env=[], cwd=self.cwd, uid=self.uid, gid=self.gid,
                writable=[self.pack_root], readable=self.readable, devices=self.devices,
            )  # fmt: skip
        process = self._config["process"]
        process["args"], process["env"] = command, container_env(env, "/tmp")
        (self.bundle / "config.json").write_text(json.dumps(self._config), encoding="utf-8")
        self._serial += 1
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.pid_file)
        return [
            self.crun, "--root", str(self.state), "--cgroup-manager=disabled", "run",
            "--bundle", str(self.bundle), "--pid-file", str(self.pid_file),
            f"task-{os.getpid()}-{self._serial}",
        ]  # fmt: skip

    @property
    def pid_file(self) -> Path:
        return self.bundle / "pid"

    @staticmethod
    def returncode(code: int) -> int:
        """``crun run``'s exit status as a task's: 128+N is the task killed by signal N."""
        return -(code - 128) if 128 < code < 160 else code

    def _pid(self) -> int | None:
        """The running task's PID 1, as crun wrote it; only while ``crun run`` has not
        returned: after, the pid may be another process's."""
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def kill(self, sig: int) -> None:
        """Signal the running task's PID 1 (SIGKILL ends its whole PID namespace)."""
        if (pid := self._pid()) is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)

    def handles_sigterm(self) -> bool:
        """Whether the task's PID 1 has a SIGTERM handler (the only way it gets one)."""
        pid = self._pid()
        try:
            with open(f"/proc/{pid}/status", encoding="ascii") as fh:
                caught = next(ln for ln in fh if ln.startswith("SigCgt:")).split()[1]
        except (OSError, StopIteration, IndexError):
            return False
        return bool(int(caught, 16) & (1 << (signal.SIGTERM - 1)))
