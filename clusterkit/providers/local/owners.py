"""Which ``CLUSTERKIT_HOME`` owns each local cluster name on this machine.

Namespaces, links and cgroups are named after the cluster alone, so two homes must never
hold clusters of one name at once: the second ``up`` would take the first one's bridge, and
the second ``down`` would remove the first one's nodes. ``up`` claims the name (a file under
``/run`` naming the cluster's state directory), ``down`` releases it, and both refuse a name
that another home's cluster holds. ``/run`` empties at boot, as the namespaces do.
"""

from __future__ import annotations

import contextlib
import shlex
from pathlib import Path

from clusterkit.errors import StateError
from clusterkit.providers.local import net
from clusterkit.state import atomic_write

OWNERS_DIR = Path("/run/clusterkit/local")
# Short links to sockets whose own paths are too long (no cluster is named with a dot).
SOCKETS_DIR = OWNERS_DIR / ".sockets"


def socket_link(name: str) -> Path:
    return SOCKETS_DIR / f"{name}.munge"


def owner(name: str) -> Path | None:
    """The state directory of the cluster that claimed ``name``, if any claimed it."""
    try:
        return Path((OWNERS_DIR / name).read_text(encoding="utf-8").strip())
    except (FileNotFoundError, NotADirectoryError):
        return None


def _same(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()


def _home_of(state_dir: Path) -> Path:
    return state_dir.parent.parent  # HOME/clusters/NAME


def check_owner(name: str, state_dir: Path, creating: bool) -> None:
    """Raise ``StateError`` if another home's cluster holds ``name``; when ``creating``, also
    if namespaces of that name exist that no home claimed and this one did not make."""
    other = owner(name)
    if other is not None and not _same(other, state_dir) and (other / "state.json").exists():
        home = _home_of(other)
        raise StateError(
            f"cluster {name!r} is live on this machine from CLUSTERKIT_HOME={home}; "
            f"bring it down there (CLUSTERKIT_HOME={shlex.quote(str(home))} clusterkit down "
            f"{name}) "
            "or choose another name"
        )
    if creating and other is None and not (state_dir / "state.json").exists():
        found = net.cluster_netns(name)
        if found:
            raise StateError(
                f"cluster {name!r} has namespaces on this machine that this CLUSTERKIT_HOME "
                f"did not make ({', '.join(found)}); bring it down from its own home "
                f"(`clusterkit down {name}`), or choose another name"
            )


def claim(name: str, state_dir: Path) -> None:
    """Record ``state_dir`` as the owner of ``name`` (call under the machine lock)."""
    check_owner(name, state_dir, creating=True)
    atomic_write(OWNERS_DIR / name, f"{state_dir.resolve()}\n")


def release(name: str, state_dir: Path) -> None:
    """Forget the claim on ``name`` if ``state_dir`` holds it, or if its owner is gone."""
    other = owner(name)
    if other is None or _same(other, state_dir) or not (other / "state.json").exists():
        with contextlib.suppress(FileNotFoundError):
            (OWNERS_DIR / name).unlink()
        socket_link(name).unlink(missing_ok=True)
