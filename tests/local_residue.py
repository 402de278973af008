"""What a local cluster leaves on this machine: namespaces, links, processes, cgroups and its
record. Empty after a clean `down`; the contract suite and the integration tests ask it."""

from __future__ import annotations

import os
from pathlib import Path

from clusterkit.providers.local import cgroups, net
from tests.driver import Clusterkit

# What runs on a node: its init (python3), sshd, the daemons, and their launchers.
NODE_COMMANDS = {
    "python3", "sshd", "bash", "nsenter", "unshare", "munged", "slurmd", "slurmctld",
    "slurmstepd", "sshfs", "mariadbd", "slurmdbd",
}  # fmt: skip


def residue(ck: Clusterkit, name: str) -> list[str]:
    """Everything of cluster ``name`` still on this machine (empty when all is gone)."""
    left = [f"netns {ns}" for ns in net.cluster_netns(name)]
    left += [f"link {link}" for link in net.cluster_links(name)]
    marker = f"ck-node:{name}:"
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if marker in cmdline:
            left.append(f"process {entry.name}: {cmdline.strip()}")
    left += [f"process {pid}: in an unnamed network namespace" for pid in orphan_node_pids()]
    left += [f"cgroup {path}" for path in cgroups.leftovers(name)]
    if ck.cluster_dir(name).exists():
        left.append(f"dir {ck.cluster_dir(name)}")
    return left


def orphan_node_pids() -> list[int]:
    """Node daemons living in a network namespace that no /run/netns name refers to: what a
    cluster leaks if its processes outlive its namespaces."""
    host = os.stat("/proc/self/ns/net").st_ino
    named = (
        {os.stat(p).st_ino for p in net.NETNS_DIR.glob("*")} if net.NETNS_DIR.is_dir() else set()
    )
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ino = os.stat(entry / "ns/net").st_ino
            comm = (entry / "comm").read_text().strip()
        except OSError:
            continue
        if ino != host and ino not in named and comm in NODE_COMMANDS:
            found.append(int(entry.name))
    return found
