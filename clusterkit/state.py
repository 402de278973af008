"""Per-cluster state on disk: ``$CLUSTERKIT_HOME/clusters/NAME/``.

``state.json`` is rewritten atomically (temp file, fsync, rename) after every step of ``up``
so that ``down`` always knows what exists, even after ``up`` was killed. A lock file keeps two
commands from working on one cluster at once.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from clusterkit.errors import StateError
from clusterkit.spec import NAME_PATTERN, ClusterSpec, parse_spec

Status = Literal["creating", "ready", "failed", "deleting"]
STATE_VERSION = 1
# Beside state.json, what `down` needs should state.json be lost or unreadable: the provider
# (the default one is not always right) and its network record (where the cluster lives).
ORIGIN = "origin.json"


def home() -> Path:
    """Where clusterkit keeps everything: ``$CLUSTERKIT_HOME`` or ``~/.clusterkit``."""
    env = os.environ.get("CLUSTERKIT_HOME")
    return Path(env) if env else Path.home() / ".clusterkit"


def clusters_dir() -> Path:
    return home() / "clusters"


def cluster_dir(name: str) -> Path:
    return clusters_dir() / name


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class NodeState(BaseModel):
    name: str
    role: Literal["head", "compute"]
    group: str | None = None
    kind: Literal["static", "dynamic"] = "static"
    index: int = 0  # position in the plan
    address: str | None = None
    # Where the admin's machine dials the node, when not at ``address`` (aws: the head's
    # public IP, recorded by a configured ``up``).
    public_address: str | None = None
    instance_id: str | None = None
    pids: dict[str, int] = Field(default_factory=dict)  # process role -> pid (local provider)
    status: str = "planned"


class ClusterState(BaseModel):
    """What exists of a cluster; only the library writes it, through ``save``."""

    version: int = STATE_VERSION
    name: str
    provider: str
    status: Status = "creating"
    created_at: str = Field(default_factory=now)
    updated_at: str = Field(default_factory=now)
    steps: list[str] = Field(default_factory=list)  # steps of `up` completed, in order
    network: dict[str, str] = Field(default_factory=dict)
    nodes: dict[str, NodeState] = Field(default_factory=dict)
    spec: dict[str, Any] = Field(default_factory=dict)

    @property
    def dir(self) -> Path:
        return cluster_dir(self.name)

    def mark(self, step: str) -> None:
        """Record that ``step`` completed and persist at once."""
        if step not in self.steps:
            self.steps.append(step)
        self.save()

    def save(self) -> None:
        self.updated_at = now()
        # origin.json first, so no state.json ever exists without it; rewritten on a change.
        origin = self.dir / ORIGIN
        text = json.dumps({"name": self.name, "provider": self.provider, "network": self.network})
        if not origin.is_file() or origin.read_text(encoding="utf-8") != text:
            atomic_write(origin, text)
        atomic_write(self.dir / "state.json", self.model_dump_json(indent=2) + "\n")


def atomic_write(path: Path, text: str | bytes, mode: int = 0o644) -> None:
    """Write ``text`` to ``path`` so a reader sees the old or the new file, never a torn one.

    The file has ``mode`` from its creation on, so a secret is never readable by others.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(text.encode("utf-8") if isinstance(text, str) else text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def check_name(name: str) -> None:
    """Refuse a string that cannot name a cluster before it reaches a path or a command."""
    if not re.match(NAME_PATTERN, name) or len(name) > 24:
        raise StateError(f"{name!r} is not a cluster name (see `clusterkit list`)")


def spec_of(state: ClusterState) -> ClusterSpec:
    """The spec a cluster was built from, as recorded in its state."""
    return parse_spec(state.spec, source=str(state.dir / "state.json"))


def load_state(name: str) -> ClusterState:
    path = cluster_dir(name) / "state.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return ClusterState.model_validate(data)
    except FileNotFoundError:
        raise StateError(f"no cluster named {name!r} (see `clusterkit list`)") from None
    except (json.JSONDecodeError, ValidationError, UnicodeDecodeError) as exc:
        first = str(exc).splitlines()[0]
        raise StateError(
            f"{path}: unreadable state ({first}); `clusterkit down {name}` still cleans up"
        ) from None


def try_load_state(name: str) -> ClusterState | None:
    try:
        return load_state(name)
    except StateError:
        return None


def salvage_state(name: str) -> ClusterState | None:
    """What ``origin.json`` still tells of cluster ``name`` (its provider and network, no nodes)
    when ``state.json`` is lost or unreadable; ``None`` without it."""
    try:
        data = json.loads((cluster_dir(name) / ORIGIN).read_text(encoding="utf-8"))
        return ClusterState(name=name, provider=data["provider"], network=data["network"])
    except (OSError, ValueError, KeyError, TypeError, ValidationError):
        return None


def list_states() -> list[ClusterState]:
    """Every cluster with a readable state, by name."""
    root = clusters_dir()
    if not root.is_dir():
        return []
    found = (try_load_state(p.name) for p in sorted(root.iterdir()) if p.is_dir())
    return [s for s in found if s is not None]


def remove_cluster_dir(name: str) -> None:
    shutil.rmtree(cluster_dir(name), ignore_errors=True)


@contextlib.contextmanager
def locked(path: Path, what: str, timeout: float = 30.0) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if needed) for the ``with`` block.

    The lock is an ``flock``, so a holder killed with SIGKILL releases it at once. The file
    keeps the holder's pid, which the error names when waiting times out.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                    raise StateError(
                        f"{what} is busy: another clusterkit command (pid {holder}) holds "
                        f"{path}; wait for it to finish"
                    ) from None
                time.sleep(0.1)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the flock


def cluster_lock(name: str, timeout: float = 30.0) -> contextlib.AbstractContextManager[None]:
    """The lock that serialises commands on one cluster; it lives beside, not in, its dir
    so that ``down`` can delete the cluster dir while holding it."""
    return locked(clusters_dir() / f".{name}.lock", f"cluster {name!r}", timeout)
