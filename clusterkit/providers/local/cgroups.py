"""Per-cluster cgroup v1 subtrees for local nodes.

Slurm's cgroup plugin roots its hierarchy at ``<controller>/slurm_<nodename>``. Nodes of two
clusters may share names (``compute-st-1``), so every cluster gets its own subtree
``<controller>/clusterkit/<cluster>``, bind-mounted over ``<controller>`` in its nodes' mount
namespaces: each slurmd sees a hierarchy of its own cluster only, limits still enforced by the
one kernel. ``remove`` deletes the subtree once the cluster's processes are gone.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

MOUNTINFO = Path("/proc/self/mountinfo")


def controllers() -> list[Path]:
    """Mount points of the cgroup v1 controller hierarchies (named ones left out)."""
    found = []
    for line in MOUNTINFO.read_text(encoding="utf-8").splitlines():
        fields = line.split()
        sep = fields.index("-")
        fstype, options = fields[sep + 1], fields[-1]
        if fstype == "cgroup" and not any(o.startswith("name=") for o in options.split(",")):
            found.append(Path(fields[4]))
    return found


def subtree(controller: Path, cluster: str) -> Path:
    return controller / "clusterkit" / cluster


def create(cluster: str) -> list[tuple[Path, Path]]:
    """Create the cluster's subtree in every controller; return (subtree, mount point) pairs."""
    pairs = []
    for ctl in controllers():
        path = subtree(ctl, cluster)
        path.mkdir(parents=True, exist_ok=True)
        if (ctl / "cpuset.cpus").exists():
            # A new cpuset cgroup starts with no CPUs and no memory nodes: inherit the root's.
            for level in (path.parent, path):
                for knob in ("cpuset.cpus", "cpuset.mems"):
                    if not (level / knob).read_text().strip():
                        (level / knob).write_text((ctl / knob).read_text())
        pairs.append((path, ctl))
    return pairs


def remove(cluster: str) -> list[str]:
    """Remove the cluster's subtrees, deepest first; return what was removed."""
    removed = []
    for ctl in controllers():
        root = subtree(ctl, cluster)
        if not root.is_dir():
            continue
        for dirpath, _, _ in sorted(os.walk(root), key=lambda w: -len(w[0])):
            with contextlib.suppress(FileNotFoundError):
                os.rmdir(dirpath)
        removed.append(f"cgroup {root}")
        # The shared parent goes with the last cluster; while another has a subtree, it stays.
        with contextlib.suppress(OSError):
            os.rmdir(root.parent)
    return removed


def leftovers(cluster: str) -> list[Path]:
    return [subtree(ctl, cluster) for ctl in controllers() if subtree(ctl, cluster).exists()]
