"""Networking of a local cluster: one bridge, one network namespace and veth per node.

Every name is derived from the cluster name, so ``down`` finds what exists without any state:
network namespaces are ``ck.CLUSTER.NODE``; links are ``ck<id>b`` (the bridge) and
``ck<id>n<index>`` (host ends of the veths), ``<id>`` six hex digits of the name's hash.
The bridge's alias names its cluster, so a hash clash is refused instead of shared.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
from pathlib import Path

from clusterkit import proc
from clusterkit.errors import ProviderError
from clusterkit.plan import gateway_address
from clusterkit.providers.local.imds import METADATA_ADDRESS

NETNS_DIR = Path("/run/netns")
NEIGH_DIR = Path("/proc/sys/net/ipv4/neigh/default")  # the machine's ARP table limits


def cluster_id(cluster: str) -> str:
    return hashlib.sha256(cluster.encode()).hexdigest()[:6]


def bridge_name(cluster: str) -> str:
    return f"ck{cluster_id(cluster)}b"


def veth_name(cluster: str, index: int) -> str:
    return f"ck{cluster_id(cluster)}n{index}"


def mac_address(cluster: str, index: int) -> str:
    """A node's eth0 MAC: fixed by cluster and plan index, locally administered (02:...).

    A replaced node keeps its address *and* its MAC, so no neighbour cache on the host or
    on other nodes points at a vanished interface (which would stall traffic for seconds).
    """
    octets = [0x02, *bytes.fromhex(cluster_id(cluster)), index >> 8 & 0xFF, index & 0xFF]
    return ":".join(f"{o:02x}" for o in octets)


def bridge_mac(cluster: str) -> str:
    """The bridge's own MAC, set rather than inherited. A bridge otherwise takes the lowest
    MAC of its ports, so a node's veth coming or going changed the gateway's (and the
    metadata service's) MAC under every other node, whose neighbour caches then pointed
    nowhere for up to half a minute (measured: Spot notices missed)."""
    return mac_address(cluster, 0xFFFF)  # no node has this index


def netns_name(cluster: str, node: str) -> str:
    return f"ck.{cluster}.{node}"


def netns_path(cluster: str, node: str) -> Path:
    return NETNS_DIR / netns_name(cluster, node)


def alias(cluster: str) -> str:
    return f"clusterkit:{cluster}"


def cluster_netns(cluster: str) -> list[str]:
    """Names of the network namespaces that belong to ``cluster``."""
    prefix = f"ck.{cluster}."
    if not NETNS_DIR.is_dir():
        return []
    return sorted(p.name for p in NETNS_DIR.iterdir() if p.name.startswith(prefix))


def all_clusterkit_netns() -> dict[str, list[str]]:
    """Every clusterkit network namespace on this machine, by cluster name."""
    found: dict[str, list[str]] = {}
    if NETNS_DIR.is_dir():
        for p in sorted(NETNS_DIR.iterdir()):
            parts = p.name.split(".", 2)
            if len(parts) == 3 and parts[0] == "ck":
                found.setdefault(parts[1], []).append(p.name)
    return found


def links() -> list[dict[str, object]]:
    out = proc.run(["ip", "-j", "link", "show"]).stdout
    return list(json.loads(out or "[]"))


def cluster_links(cluster: str) -> list[str]:
    prefix = f"ck{cluster_id(cluster)}"
    return [str(link["ifname"]) for link in links() if str(link["ifname"]).startswith(prefix)]


def taken_networks() -> list[str]:
    """Every IPv4 network routed or addressed on this machine (to pick a free subnet)."""
    routes = json.loads(
        proc.run(["ip", "-j", "-4", "route", "show", "table", "all"]).stdout or "[]"
    )
    addrs = json.loads(proc.run(["ip", "-j", "-4", "addr", "show"]).stdout or "[]")
    nets = [str(r["dst"]) for r in routes if r.get("dst") not in (None, "default")]
    for link in addrs:
        for a in link.get("addr_info", []):
            nets.append(f"{a['local']}/{a['prefixlen']}")
    return nets


def neighbour_entries(namespaces: int) -> int:
    """ARP entries the machine may hold with ``namespaces`` node namespaces up: each node may
    learn every other (slurmd forwards Slurm's messages node to node along its tree, MPI
    ranks connect pairwise) and the host learns each node."""
    return (namespaces + 1) ** 2


def ensure_neighbour_room(namespaces: int, sysctl_dir: Path = NEIGH_DIR) -> dict[str, int]:
    """Raise the kernel's ARP table limits, never lower them, so ``namespaces`` nodes fit;
    returns the limits it raised.

    The table is one for the whole machine: every network namespace's entries count against
    ``gc_thresh3`` (1,024 by default). Past it the kernel logs "neighbor table overflow" and
    drops packets to addresses it cannot resolve: measured with 250 nodes, slurmd stopped
    answering slurmctld, sshfs mounts stalled, and the head was "no route to host".
    """
    need = neighbour_entries(namespaces)
    wanted = {"gc_thresh2": need, "gc_thresh3": 2 * need}  # soft limit, then the hard one
    raised: dict[str, int] = {}
    for name, value in wanted.items():
        path = sysctl_dir / name
        try:
            if int(path.read_text()) >= value:
                continue
            path.write_text(f"{value}\n")
        except (OSError, ValueError) as exc:
            raise ProviderError(
                f"cannot raise net.ipv4.neigh.default.{name} to {value} for {namespaces} "
                f"node namespaces ({exc}); set it with `sysctl -w "
                f"net.ipv4.neigh.default.{name}={value}`, or use fewer nodes"
            ) from exc
        raised[name] = value
    return raised


def create_bridge(cluster: str, gateway: str) -> str:
    """Create (or adopt, if it is this cluster's) the bridge with the gateway address.

    The bridge also holds the metadata service's address: the cluster's cloud service
    listens there, bound to this bridge, so each cluster has its own metadata service.
    """
    br = bridge_name(cluster)
    existing = {str(link["ifname"]): link for link in links()}
    if br in existing:
        if existing[br].get("ifalias") != alias(cluster):
            raise ProviderError(
                f"link {br} exists and does not belong to cluster {cluster!r} "
                f"(alias {existing[br].get('ifalias')!r}); rename the cluster"
            )
    else:
        proc.run(["ip", "link", "add", br, "type", "bridge"])
        proc.run(["ip", "link", "set", br, "alias", alias(cluster)])
    proc.run(["ip", "link", "set", br, "address", bridge_mac(cluster)])
    proc.run(["ip", "addr", "replace", f"{gateway}/24", "dev", br])
    proc.run(["ip", "addr", "replace", f"{METADATA_ADDRESS}/32", "dev", br])
    proc.run(["ip", "link", "set", br, "up"])
    return br


def create_node_net(cluster: str, node: str, index: int, address: str) -> None:
    """A network namespace for ``node`` with ``eth0`` on the cluster bridge and ``lo`` up.

    Its only routes are the cluster's /24 and the metadata service's address, through the
    bridge's gateway address: a node reaches its cluster and its metadata, nothing else.
    """
    ns = netns_name(cluster, node)
    veth = veth_name(cluster, index)
    delete_node_net(cluster, node, index)  # a half-made node from a killed run starts over
    proc.run(["ip", "netns", "add", ns])
    # The peer is created inside the namespace in the same call: no window where it is loose.
    mac = mac_address(cluster, index)
    proc.run(
        [
            "ip",
            "link",
            "add",
            veth,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "address",
            mac,
            "netns",
            ns,
        ]
    )
    proc.run(["ip", "link", "set", veth, "master", bridge_name(cluster), "up"])
    proc.run(["ip", "-n", ns, "addr", "add", f"{address}/24", "dev", "eth0"])
    proc.run(["ip", "-n", ns, "link", "set", "eth0", "up"])
    proc.run(["ip", "-n", ns, "link", "set", "lo", "up"])
    gateway = gateway_address(str(ipaddress.ip_interface(f"{address}/24").network))
    proc.run(["ip", "-n", ns, "route", "replace", f"{METADATA_ADDRESS}/32", "via", gateway])


def delete_node_net(cluster: str, node: str, index: int | None = None) -> None:
    """Remove the node's namespace (its veth pair goes with it) and any loose host end."""
    if netns_path(cluster, node).exists():
        proc.run(["ip", "netns", "delete", netns_name(cluster, node)])
    if index is None:
        return
    veth = veth_name(cluster, index)
    if veth not in link_names():
        return
    # The kernel may still be removing it along with the namespace: only a link that is
    # still there after a failed delete is an error.
    if (
        proc.run(["ip", "link", "delete", veth], check=False).returncode != 0
        and veth in link_names()
    ):
        proc.run(["ip", "link", "delete", veth])


def link_names() -> set[str]:
    return {str(x["ifname"]) for x in links()}


def delete_cluster_net(cluster: str) -> None:
    """Remove every namespace and link of ``cluster``; safe to call on nothing."""
    for ns in cluster_netns(cluster):
        proc.run(["ip", "netns", "delete", ns])
    # Host ends of veths normally vanish with their namespaces; the bridge goes last.
    for name in sorted(cluster_links(cluster), key=lambda n: n == bridge_name(cluster)):
        proc.run(["ip", "link", "delete", name], check=False)


def netns_inode(path: Path) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None
