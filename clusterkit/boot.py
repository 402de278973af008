"""How a node boots: what it is given (``NodeBoot``), the compute boot script, and the wait
for it to finish.

Compute nodes never wait on Ansible: each runs the boot script (the local equivalent of EC2
user-data) that fetches what it needs from the head and starts slurmd. The orchestrator and
every provider use this module; it uses neither.
"""

from __future__ import annotations

import shlex
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from clusterkit import interrupt, supervision
from clusterkit.errors import ConfigureError
from clusterkit.files import ClusterFiles
from clusterkit.plan import (
    ClusterUser,
    NodePlan,
    TenantGroup,
    cluster_users,
    head_name,
    plan_nodes,
    tenant_groups,
)
from clusterkit.render import render
from clusterkit.spec import ClusterSpec
from clusterkit.sshpool import Pool, PoolError
from clusterkit.traits import Traits, shared_type
from clusterkit.trust import ClusterTrust, TrustedNode, node_known_hosts, public_key

READY_MARKER = "/var/lib/clusterkit/head-ready"
BOOT_STATUS = "/var/lib/clusterkit/boot.status"  # written by the boot script: running|done|failed
BOOT_TIMEOUT_SECONDS = 300
NODE_KEY_ON_NODE = "/etc/ssh/ck_node_key"
USER_KEYS_ON_NODE = "/var/lib/clusterkit/keys"  # the users' keys that mount their homes (sshfs)
SLURMCTLD_PORT = 6817


@dataclass(frozen=True)
class NodeBoot:
    """What a node needs at boot to be reachable over SSH with pre-trusted host keys."""

    host_key: Path  # private host key; its .pub and its -cert.pub beside it
    authorized_keys: str  # for root
    known_hosts: str  # the node's global known_hosts: the cluster's host CA
    hosts: str  # /etc/hosts of the cluster
    users: tuple[ClusterUser, ...] = ()  # accounts every node must know
    groups: tuple[TenantGroup, ...] = ()  # the tenants' groups, with their users
    node_key: Path | None = None  # compute nodes: the key that reads from the head (SFTP only)
    user_data: str | None = None  # the boot script, run once at boot like EC2 user-data


def boot_script(spec: ClusterSpec, traits: Traits) -> str:
    head, shared = head_name(spec.name), spec.shared_storage.mount_point
    services = supervision.compute_services(
        spec, traits, node_key=NODE_KEY_ON_NODE, user_key_dir=USER_KEYS_ON_NODE
    )
    events = f"{shared}/clusterkit/events/{{node}}-supervisor.jsonl"
    mount = {s.mount: shlex.join(s.command) for s in services if s.mount}
    return render(
        "boot/compute.sh.j2",
        shared_mount=mount.get(shared, ""),
        home_mounts=mount,
        user_keys=USER_KEYS_ON_NODE,
        supervise=supervision.shell_lines(services, supervision.tool(spec), events),
        cluster=spec.name,
        head=head,
        node_key=NODE_KEY_ON_NODE,
        ready_marker=READY_MARKER,
        service_manager=traits.service_manager,
        slurmd_flags=traits.slurmd_flags,
        users=cluster_users(spec),
        tenants=tenant_groups(spec),
        shared_dir=shared,
        shared_type=shared_type(spec, traits),
        slurmctld_port=SLURMCTLD_PORT,
        timeout=BOOT_TIMEOUT_SECONDS,
    )


def node_boots(
    spec: ClusterSpec,
    trust: ClusterTrust,
    trusted: list[TrustedNode],
    nodes: Sequence[NodePlan],
    traits: Traits,
    *,
    configure: bool = True,
) -> dict[str, NodeBoot]:
    """What each of ``nodes`` boots with: its host key, the cluster's trust and, for a compute
    node of a configured cluster, the key that reads from the head and the boot script.
    What all nodes share is read and rendered once."""
    files = ClusterFiles(trust.root)
    authorized = public_key(trust.user_key) + "\n"
    known_hosts = node_known_hosts(trust.host_ca)
    hosts = render("hosts.j2", cluster=spec.name, nodes=trusted)
    users = tuple(cluster_users(spec))
    groups = tuple(tenant_groups(spec))
    user_data = boot_script(spec, traits) if configure else None
    return {
        node.name: NodeBoot(
            host_key=files.host_key(node.name),
            authorized_keys=authorized,
            known_hosts=known_hosts,
            hosts=hosts,
            users=users,
            groups=groups,
            node_key=files.node_key if node.role == "compute" else None,
            user_data=user_data if node.role == "compute" else None,
        )
        for node in nodes
    }


def trusted_nodes(
    spec: ClusterSpec, address: Callable[[NodePlan], str | None], trust: ClusterTrust
) -> list[TrustedNode]:
    """Every planned node with its address (``address``: the provider's) and host key."""
    files = ClusterFiles(trust.root)
    return [
        TrustedNode(n.name, address(n), public_key(files.host_key(n.name)))
        for n in plan_nodes(spec)
    ]


def wait_for_boot(pool: Pool, nodes: list[str], timeout: float = BOOT_TIMEOUT_SECONDS + 30) -> None:
    """Return once every node's boot script reports ``done`` (read through ``pool``); raise
    naming failed nodes. ``timeout`` bounds the whole wait: there are fewer workers than
    nodes in a large cluster, and a node taken up late must not get a deadline of its own."""
    deadline = time.monotonic() + timeout

    def outcome(node: str, stop: threading.Event) -> str | None:
        last = ""
        while True:  # at least once, even past the deadline: the node may be done by now
            try:
                status, last = pool.run(node, ["cat", BOOT_STATUS], timeout=15)[1].strip(), ""
            except PoolError as exc:  # not up yet, or gone: tried again until the deadline
                status, last = "", f" (last: {exc})"
            if status == "done":
                return None
            if status.startswith("failed"):
                log = f"{pool.trust.root}/nodes/{node}/console.log"
                return f"{node}: {status} (console log: {log})"
            if time.monotonic() >= deadline or stop.wait(0.2):
                break
        return f"{node}: boot did not finish within {timeout:.0f}s{last}"

    failures = [f for f in interrupt.parallel(outcome, nodes) if f]
    if failures:
        raise ConfigureError("compute nodes failed to boot: " + "; ".join(failures))
