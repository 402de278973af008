"""``LocalProvider``: a cluster of network/UTS/mount namespaces behind one Linux bridge."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Any, ClassVar

from clusterkit.errors import PrerequisiteError, ProviderError, SpecError
from clusterkit.nodetools.cloud import LOCAL_SOCKET, Instance
from clusterkit.nodetools.supervise import listening
from clusterkit.plan import (
    ClusterUser,
    NodePlan,
    TenantGroup,
    cluster_users,
    gateway_address,
    home_root,
    node_address,
    overlaps,
    pick_subnet,
    plan_nodes,
    tenant_groups,
)
from clusterkit.providers.base import Interruption, NodeBoot, Provider
from clusterkit.providers.local import cgroups, cloud, control, net, owners
from clusterkit.providers.local.node import (
    ROOT_HOME,
    LocalNode,
    alive,
    covered_paths,
    pids_in_netns,
    stop_nodes,
)
from clusterkit.render import render
from clusterkit.spec import ClusterSpec
from clusterkit.state import (
    ClusterState,
    NodeState,
    atomic_write,
    cluster_dir,
    home,
    list_states,
    locked,
)
from clusterkit.supervision import SSHD_PORT
from clusterkit.traits import Traits
from clusterkit.trust import host_cert

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
    "/usr/bin/python3": "python3",  # every node's init, and Ansible's interpreter on nodes
}


def which(program: str) -> str | None:
    return shutil.which(program, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")


class LocalProvider(Provider):
    kind = "local"
    traits = Traits(
        shared_storage="sshfs",  # no kernel NFS server here; FUSE works
        service_manager="direct",  # no systemd as PID 1 in a node
        slurmd_flags=" -b",
        cgroup_plugin="cgroup/v1",  # measured on this kind of machine
        emulated_hardware=True,
        head_mounts_shared=True,  # /shared is bind-mounted into the head
    )
    step_labels: ClassVar[dict[str, str]] = {
        "network": "Network (bridge and subnet)",
        "nodes": "Nodes (namespaces and sshd)",
    }
    lists_orphans = True

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

    @classmethod
    def check_spec(cls, spec: ClusterSpec, configure: bool) -> None:
        """Every node sees the host's file system but for its private directories and, on
        the head, the shared mount point: the cluster's own state must not lie under those,
        or the nodes could not reach their files."""
        state_home = home().resolve()
        shared = Path(spec.shared_storage.mount_point)
        if _within(state_home, shared):
            raise SpecError(
                "shared_storage.mount_point",
                [f"{shared} would cover CLUSTERKIT_HOME ({state_home}) on the nodes; "
                 "choose another mount point (the default is /shared)"],
            )  # fmt: skip
        for private in sorted({Path(p) for p in covered_paths()}):
            if _within(state_home, private):
                raise PrerequisiteError(
                    f"CLUSTERKIT_HOME ({state_home}) lies under {private}, which every local "
                    "node covers with a directory of its own; choose a home elsewhere "
                    "(the default is ~/.clusterkit)"
                )

    # -- shared network --------------------------------------------------------------------

    def prepare(self) -> None:
        network = self.state.network
        # Subnets are a machine-wide resource (clusters of every CLUSTERKIT_HOME share the
        # routing table), so the choice and the bridge that claims it happen under one lock.
        with locked(MACHINE_LOCK, "subnet allocation"):
            owners.claim(self.state.name, self.state.dir)
            if "subnet" not in network:
                network["subnet"] = self._choose_subnet()
                network["gateway"] = gateway_address(network["subnet"])
                network["bridge"] = net.bridge_name(self.state.name)
                self.state.save()  # recorded before any link exists, so `down` knows it
            net.create_bridge(self.state.name, network["gateway"])
            # The ARP table is the machine's: room for every clusterkit node on it.
            others = net.all_clusterkit_netns()
            others.pop(self.state.name, None)
            net.ensure_neighbour_room(sum(map(len, others.values())) + len(plan_nodes(self.spec)))
        cgroups.create(self.state.name)
        cloud.prepare_dir(self.state.name)
        # The shared mount point must exist on the host's file system to be mounted over in
        # the nodes; it stays empty on the host itself.
        Path(self.spec.shared_storage.mount_point).mkdir(parents=True, exist_ok=True)
        (self.state.dir / "shared").mkdir(exist_ok=True)

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

    def _node(self, name: str, index: int, address: str, head: bool = False) -> LocalNode:
        binds = [(sub, mount) for sub, mount in cgroups.create(self.state.name)]
        if head:
            binds.append((self.state.dir / "shared", Path(self.spec.shared_storage.mount_point)))
            # The head's power-saving programs reach the cluster's cloud service here.
            binds.append((cloud.socket_dir(self.state.name), cloud.IN_HEAD))
        root = self.state.dir / "nodes" / name
        return LocalNode(self.state.name, name, index, address, root, tuple(binds))

    def launch(self, node: NodePlan, boot: NodeBoot) -> NodeState:
        local = self._node(node.name, node.index, self.address(node), node.role == "head")
        local.prepare_dirs()
        self._write_boot_files(local, boot)
        net.create_node_net(self.state.name, node.name, node.index, local.address)
        init = local.start_init()
        sshd = local.start_sshd(init)
        if boot.user_data is not None:
            # Like EC2: the user-data runs once at boot, on its own; its output is the
            # node's console log.
            local.spawn(init, ["/bin/bash", "/etc/clusterkit/user-data"], "console.log")
        return NodeState(
            name=node.name,
            role=node.role,
            group=node.group,
            kind=node.kind,
            address=local.address,
            instance_id=f"i-{uuid.uuid4().hex[:17]}",
            index=node.index,
            pids={"init": init, "sshd": sshd},
            status="running",
        )

    def _write_boot_files(self, node: LocalNode, boot: NodeBoot) -> None:
        ssh = node.root / "etc/ssh"
        key = boot.host_key.read_text(encoding="utf-8")
        atomic_write(ssh / "ssh_host_ed25519_key", key, mode=0o600)
        shutil.copyfile(boot.host_key.with_suffix(".pub"), ssh / "ssh_host_ed25519_key.pub")
        shutil.copyfile(host_cert(boot.host_key), ssh / "ssh_host_ed25519_key-cert.pub")
        atomic_write(ssh / "authorized_keys" / "root", boot.authorized_keys, mode=0o600)
        atomic_write(ssh / "ssh_known_hosts", boot.known_hosts)
        values = {"cluster": self.state.name, "node": node.name, "address": node.address}
        atomic_write(ssh / "sshd_config", render("ssh/sshd_config.j2", **values), mode=0o600)
        atomic_write(ssh / "ssh_config", render("ssh/node_ssh_config.j2", **values))
        atomic_write(node.root / "hosts", boot.hosts)
        for name, text in account_files(boot.users, boot.groups).items():
            atomic_write(node.root / name, text, mode=0o640 if name == "shadow" else 0o644)
        if boot.node_key is not None:
            key = boot.node_key.read_text(encoding="utf-8")
            atomic_write(ssh / "ck_node_key", key, mode=0o600)
        if boot.user_data is not None:
            atomic_write(node.root / "etc/clusterkit/user-data", boot.user_data, mode=0o700)

    @classmethod
    def checkpoint_location(
        cls, spec: ClusterSpec, network: dict[str, str]
    ) -> tuple[str, str | None]:
        return f"{home_root(spec)}/{{user}}/checkpoints/{spec.name}/{{job}}", None

    @classmethod
    def cloud_config(cls, spec: ClusterSpec, network: dict[str, str]) -> dict[str, Any]:
        return {"kind": "local", "cluster": spec.name, "socket": LOCAL_SOCKET}

    def instances(self) -> dict[str, Instance]:
        return control.instances(self.state.name)

    def simulate(self, **settings: Any) -> dict[str, Any]:
        return control.simulate(self.state.name, settings)

    def interrupt(self, node: str, action: str, in_seconds: float | None) -> Interruption:
        return control.interrupt(self.state, self.spec, node, action, in_seconds)

    def client_env(self) -> dict[str, str]:
        return control.client_env(self.state)

    def start_services(self) -> None:
        """The cluster's cloud service, which launches and ends dynamic nodes for the head;
        and the accounts of the running nodes, brought up to the spec."""
        cloud.start(self.state)
        self._refresh_accounts()

    def _refresh_accounts(self) -> None:
        """Users and tenants that ``up`` again added reach the nodes already running: their
        passwd, group and shadow are rewritten in place. They are bind-mounted files, which
        tools such as groupadd cannot replace, and an atomic rename would not reach the node."""
        users, groups = tuple(cluster_users(self.spec)), tuple(tenant_groups(self.spec))
        wanted = account_files(users, groups)
        for node in self.state.nodes.values():
            for name, text in wanted.items():
                path = self.state.dir / "nodes" / node.name / name
                if path.exists() and path.read_text(encoding="utf-8") != text:
                    with open(path, "r+", encoding="utf-8") as fh:
                        fh.write(text)
                        fh.truncate()

    def running(self, node: NodeState) -> bool:
        """The node's init lives and its sshd listens (the one started here, or the one the
        node's supervisor restarted after it died)."""
        path = net.netns_path(self.state.name, node.name)
        init = node.pids.get("init")
        if init is None or not path.exists() or not alive(init):
            return False
        if init not in set(pids_in_netns([path])):
            return False
        return listening(SSHD_PORT, Path(f"/proc/{init}/net"))

    def terminate(self, node: NodeState) -> None:
        stop_nodes([net.netns_path(self.state.name, node.name)])
        net.delete_node_net(self.state.name, node.name, node.index)

    # -- whole clusters --------------------------------------------------------------------

    @classmethod
    def destroy(cls, name: str, state: ClusterState | None) -> list[str]:
        # The cloud service goes first: it must not launch nodes while they are removed.
        removed: list[str] = cloud.stop(name)
        namespaces = net.cluster_netns(name)
        stopped = stop_nodes([net.NETNS_DIR / ns for ns in namespaces])
        if stopped:
            removed.append(f"{stopped} processes")
        links = net.cluster_links(name)
        net.delete_cluster_net(name)
        removed += [f"netns {ns}" for ns in namespaces] + [f"link {link}" for link in links]
        owners.release(name, cluster_dir(name))
        return removed + cgroups.remove(name)

    @classmethod
    def check_owner(cls, name: str, state_dir: Path, creating: bool) -> None:
        owners.check_owner(name, state_dir, creating)

    @classmethod
    def discover(cls) -> list[str]:
        return sorted(net.all_clusterkit_netns())


def _within(path: Path, top: Path) -> bool:
    return path == top or top in path.parents


def _with_root_home(passwd: str, home: str) -> str:
    """``passwd`` with root's home directory set to ``home``."""
    lines = []
    for line in passwd.splitlines():
        fields = line.split(":")
        if fields[0] == "root" and len(fields) == 7:
            fields[5] = home
        lines.append(":".join(fields))
    return "\n".join(lines) + "\n"


def account_files(
    users: tuple[ClusterUser, ...], tenants: tuple[TenantGroup, ...] = ()
) -> dict[str, str]:
    """A node's passwd, group and shadow: the host image's accounts plus the cluster users
    and the tenants' groups.

    They are private to the node (bind-mounted), so cluster users never appear on the host.
    A cluster user must not collide with an account of the image under another id.
    """
    files = {
        n: Path(f"/etc/{n}").read_text(encoding="utf-8") for n in ("passwd", "group", "shadow")
    }
    files["passwd"] = _with_root_home(files["passwd"], ROOT_HOME)
    by_name = {line.split(":")[0]: line.split(":") for line in files["passwd"].splitlines() if line}
    by_uid = {fields[2]: name for name, fields in by_name.items()}
    groups = {
        line.split(":")[0]: line.split(":")[2] for line in files["group"].splitlines() if line
    }
    extra: dict[str, list[str]] = {"passwd": [], "group": [], "shadow": []}
    for u in users:
        if u.name in by_name:
            if by_name[u.name][2] != str(u.uid):
                raise ProviderError(
                    f"users: {u.name!r} exists in the node image with uid {by_name[u.name][2]}, "
                    f"not {u.uid}; choose another name or uid"
                )
            continue
        if str(u.uid) in by_uid:
            raise ProviderError(
                f"users: uid {u.uid} of {u.name!r} belongs to {by_uid[str(u.uid)]!r} in the node "
                "image; choose another uid"
            )
        extra["passwd"].append(f"{u.name}:x:{u.uid}:{u.gid}:clusterkit user:{u.home}:/bin/bash")
        extra["shadow"].append(f"{u.name}:*:20000:0:99999:7:::")
        if u.name not in groups:
            extra["group"].append(f"{u.name}:x:{u.gid}:")
    for t in tenants:
        if t.name in groups:
            raise ProviderError(
                f"tenants: {t.name!r} is a group of the node image already; choose another name"
            )
        extra["group"].append(f"{t.name}:x:{t.gid}:{','.join(t.members)}")
    return {
        name: text.rstrip("\n") + "\n" + "".join(line + "\n" for line in extra[name])
        for name, text in files.items()
    }
