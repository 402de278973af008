"""Where the ledger's records come from: the meter's events, accounting's attempts, prices;
and the ledger ``down`` keeps, read back after the cluster is gone."""

from __future__ import annotations

from pathlib import Path

import pytest

from clusterkit import costs
from clusterkit.billing import billing_weights, budget_minutes, money, node_weight
from clusterkit.ledger import JobAttempt, Life, NodeSize
from clusterkit.nodetools import events
from clusterkit.nodetools.cloud import Instance
from clusterkit.nodetools.meter import GONE, UP, Meter
from clusterkit.prices import ON_DEMAND, SPOT, Price, PriceBook, price_book
from clusterkit.spec import parse_spec


def inst(iid: str, node: str, launched: float, state: str = "running") -> Instance:
    return Instance(iid, node, "compute", "10.0.0.9", "c7i.2xlarge", "spot", state, launched)


def test_the_meter_logs_each_life_once_with_the_providers_launch_time() -> None:
    meter = Meter()
    first = meter.observe([inst("i-1", "compute-st-1", 100.0)], now=130.0)
    assert [e["action"] for e in first] == [UP]
    assert first[0]["launched_at"] == events.utc(100.0)
    assert meter.observe([inst("i-1", "compute-st-1", 100.0)], now=133.0) == []
    gone = meter.observe([inst("i-1", "compute-st-1", 100.0, "terminated")], now=136.0)
    assert gone == [{
        "action": GONE, "instance": "i-1", "node": "compute-st-1",
        "last_seen": events.utc(133.0), "at": events.utc(136.0),
    }]  # fmt: skip


def test_the_meter_logs_a_zone_where_the_provider_has_one_and_the_life_keeps_it() -> None:
    zoned = Instance("i-1", "compute-st-1", "compute", "10.0.0.9", "c7i.2xlarge", "spot",
                     "running", 100.0, zone="eu-west-1b")  # fmt: skip
    (event,) = Meter().observe([zoned], now=130.0)
    assert event["zone"] == "eu-west-1b"
    assert "zone" not in Meter().observe([inst("i-2", "compute-st-2", 100.0)], now=130.0)[0]
    logged = {"time": events.utc(130.0), "source": "meter", **event}
    (found,) = costs.lives_from_events([logged])
    assert found.zone == "eu-west-1b"


def test_a_restarted_meter_knows_the_open_lives_from_the_log() -> None:
    logged = [
        {"source": "meter", "action": UP, "instance": "i-1", "node": "a"},
        {"source": "meter", "action": UP, "instance": "i-2", "node": "b"},
        {"source": "meter", "action": GONE, "instance": "i-1", "node": "a"},
    ]
    meter = Meter.from_log(logged)
    assert list(meter.open) == ["i-2"]
    assert meter.observe([inst("i-2", "b", 5.0)], now=10.0) == []


def ev(t: float, source: str, action: str, **fields: object) -> dict[str, object]:
    return {"time": events.utc(t), "source": source, "action": action, **fields}


def up(t: float, iid: str, node: str, launched: float) -> dict[str, object]:
    return ev(t, "meter", UP, instance=iid, node=node, group="compute",
              instance_type="c7i.2xlarge", lifecycle="spot",
              launched_at=events.utc(launched))  # fmt: skip


def gone(t: float, iid: str, node: str, seen: float) -> dict[str, object]:
    return ev(t, "meter", GONE, instance=iid, node=node, last_seen=events.utc(seen),
              at=events.utc(t))  # fmt: skip


def notice(t: float, iid: str, ends: float) -> dict[str, object]:
    return ev(t, "spot-agent", "notice", instance=iid, spot_action="terminate",
              ends=events.utc(ends))  # fmt: skip


def test_lives_end_when_the_event_that_ended_them_says() -> None:
    found = [
        up(10, "i-1", "compute-dy-1", 5),
        up(10, "i-2", "compute-st-1", 1),
        up(10, "i-3", "compute-st-2", 1),
        ev(200, "suspend", "terminated", nodes=["compute-dy-1"], instances={"compute-dy-1": "i-1"}),
        gone(202, "i-1", "compute-dy-1", 199),
        notice(290, "i-2", ends=300),
        gone(303, "i-2", "compute-st-1", 299),
        gone(400, "i-3", "compute-st-2", 397),  # nothing says why: the pass that missed it
        up(410, "i-4", "compute-st-1", 305),
    ]
    lives = {x.instance_id: x for x in costs.lives_from_events(found)}
    assert (lives["i-1"].start, lives["i-1"].end, lives["i-1"].ended_by) == (5, 200, "released")
    assert lives["i-1"].dynamic and not lives["i-2"].dynamic
    assert (lives["i-2"].end, lives["i-2"].ended_by) == (300, "interrupted")
    assert (lives["i-3"].end, lives["i-3"].ended_by) == (400, "lost")
    assert (lives["i-4"].start, lives["i-4"].end) == (305, None)


def test_the_local_clouds_termination_of_an_interrupted_instance_is_its_end() -> None:
    found = [
        up(10, "i-2", "compute-st-1", 1),
        notice(290, "i-2", ends=300),
        ev(301.5, "cloud", "spot-terminated", instance_id="i-2"),
        ev(302, "reconciler", "replace", instances=["i-2"]),
        gone(303, "i-2", "compute-st-1", 299),
    ]
    (life,) = costs.lives_from_events(found)
    assert (life.end, life.ended_by) == (301.5, "interrupted")


SACCT = """\
12|alice|physics|all|REQUEUED|1000|1100|compute-st-[1-2]|billing=4,cpu=4,mem=2G,node=2|sim
13_1|bob|chem|compute|COMPLETED|1005|1010|compute-st-3|cpu=1,mem=512M,node=1|pack-ab12
12|alice|physics|all|RUNNING|1200|Unknown|compute-st-1|cpu=4,mem=2G,node=1|sim
14|carol|default|all|PENDING|Unknown|Unknown|None assigned||wait|here
15|carol|default|all|CANCELLED by 0|1300|1301|compute-st-1|cpu=1,mem=1G,node=1|odd|name
"""


def test_sacct_attempts_are_numbered_per_job_and_unstarted_ones_left_out() -> None:
    got = costs.parse_sacct(SACCT)
    assert [(a.job, a.attempt, a.state) for a in got] == [
        ("12", 0, "REQUEUED"), ("12", 1, "RUNNING"), ("13_1", 0, "COMPLETED"),
        ("15", 0, "CANCELLED"),
    ]  # fmt: skip
    first = got[0]
    assert (first.nodes, first.cpus, first.mem_mb, first.end) == (
        ("compute-st-1", "compute-st-2"), 4, 2048, 1100.0,
    )  # fmt: skip
    assert got[1].end is None
    assert got[2].pack == "ab12" and got[2].mem_mb == 512
    assert got[3].name == "odd|name"


SPEC = parse_spec({
    "name": "c", "groups": [
        {"name": "cheap", "instance_types": ["c7i.large"], "cpus": 2, "memory_mb": 4096},
        {"name": "dear", "instance_types": ["c7i.4xlarge"], "cpus": 2, "memory_mb": 4096},
        {"name": "mine", "instance_types": ["c7i.large"], "weight": 7},
    ],
    "cost": {"prices": [{"instance_type": "c7i.large", "spot": 0.03}]},
})  # fmt: skip


def test_prices_come_from_the_spec_the_table_or_an_assumption_each_named() -> None:
    book = price_book(SPEC)
    assert book.get("c7i.large", SPOT) == Price(0.03, "spec (cost.prices)", "")
    table = book.get("c7i.large", ON_DEMAND)
    assert table is not None and table.hourly == 0.08925 and "list price" in table.source
    assumed = book.get("c7i.4xlarge", SPOT)
    assert assumed is not None and assumed.hourly == pytest.approx(0.714 * 0.35)
    assert "assumed: 35%" in assumed.source


def test_node_weights_put_the_cheapest_cpu_first_and_an_explicit_weight_wins() -> None:
    book = price_book(SPEC)
    cheap, dear, mine = (node_weight(g, book) for g in SPEC.groups)
    assert cheap == 1 + round(0.03 / 2 * 10_000) == 151
    assert dear > cheap
    assert mine == 7


def test_billing_is_money_per_minute_and_a_budget_is_billing_minutes() -> None:
    book = price_book(SPEC)
    cheap = SPEC.groups[0]
    weights = dict(kv.split("=") for kv in (billing_weights([cheap], book) or "").split(","))
    # 0.03 an hour for 2 CPUs: 0.00025 a CPU-minute = 250 millionths.
    assert float(weights["CPU"]) == pytest.approx(250)
    assert float(weights["Mem"]) * 4096 == pytest.approx(500, rel=1e-4)
    # The partition of both groups counts each TRES at the dearer group's price.
    both = dict(kv.split("=") for kv in (billing_weights(SPEC.groups[:2], book) or "").split(","))
    assert float(both["CPU"]) > float(weights["CPU"])
    assert budget_minutes(0.05) == 50_000 and money(50_000) == 0.05


def test_the_ledger_down_keeps_reads_back_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLUSTERKIT_HOME", str(tmp_path))
    book = PriceBook("USD", {("c7i.2xlarge", SPOT): Price(0.36, "spec", "")})
    inputs = costs.Inputs(
        cluster="kept", provider="local", created_at="2026-12-02T10:00:00+00:00", now=1000.0,
        lives=[Life("i-1", "compute-st-1", "compute", "c7i.2xlarge", SPOT, 0.0)],
        attempts=[JobAttempt("1", 0, "ann", "physics", "all", "x", "RUNNING", 100.0, None,
                             ("compute-st-1",), 2, 1000)],
        sizes={"compute": NodeSize(4, 8000)}, book=book,
    )  # fmt: skip
    path = costs.save(costs.finished(inputs))
    assert path.stat().st_mode & 0o777 == 0o600
    back = costs.saved("kept")
    assert back.lives[0].end == 1000.0 and back.lives[0].ended_by == "down"
    assert back.attempts[0].end == 1000.0
    assert back.saved_at
    shown = costs.report(back, by="user")
    assert shown["rows"][0]["key"] == "ann"
    assert shown["summary"]["spent"] == pytest.approx(0.1)
    with pytest.raises(Exception, match="no ledger kept"):
        costs.saved("other")
