"""``LocalProvider``: a cluster of network/UTS/mount namespaces behind one Linux bridge."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from clusterkit.errors import PrerequisiteError, ProviderError
from clusterkit.plan import NodePlan, gateway_address, node_address, overlaps, pick_subnet
from clusterkit.providers.base import NodeBoot, Provider
from clusterkit.providers.local import net
from clusterkit.providers.local.node import LocalNode, alive, kill_pids, pids_in_netns
from clusterkit.render import render
from clusterkit.state import ClusterState, NodeState, atomic_write, list_states, locked

MACHINE_LOCK = Path("/run/lock/clusterkit-local.lock")

# Executable -> Debian package that provides it.
REQUIRED_PROGRAMS = {
    "ip": "iproute2",
    "nsenter": "util-linux",
    "unshare": "util-linux",
    "bash": "bash",
    "hostname": "hostname",
    "sshd": "openssh-server",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
}


def which(program: str) -> str | None:
    return shutil.which(program, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")


class LocalProvider(Provider):
    kind = "local"

    @classmethod
    def check_prerequisites(cls) -> None:
        if os.geteuid() != 0:
            raise PrerequisiteError(
                "the local provider needs root (it creates namespaces and a bridge): "
                "run clusterkit as root, e.g. with sudo"
            )
        missing = sorted({pkg for prog, pkg in REQUIRED_PROGRAMS.items() if not which(prog)})
        if missing:
            raise PrerequisiteError(
                f"missing system packages: {', '.join(missing)}; "
                f"install them with `apt-get install {' '.join(missing)}` (or `make setup`)"
            )

    # -- shared network --------------------------------------------------------------------

    def prepare(self) -> None:
        network = self.state.network
        # Subnets are a machine-wide resource (clusters of every CLUSTERKIT_HOME share the
        # routing table), so the choice and the bridge that claims it happen under one lock.
        with locked(MACHINE_LOCK, "subnet allocation"):
            if "subnet" not in network:
                network["subnet"] = self._choose_subnet()
                network["gateway"] = gateway_address(network["subnet"])
                network["bridge"] = net.bridge_name(self.state.name)
                self.state.save()  # recorded before any link exists, so `down` knows it
            net.create_bridge(self.state.name, network["gateway"])

    def _choose_subnet(self) -> str:
        others = [s.network["subnet"] for s in list_states() if "subnet" in s.network]
        wanted = self.spec.local.subnet
        taken = others + net.taken_networks()
        if wanted == "auto":
            return pick_subnet(taken)
        if overlaps(wanted, taken):
            raise ProviderError(
                f"local.subnet {wanted} is already in use; choose another or 'auto'"
            )
        return wanted

    def address(self, node: NodePlan) -> str:
        return node_address(self.state.network["subnet"], node.index)

    # -- nodes -----------------------------------------------------------------------------

    def _node(self, name: str, index: int, address: str) -> LocalNode:
        return LocalNode(self.state.name, name, index, address, self.state.dir / "nodes" / name)

    def launch(self, node: NodePlan, boot: NodeBoot) -> NodeState:
        local = self._node(node.name, node.index, self.address(node))
        local.prepare_dirs()
        self._write_boot_files(local, boot)
        net.create_node_net(self.state.name, node.name, node.index, local.address)
        holder = local.start_holder()
        sshd = local.start_sshd(holder)
        return NodeState(
            name=node.name,
            role=node.role,
            group=node.group,
            kind=node.kind,
            address=local.address,
            instance_id=f"i-{uuid.uuid4().hex[:17]}",
            index=node.index,
            pids={"holder": holder, "sshd": sshd},
            status="running",
        )

    def _write_boot_files(self, node: LocalNode, boot: NodeBoot) -> None:
        ssh = node.root / "etc/ssh"
        key = boot.host_key.read_text(encoding="utf-8")
        atomic_write(ssh / "ssh_host_ed25519_key", key, mode=0o600)
        shutil.copyfile(boot.host_key.with_suffix(".pub"), ssh / "ssh_host_ed25519_key.pub")
        atomic_write(ssh / "authorized_keys" / "root", boot.authorized_keys, mode=0o600)
        atomic_write(ssh / "ssh_known_hosts", boot.known_hosts)
        values = {"cluster": self.state.name, "node": node.name, "address": node.address}
        atomic_write(ssh / "sshd_config", render("ssh/sshd_config.j2", **values), mode=0o600)
        atomic_write(ssh / "ssh_config", render("ssh/node_ssh_config.j2", **values))
        atomic_write(node.root / "hosts", boot.hosts)

    def running(self, node: NodeState) -> bool:
        path = net.netns_path(self.state.name, node.name)
        holder, sshd = node.pids.get("holder"), node.pids.get("sshd")
        if holder is None or sshd is None or not path.exists():
            return False
        in_ns = set(pids_in_netns([path]))
        return all(alive(p) and p in in_ns for p in (holder, sshd))

    def terminate(self, node: NodeState) -> None:
        kill_pids(pids_in_netns([net.netns_path(self.state.name, node.name)]))
        net.delete_node_net(self.state.name, node.name, node.index)

    def enter_argv(self, node: NodeState) -> list[str]:
        """``nsenter`` prefix for running a command inside ``node`` (for tests and tools)."""
        return self._node(node.name, node.index, node.address or "").enter_argv(node.pids["holder"])

    # -- whole clusters --------------------------------------------------------------------

    @classmethod
    def destroy(cls, name: str, state: ClusterState | None) -> list[str]:
        removed: list[str] = []
        namespaces = net.cluster_netns(name)
        pids = pids_in_netns([net.NETNS_DIR / ns for ns in namespaces])
        if pids:
            kill_pids(pids)
            removed.append(f"{len(pids)} processes")
        links = net.cluster_links(name)
        net.delete_cluster_net(name)
        removed += [f"netns {ns}" for ns in namespaces] + [f"link {link}" for link in links]
        return removed

    @classmethod
    def discover(cls) -> list[str]:
        return sorted(net.all_clusterkit_netns())
