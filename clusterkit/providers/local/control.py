"""What only a local cluster offers from this machine: its instances as its cloud service
sees them, simulated capacity, failures and Spot interruptions (``clusterkit cloud`` and
``clusterkit interrupt``), and Slurm clients here that reach its head (``clusterkit env``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from clusterkit.errors import ProviderError, StateError
from clusterkit.files import ClusterFiles
from clusterkit.nodetools.cloud import CloudError, Instance
from clusterkit.plan import head_name, plan_nodes
from clusterkit.providers.base import REBALANCE, Interruption
from clusterkit.providers.local import cloud, owners
from clusterkit.spec import ClusterSpec
from clusterkit.state import ClusterState, atomic_write


def instances(name: str) -> dict[str, Instance]:
    """Live compute instances by node, as the cluster's cloud service describes them."""
    if not cloud.socket_path(name).exists():
        return {}
    try:
        found = cloud.client(name).describe()
    except CloudError:
        return {}
    return {i.node: i for i in found}


def simulate(name: str, settings: dict[str, Any]) -> dict[str, Any]:
    """Change what the cloud service of cluster ``name`` plays; return the settings."""
    try:
        reply = cloud.client(name).call("simulate", **settings)
    except CloudError as exc:
        raise _unanswered(name, exc) from exc
    result: dict[str, Any] = reply["simulation"]
    return result


def interrupt(
    state: ClusterState, spec: ClusterSpec, node: str, action: str, in_seconds: float | None
) -> Interruption:
    """Send compute ``node`` a simulated Spot interruption (``action`` terminate, stop or
    hibernate: it ends ``in_seconds`` later, default the spec's notice) or a rebalance
    recommendation (``rebalance``: nothing ends)."""
    name = state.name
    _check_interruptible(name, node, [n.name for n in plan_nodes(spec) if n.role == "compute"])
    seconds = float(spec.local.spot_notice_seconds if in_seconds is None else in_seconds)
    params: dict[str, Any] = {"node": node, "instance_action": action, "in_seconds": seconds}
    try:
        reply = cloud.client(name).call("interrupt", **params)
    except CloudError as exc:
        if exc.code == "Unavailable":
            raise _unanswered(name, exc) from exc
        raise ProviderError(f"{name}: {exc.message} ({exc.code})") from exc
    return Interruption(
        node=reply["node"], instance_id=reply["instance_id"], action=reply["action"],
        time=reply["time"], in_seconds=None if action == REBALANCE else seconds,
    )  # fmt: skip


def client_env(state: ClusterState) -> dict[str, str]:
    """Environment that lets Slurm commands on this machine talk to the cluster.

    A client slurm.conf is the cluster's own plus ``AuthInfo`` pointing at the head's munge
    socket, which lives in the head's private directory and so is reachable from the host.
    Connections to slurmdbd (sacct, sacctmgr) take their munge socket from
    ``AccountingStoragePass`` instead (slurm.conf(5)), so it names the same socket.
    """
    name = state.name
    conf = ClusterFiles(state.dir).slurm_conf_dir / "slurm.conf"
    if not conf.exists():
        raise StateError(f"cluster {name!r} has no Slurm configuration (made with --no-configure?)")
    socket = munge_socket(state)
    client = state.dir / "client" / "slurm.conf"
    text = conf.read_text(encoding="utf-8")
    # Quoted: slurm.conf ends a value at a space, and a home's path may have one.
    lines = f'\n# Host-side clients reach the head\'s munged:\nAuthInfo="socket={socket}"\n'
    if "AccountingStorageType=accounting_storage/slurmdbd" in text:
        lines += f'AccountingStoragePass="{socket}"\n'
    atomic_write(client, text + lines)
    return {"SLURM_CONF": str(client)}


# A UNIX socket's address holds 107 bytes and a NUL: a home deep in the file system gives the
# head's munge socket a longer path than munge clients can connect to.
MAX_SOCKET_PATH = 107


def munge_socket(state: ClusterState) -> Path:
    """The head's munge socket as host-side clients reach it: its own path, or a short
    symlink to it under /run when that path is too long (connect() follows the link)."""
    socket = state.dir / "nodes" / head_name(state.name) / "run" / "munge" / "munge.socket.2"
    if len(os.fsencode(socket)) <= MAX_SOCKET_PATH:
        return socket
    link = owners.socket_link(state.name)
    link.parent.mkdir(parents=True, exist_ok=True)
    if not (link.is_symlink() and os.readlink(link) == str(socket)):
        tmp = link.with_name(f".{link.name}.tmp")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(socket)
        tmp.replace(link)
    return link


def _check_interruptible(name: str, node: str, computes: list[str]) -> None:
    if node == head_name(name):
        raise StateError(f"{node} is the head of {name}: only compute nodes are interrupted")
    if node not in computes:
        shown = ", ".join(computes[:8]) + (", ..." if len(computes) > 8 else "") or "none"
        raise StateError(f"cluster {name!r} has no compute node {node!r}; its computes: {shown}")


def _unanswered(name: str, exc: CloudError) -> ProviderError:
    return ProviderError(
        f"the cloud service of {name} did not answer ({exc}); `clusterkit up` restarts it"
    )
