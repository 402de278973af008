"""The metadata service for real: 169.254.169.254 on each cluster's bridge, seen from nodes.

Two bridges with a service each show that clusters side by side each serve the same address
(their sockets are bound to their own bridge). A bare cluster (no Slurm: nothing but the cloud
service acts on its nodes) shows the token flow from inside a node, per-node answers, and an
interruption notice that ends the node's instance when its time comes.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from clusterkit import proc
from clusterkit.plan import gateway_address, node_address, pick_subnet
from clusterkit.providers.local import imds, net
from clusterkit.providers.local.provider import MACHINE_LOCK
from clusterkit.state import locked
from tests.driver import Clusterkit
from tests.local_residue import residue

NAME = "imdsit"
PROBES = ("imdsprobe-a", "imdsprobe-b")
NODE = "n1"

# A node's side of the IMDSv2 flow: a token, then GET with it; prints "STATUS BODY".
FETCH = (
    "T=$(curl -s -m 3 -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' "
    "http://169.254.169.254/latest/api/token) && "
    "curl -s -m 3 -w ' %{{http_code}}' -H \"X-aws-ec2-metadata-token: $T\" "
    "http://169.254.169.254/latest/meta-data/{path}"
)


def wait_for(what: str, check: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.2)


@pytest.fixture
def two_bridges() -> Iterator[dict[str, str]]:
    """Two clusters' networks (a bridge and one node each), by cluster: the node's address."""
    nodes = {}
    try:
        with locked(MACHINE_LOCK, "subnet allocation"):  # subnets are shared with every `up`
            for name in PROBES:
                subnet = pick_subnet(net.taken_networks())
                net.create_bridge(name, gateway_address(subnet))
                nodes[name] = node_address(subnet, 1)
                net.create_node_net(name, NODE, 1, nodes[name])
        yield nodes
    finally:
        for name in PROBES:
            net.delete_cluster_net(name)
        assert [n for n in PROBES if net.cluster_netns(n) or net.cluster_links(n)] == []


def test_two_clusters_serve_the_metadata_address_at_once(two_bridges: dict[str, str]) -> None:
    servers = []
    try:
        for name, address in two_bridges.items():
            answer = imds.InstanceMetadata(f"i-{name}", "t.small", address, NODE, "spot")
            server = imds.MetadataServer(
                (imds.METADATA_ADDRESS, imds.METADATA_PORT), {address: answer}.get,
                device=net.bridge_name(name),
            )  # fmt: skip
            servers.append(server)
            threading.Thread(target=server.serve_forever, args=(0.1,), daemon=True).start()
        for name in two_bridges:
            argv = ["ip", "netns", "exec", net.netns_name(name, NODE), "bash", "-c"]
            out = proc.run([*argv, FETCH.format(path="instance-id")], timeout=20).stdout
            assert out == f"i-{name} 200"
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


@pytest.fixture(scope="module")
def cluster(ck: Clusterkit) -> Iterator[Clusterkit]:
    ck.up(NAME, 1)
    yield ck
    ck.run("down", NAME)
    assert residue(ck, NAME) == []


def fetch(ck: Clusterkit, node: str, path: str) -> str:
    return ck.ssh(NAME, node, FETCH.format(path=path)).stdout


def test_each_node_reads_its_own_instance(cluster: Clusterkit) -> None:
    nodes = {n["name"]: n for n in cluster.status(NAME)["nodes"]}
    for name in (f"{NAME}-head", "compute-st-1"):
        assert fetch(cluster, name, "instance-id") == f"{nodes[name]['instance_id']} 200"
        assert fetch(cluster, name, "hostname") == f"{name} 200"
    assert fetch(cluster, f"{NAME}-head", "instance-life-cycle") == "on-demand 200"
    assert fetch(cluster, "compute-st-1", "instance-life-cycle") == "spot 200"
    tokenless = "curl -s -o /dev/null -w %{http_code} http://169.254.169.254/latest/meta-data/"
    assert cluster.ssh(NAME, "compute-st-1", tokenless).stdout == "401"


def test_an_interruption_notice_then_the_end_of_the_instance(cluster: Clusterkit) -> None:
    assert fetch(cluster, "compute-st-1", "spot/instance-action").endswith(" 404")
    head = cluster.run("interrupt", NAME, f"{NAME}-head", check=False)
    assert head.returncode == 1 and "only compute nodes" in head.stderr
    sent = json.loads(cluster.run("interrupt", NAME, "compute-st-1", "--in", "3",
                                  "-o", "json").stdout)  # fmt: skip
    body, status = fetch(cluster, "compute-st-1", "spot/instance-action").rsplit(" ", 1)
    assert status == "200"
    assert json.loads(body) == {"action": "terminate", "time": sent["time"]}
    wait_for(
        "the node's namespace to go", lambda: not net.netns_path(NAME, "compute-st-1").exists()
    )
    log = cluster.cluster_dir(NAME) / "cloud" / "events.jsonl"
    # The service records the end once the instance is gone: a moment after the namespace.
    wait_for("the end recorded", lambda: "spot-terminated" in log.read_text(encoding="utf-8"))
    events = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    assert [(e["action"], e["instance_id"]) for e in events] == [
        ("spot-notice-sent", sent["instance_id"]), ("spot-terminated", sent["instance_id"]),
    ]  # fmt: skip
    gone = cluster.run("interrupt", NAME, "compute-st-1", check=False)
    assert gone.returncode == 1 and "no running instance" in gone.stderr
