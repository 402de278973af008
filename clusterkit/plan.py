"""Node naming and addressing: which nodes a spec asks for, and where they live.

Names never change for the life of a cluster: the head is ``NAME-head``; compute nodes are
``GROUP-st-N`` (static, always on) and ``GROUP-dy-N`` (dynamic, powered up on demand), N from 1.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from clusterkit.errors import ProviderError
from clusterkit.spec import ClusterSpec, tenant_gid

Role = Literal["head", "compute"]
Kind = Literal["static", "dynamic"]

# The host keeps .1 of a local cluster's /24 (the bridge, the gateway); the head is .2 and
# compute nodes follow in plan order, so an address says where a node sits in the plan.
GATEWAY_INDEX = 1
FIRST_NODE_INDEX = 2

# Local clusters take /24s out of this range unless the spec names a subnet.
AUTO_POOL = ipaddress.ip_network("10.250.0.0/16")


@dataclass(frozen=True)
class NodePlan:
    name: str
    role: Role
    group: str | None
    kind: Kind
    index: int  # position in the plan; fixes the local address

    @property
    def static(self) -> bool:
        return self.kind == "static"


@dataclass(frozen=True)
class ClusterUser:
    """A cluster user as every node must know it: same ids everywhere, home on shared storage."""

    name: str
    uid: int
    gid: int
    home: str


@dataclass(frozen=True)
class TenantGroup:
    """A tenant as every node must know it: a group of its users, and its private directory
    on shared storage (its group's only: mode 2770)."""

    name: str
    gid: int
    members: tuple[str, ...]
    directory: str


def tenant_groups(spec: ClusterSpec) -> list[TenantGroup]:
    root = f"{spec.shared_storage.mount_point}/tenants"
    return [
        TenantGroup(t.name, tenant_gid(t.name), tuple(t.users), f"{root}/{t.name}")
        for t in spec.tenants
    ]


def home_root(spec: ClusterSpec) -> str:
    return f"{spec.shared_storage.mount_point}/home"


def cluster_users(spec: ClusterSpec) -> list[ClusterUser]:
    homes = home_root(spec)
    return [
        ClusterUser(u.name, u.uid, u.gid if u.gid is not None else u.uid, f"{homes}/{u.name}")
        for u in spec.users
    ]


def head_name(cluster: str) -> str:
    return f"{cluster}-head"


def compute_name(group: str, kind: Kind, n: int) -> str:
    return f"{group}-{'st' if kind == 'static' else 'dy'}-{n}"


def plan_nodes(spec: ClusterSpec) -> list[NodePlan]:
    """Every node the spec can ever have, head first, each group's static then dynamic."""
    nodes = [NodePlan(head_name(spec.name), "head", None, "static", 0)]
    for group in spec.groups:
        for kind, count in (("static", group.min), ("dynamic", group.max - group.min)):
            for n in range(1, count + 1):
                k: Kind = "static" if kind == "static" else "dynamic"
                nodes.append(
                    NodePlan(compute_name(group.name, k, n), "compute", group.name, k, len(nodes))
                )
    return nodes


def static_nodes(spec: ClusterSpec) -> list[NodePlan]:
    """The nodes ``up`` launches: the head and every group's static nodes."""
    return [n for n in plan_nodes(spec) if n.static]


def node_address(subnet: str, index: int) -> str:
    net = ipaddress.ip_network(subnet)
    return str(net.network_address + FIRST_NODE_INDEX + index)


def gateway_address(subnet: str) -> str:
    return str(ipaddress.ip_network(subnet).network_address + GATEWAY_INDEX)


def overlaps(subnet: str, taken: Iterable[str]) -> bool:
    """True when ``subnet`` overlaps any of ``taken`` (CIDRs or addresses with a prefix)."""
    net = ipaddress.ip_network(subnet)
    used = (ipaddress.ip_network(t, strict=False) for t in taken)
    return any(u.version == 4 and net.overlaps(u) for u in used)


def pick_subnet(taken: Iterable[str]) -> str:
    """The first /24 of ``AUTO_POOL`` that overlaps none of ``taken``."""
    used = list(taken)
    for candidate in AUTO_POOL.subnets(new_prefix=24):
        if not overlaps(str(candidate), used):
            return str(candidate)
    raise ProviderError(
        f"no free /24 left in {AUTO_POOL}: bring down unused clusters or set local.subnet"
    )
