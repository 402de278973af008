"""Node naming, plan order and local addressing."""

from __future__ import annotations

import ipaddress

import pytest

from clusterkit.errors import ProviderError
from clusterkit.plan import (
    AUTO_POOL,
    NodePlan,
    compute_name,
    gateway_address,
    head_name,
    node_address,
    overlaps,
    pick_subnet,
    plan_nodes,
    static_nodes,
)
from clusterkit.spec import MAX_LOCAL_NODES, ClusterSpec, GroupSpec


def two_groups() -> ClusterSpec:
    return ClusterSpec(
        name="demo",
        groups=(GroupSpec(name="cpu", min=2, max=3), GroupSpec(name="gpu", min=0, max=2)),
    )


def test_names() -> None:
    assert head_name("demo") == "demo-head"
    assert compute_name("cpu", "static", 1) == "cpu-st-1"
    assert compute_name("cpu", "dynamic", 12) == "cpu-dy-12"


def test_plan_is_head_then_each_groups_static_then_dynamic_nodes() -> None:
    assert plan_nodes(two_groups()) == [
        NodePlan("demo-head", "head", None, "static", 0),
        NodePlan("cpu-st-1", "compute", "cpu", "static", 1),
        NodePlan("cpu-st-2", "compute", "cpu", "static", 2),
        NodePlan("cpu-dy-1", "compute", "cpu", "dynamic", 3),
        NodePlan("gpu-dy-1", "compute", "gpu", "dynamic", 4),
        NodePlan("gpu-dy-2", "compute", "gpu", "dynamic", 5),
    ]


def test_indexes_are_plan_positions_and_names_are_unique() -> None:
    nodes = plan_nodes(ClusterSpec(name="big", groups=(GroupSpec(name="a", min=3, max=40),)))
    assert [n.index for n in nodes] == list(range(len(nodes)))
    assert len({n.name for n in nodes}) == len(nodes) == 41
    assert nodes[-1].name == "a-dy-37"


def test_default_spec_plan() -> None:
    names = [n.name for n in plan_nodes(ClusterSpec(name="x"))]
    assert names == ["x-head", "compute-st-1", "compute-st-2", "compute-dy-1", "compute-dy-2"]


def test_static_nodes_are_the_head_and_every_groups_min() -> None:
    static = static_nodes(two_groups())
    assert [n.name for n in static] == ["demo-head", "cpu-st-1", "cpu-st-2"]
    assert all(n.static for n in static)
    assert not any(n.static for n in plan_nodes(two_groups()) if n.kind == "dynamic")


def test_node_and_gateway_addresses() -> None:
    assert gateway_address("10.250.7.0/24") == "10.250.7.1"
    assert node_address("10.250.7.0/24", 0) == "10.250.7.2"
    assert node_address("10.250.7.0/24", 5) == "10.250.7.7"


def test_the_largest_local_cluster_fits_its_slash_24() -> None:
    spec = ClusterSpec(name="big", groups=(GroupSpec(name="a", max=MAX_LOCAL_NODES),))
    subnet = "10.250.9.0/24"
    net = ipaddress.ip_network(subnet)
    addresses = {node_address(subnet, n.index) for n in plan_nodes(spec)}
    assert len(addresses) == MAX_LOCAL_NODES + 1
    assert gateway_address(subnet) not in addresses
    for address in addresses:
        ip = ipaddress.ip_address(address)
        assert ip in net
        assert ip not in (net.network_address, net.broadcast_address)


def test_pick_subnet_takes_the_first_free_slash_24() -> None:
    assert pick_subnet([]) == "10.250.0.0/24"
    assert pick_subnet(["10.250.0.0/24", "10.250.1.5/24"]) == "10.250.2.0/24"
    assert pick_subnet(["10.250.0.0/23", "10.250.2.1/32"]) == "10.250.3.0/24"


def test_pick_subnet_ignores_other_networks_and_ipv6() -> None:
    assert pick_subnet(["192.168.0.0/16", "fd00::/8", "10.251.0.0/24"]) == "10.250.0.0/24"


@pytest.mark.parametrize(
    "taken", [["10.0.0.0/8"], [str(AUTO_POOL)], ["10.250.0.0/17", "10.250.128.0/17"]]
)
def test_pick_subnet_raises_when_the_pool_is_exhausted(taken: list[str]) -> None:
    with pytest.raises(ProviderError) as info:
        pick_subnet(taken)
    assert str(info.value) == (
        "no free /24 left in 10.250.0.0/16: bring down unused clusters or set local.subnet"
    )


def test_pick_subnet_finds_the_last_free_slash_24() -> None:
    # 10.250.0.0/17, 10.250.128.0/18, ... 10.250.254.0/24: all but 10.250.255.0/24
    taken = [f"10.250.{256 - 2 ** (25 - p)}.0/{p}" for p in range(17, 25)]
    assert taken[0] == "10.250.0.0/17"
    assert taken[-1] == "10.250.254.0/24"
    assert pick_subnet(taken) == "10.250.255.0/24"


@pytest.mark.parametrize(
    ("taken", "expected"),
    [
        ([], False),
        (["10.250.3.0/24"], True),
        (["10.250.3.77/32"], True),
        (["10.250.3.77/16"], True),  # an interface address with its prefix
        (["10.0.0.0/8"], True),
        (["10.250.4.0/24", "10.250.2.0/24"], False),
        (["fd00::/8"], False),
    ],
)
def test_overlaps(taken: list[str], expected: bool) -> None:
    assert overlaps("10.250.3.0/24", taken) is expected
