"""A 1 head + 3 compute local cluster: reachable by name with strict host key checking,
private per-node namespaces, idempotent `up`, two clusters side by side, and a `down` that
leaves nothing behind. The tests share one cluster and run in file order."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from clusterkit.providers.local import net
from clusterkit.trust import ClusterTrust, TrustedNode, public_key
from tests.driver import Clusterkit
from tests.local_residue import residue

NAME = "itest"
NODES = ["itest-head", "compute-st-1", "compute-st-2", "compute-st-3"]


@pytest.fixture(scope="module")
def cluster(ck: Clusterkit) -> dict[str, Any]:
    ck.up(NAME, 3)
    return ck.status(NAME)


def test_up_reports_every_node_running(cluster: dict[str, Any]) -> None:
    assert cluster["status"] == "ready"
    assert [n["name"] for n in cluster["nodes"]] == NODES
    assert {n["state"] for n in cluster["nodes"]} == {"running"}
    addresses = [n["address"] for n in cluster["nodes"]]
    assert len(set(addresses)) == 4
    assert all(a.startswith(cluster["subnet"].rsplit(".", 1)[0] + ".") for a in addresses)


def test_ssh_reaches_every_node_by_name(ck: Clusterkit, cluster: dict[str, Any]) -> None:
    for node in cluster["nodes"]:
        out = ck.ssh(NAME, node["name"], "hostname; ip -4 -o addr show dev eth0").stdout.split()
        assert out[0] == node["name"], out
        assert f"{node['address']}/24" in out, out


def test_ssh_checks_host_keys_strictly(ck: Clusterkit, cluster: dict[str, Any]) -> None:
    config = (ck.cluster_dir(NAME) / "ssh" / "ssh_config").read_text()
    assert "StrictHostKeyChecking yes" in config
    assert "StrictHostKeyChecking no" not in config
    known_hosts = ck.cluster_dir(NAME) / "ssh" / "known_hosts"
    original = known_hosts.read_text()
    lines = original.splitlines()
    # Give compute-st-1 the head's key: a real client must refuse the connection.
    head_key = lines[0].split(" ", 1)[1]
    swapped = [
        f"{line.split(' ', 1)[0]} {head_key}" if line.startswith("compute-st-1,") else line
        for line in lines
    ]
    try:
        known_hosts.write_text("\n".join(swapped) + "\n")
        refused = ck.ssh(NAME, "compute-st-1", "true", check=False)
        assert refused.returncode == 255
        assert "Host key verification failed" in refused.stderr
        known_hosts.write_text("")
        unknown = ck.ssh(NAME, "compute-st-2", "true", check=False)
        assert unknown.returncode == 255
        assert "Host key verification failed" in unknown.stderr
    finally:
        known_hosts.write_text(original)
    assert ck.ssh(NAME, "compute-st-1", "true").returncode == 0


def test_nodes_trust_each_other_by_host_key(ck: Clusterkit, cluster: dict[str, Any]) -> None:
    """Inside the cluster, host keys are known too: a node connecting to another gets as far
    as authentication (root-to-root login between nodes is not granted), not a key prompt."""
    probe = ck.ssh(NAME, "itest-head", "ssh -o BatchMode=yes compute-st-2 true", check=False)
    assert "Permission denied (publickey)" in probe.stderr
    assert "Host key verification failed" not in probe.stderr


def test_a_compute_node_is_reached_through_the_head(
    ck: Clusterkit, cluster: dict[str, Any], tmp_path: Path
) -> None:
    """The route an aws cluster's ssh_config takes, on this cluster's real nodes and keys:
    the head is dialled at its "public" address, compute-st-1 through the head's
    ProxyCommand at its private one, and its host key is still checked, by its name."""
    root = ck.cluster_dir(NAME)
    address = {n["name"]: n["address"] for n in cluster["nodes"]}
    head, compute = "itest-head", "compute-st-1"
    trust = ClusterTrust(NAME, tmp_path / "route")
    trust.user_key.parent.mkdir(parents=True)
    shutil.copy(root / "keys" / "id_ed25519", trust.user_key)
    os.chmod(trust.user_key, 0o600)

    def write(compute_key: str, compute_in_known_hosts: str | None = compute) -> None:
        nodes = [
            TrustedNode(head, address[head], public_key(root / "keys" / "hosts" / head),
                        public_address=address[head]),
            TrustedNode(compute, address[compute], compute_key),
        ]  # fmt: skip
        trust.write(nodes)
        assert "ProxyCommand" in trust.ssh_config.read_text()
        if compute_in_known_hosts != compute:  # the key listed under another name only
            text = trust.known_hosts.read_text().replace(f"{compute},", "other,")
            trust.known_hosts.write_text(text)

    def ssh(command: str) -> subprocess.CompletedProcess[str]:
        argv = trust.ssh_argv(compute, [command])
        return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)

    compute_key = public_key(root / "keys" / "hosts" / compute)
    write(compute_key)
    reached = ssh("hostname; echo $SSH_CONNECTION")
    assert reached.returncode == 0, reached.stderr
    name, connection = reached.stdout.splitlines()
    assert name == compute
    assert connection.split()[0] == address[head]  # the connection came from the head

    write(public_key(root / "keys" / "hosts" / head))  # compute-st-1 listed with a wrong key
    refused = ssh("true")
    assert refused.returncode == 255
    assert "Host key verification failed" in refused.stderr
    write(compute_key, compute_in_known_hosts=None)  # its key, but not under its name
    unlisted = ssh("true")
    assert unlisted.returncode == 255
    assert "Host key verification failed" in unlisted.stderr


def test_keys_are_private(ck: Clusterkit, cluster: dict[str, Any]) -> None:
    root = ck.cluster_dir(NAME)
    hosts = [p for p in (root / "keys" / "hosts").iterdir() if p.suffix != ".pub"]
    assert sorted(p.name for p in hosts) == sorted(NODES)
    private = [root / "keys" / "id_ed25519", root / "keys" / "host_ca", *hosts]
    private += [root / "nodes" / n / "etc/ssh/ssh_host_ed25519_key" for n in NODES]
    for path in private:
        assert path.exists(), path
        assert path.stat().st_mode & 0o777 == 0o600, path
    assert (root / "keys").stat().st_mode & 0o777 == 0o700


def test_nodes_have_private_mounts_and_hostnames(ck: Clusterkit, cluster: dict[str, Any]) -> None:
    marker = "written-inside-compute-st-1"
    ck.ssh(NAME, "compute-st-1", f"echo {marker} > /etc/slurm/ck-probe")
    try:
        node_copy = ck.cluster_dir(NAME) / "nodes" / "compute-st-1" / "etc/slurm/ck-probe"
        assert node_copy.read_text().strip() == marker
        assert not Path("/etc/slurm/ck-probe").exists()  # the host's /etc/slurm is untouched
        other = ck.ssh(NAME, "compute-st-2", "cat /etc/slurm/ck-probe", check=False)
        assert other.returncode != 0  # and so is every other node's
    finally:
        node_copy.unlink(missing_ok=True)
    hosts = ck.ssh(NAME, "compute-st-3", "cat /etc/hosts").stdout
    for node in cluster["nodes"]:
        assert f"{node['address']}\t{node['name']}" in hosts
    assert os.uname().nodename not in {n["name"] for n in cluster["nodes"]}


def test_list_shows_the_cluster(ck: Clusterkit, cluster: dict[str, Any]) -> None:
    import json

    listed = json.loads(ck.run("list", "-o", "json").stdout)
    assert [c["name"] for c in listed] == [NAME]
    table = ck.run("list").stdout
    assert NAME in table and "4/4" in table


def test_up_again_reconciles_without_duplicating(ck: Clusterkit, cluster: dict[str, Any]) -> None:
    state_before = _pids(ck)
    gateway_mac = _bridge_mac()
    ck.up(NAME, 3)
    assert _pids(ck) == state_before  # healthy nodes are left alone
    # Break one node's sshd (its listener; a bare node has no supervisor to restart it):
    # `up` replaces that node and only that node.
    ck.ssh(NAME, "compute-st-2", "pkill -9 -f '^sshd: .*listener'")
    ck.up(NAME, 3)
    after = _pids(ck)
    assert after["compute-st-2"] != state_before["compute-st-2"]
    assert {k: v for k, v in after.items() if k != "compute-st-2"} == {
        k: v for k, v in state_before.items() if k != "compute-st-2"
    }
    namespaces = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, check=True
    ).stdout
    assert sum(line.startswith(f"ck.{NAME}.") for line in namespaces.splitlines()) == 4
    assert ck.ssh(NAME, "compute-st-2", "hostname").stdout.strip() == "compute-st-2"
    # The gateway's MAC is the bridge's own, whatever nodes come and go: other nodes'
    # neighbour caches stay right (a bridge otherwise takes its lowest port's MAC).
    assert _bridge_mac() == gateway_mac == net.bridge_mac(NAME)


def _bridge_mac() -> str:
    return Path(f"/sys/class/net/{net.bridge_name(NAME)}/address").read_text().strip()


def _pids(ck: Clusterkit) -> dict[str, dict[str, int]]:
    import json

    state = json.loads((ck.cluster_dir(NAME) / "state.json").read_text())
    return {name: node["pids"] for name, node in state["nodes"].items()}


def test_a_second_cluster_runs_beside_the_first(ck: Clusterkit, cluster: dict[str, Any]) -> None:
    ck.up("itest2", 1)
    try:
        other = ck.status("itest2")
        assert other["subnet"] != cluster["subnet"]
        # Both clusters have a node called compute-st-1; each name reaches its own cluster.
        mine = ck.ssh(NAME, "compute-st-1", "hostname -I").stdout.split()
        theirs = ck.ssh("itest2", "compute-st-1", "hostname -I").stdout.split()
        assert mine == [cluster["nodes"][1]["address"]]
        assert theirs == [other["nodes"][1]["address"]]
    finally:
        ck.run("down", "itest2")
    assert residue(ck, "itest2") == []
    assert ck.ssh(NAME, "compute-st-1", "true").returncode == 0  # untouched by that down


def test_down_leaves_nothing(ck: Clusterkit, cluster: dict[str, Any]) -> None:
    # The probe sees the live cluster (so its empty answer after `down` means something).
    live = residue(ck, NAME)
    for node in NODES:
        assert f"netns ck.{NAME}.{node}" in live
        assert any(f": ck-node:{NAME}:{node} -c " in item for item in live), node
    assert f"dir {ck.cluster_dir(NAME)}" in live
    ck.run("down", NAME)
    assert residue(ck, NAME) == []
    gone = ck.run("down", NAME, check=False)
    assert gone.returncode == 1
    assert "no cluster named 'itest'" in gone.stderr
