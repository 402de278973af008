"""The cost ledger's rules, checked against sums worked out by hand from the same records."""

from __future__ import annotations

import pytest

from clusterkit.ledger import JobAttempt, Life, NodeSize, build, dominant_share
from clusterkit.prices import Price, PriceBook

HOUR = 3600.0
# A Spot node at 0.36/h (0.0001/s) whose on-demand price is 1.08/h (0.0003/s); a head at 0.72/h.
BOOK = PriceBook(
    "USD",
    {
        ("c7i.2xlarge", "spot"): Price(0.36, "spec", ""),
        ("c7i.2xlarge", "on-demand"): Price(1.08, "spec", ""),
        ("m7i.large", "on-demand"): Price(0.72, "spec", ""),
    },
)
SIZES = {"compute": NodeSize(cpus=4, mem_mb=8000)}


def life(node: str, start: float, end: float | None, **kw: object) -> Life:
    fields: dict[str, object] = {
        "instance_id": f"i-{node}-{start:g}", "node": node, "group": "compute",
        "instance_type": "c7i.2xlarge", "capacity": "spot", "start": start, "end": end,
        "dynamic": "-dy-" in node,
    } | kw  # fmt: skip
    return Life(**fields)  # type: ignore[arg-type]


def attempt(
    job: str, start: float, end: float | None, nodes: tuple[str, ...], **kw: object
) -> JobAttempt:
    fields: dict[str, object] = {
        "job": job, "attempt": 0, "user": "ann", "tenant": "physics", "partition": "all",
        "name": "sim", "state": "COMPLETED", "start": start, "end": end, "nodes": nodes,
        "cpus": 2, "mem_mb": 1000,
    } | kw  # fmt: skip
    return JobAttempt(**fields)  # type: ignore[arg-type]


def test_the_dominant_share_is_the_largest_of_cpus_memory_and_gpus() -> None:
    size = NodeSize(cpus=4, mem_mb=8000, gpus=2)
    assert dominant_share(attempt("1", 0, 1, ("n",), cpus=1, mem_mb=6000), size) == 0.75
    assert dominant_share(attempt("1", 0, 1, ("n",), cpus=3, mem_mb=100), size) == 0.75
    assert dominant_share(attempt("1", 0, 1, ("n",), cpus=1, mem_mb=100, gpus=2), size) == 1.0
    # Two nodes: each holds half of the job's CPUs.
    assert dominant_share(attempt("1", 0, 1, ("a", "b"), cpus=4, mem_mb=100), size) == 0.5


def test_a_static_node_charges_jobs_their_share_and_keeps_the_rest_as_idle() -> None:
    lives = [life("compute-st-1", 0, HOUR)]
    # Half the node (2 of 4 CPUs) for 1,800 s: 0.5 * 1800 * 0.0001 = 0.09.
    runs = [attempt("7", 600, 2400, ("compute-st-1",))]
    book = build(lives, runs, SIZES, BOOK, now=HOUR)
    (cost,) = book.costs
    assert cost.direct == pytest.approx(0.09)
    assert cost.idle == 0.0  # a static node's idle stays the cluster's
    assert cost.on_demand == pytest.approx(0.27)
    assert book.spent == pytest.approx(0.36)
    assert book.idle == pytest.approx(0.36 - 0.09)
    assert book.on_demand == pytest.approx(1.08)
    assert book.spot_savings == pytest.approx(1.08 - 0.36)


def test_a_dynamic_nodes_boot_and_idle_time_is_charged_to_the_jobs_that_ran_on_it() -> None:
    # Up at 0, first job from 100 s, released at 1,000 s: 1,000 node-seconds, 0.1 spent.
    lives = [life("compute-dy-1", 0, 1000, ended_by="released")]
    runs = [
        attempt("1", 100, 500, ("compute-dy-1",), cpus=4),  # whole node: 400 s, 0.04
        attempt("2", 100, 300, ("compute-dy-1",), cpus=2, user="bob"),  # half: 100 s, 0.01
    ]
    book = build(lives, runs, SIZES, BOOK, now=2000)
    first, second = book.costs
    unused = 1000 - 400 - 100  # node-seconds no job used: 0.05 to share 4:1
    assert first.direct == pytest.approx(0.04)
    assert second.direct == pytest.approx(0.01)
    assert first.idle == pytest.approx(unused * 0.0001 * 0.8)
    assert second.idle == pytest.approx(unused * 0.0001 * 0.2)
    assert first.total + second.total == pytest.approx(book.spent)
    assert book.idle == 0.0
    assert {k: round(t.spent, 9) for k, t in book.by("user").items()} == {
        "ann": round(first.total, 9), "bob": round(second.total, 9),
    }  # fmt: skip


def test_a_dynamic_node_no_job_used_is_the_clusters_idle_and_the_head_its_own_line() -> None:
    head = Life("i-head", "demo-head", "", "m7i.large", "on-demand", 0, HOUR)
    lives = [head, life("compute-dy-2", 0, 600, ended_by="failed")]
    book = build(lives, [], SIZES, BOOK, now=HOUR)
    assert book.head == pytest.approx(0.72)
    assert book.idle == pytest.approx(0.06)
    assert book.spent == pytest.approx(0.78)
    assert book.jobs.spent == 0.0


def test_an_interrupted_attempt_is_interruption_cost_and_savings_are_net_of_it() -> None:
    lives = [
        life("compute-st-1", 0, 1000, ended_by="interrupted"),
        life("compute-st-1", 1100, 3000, instance_id="i-new"),
    ]
    runs = [
        attempt("5", 200, 1000, ("compute-st-1",), cpus=4, state="REQUEUED"),
        attempt("5", 1200, 1700, ("compute-st-1",), cpus=4, attempt=1),
    ]
    book = build(lives, runs, SIZES, BOOK, now=3000)
    lost, done = book.costs
    assert lost.interrupted and not done.interrupted
    assert lost.direct == pytest.approx(800 * 0.0001)
    assert book.interruption == pytest.approx(0.08)
    # On-demand would have done the work once: 2,900 s of node at 0.0003, less the lost 800 s.
    assert book.on_demand == pytest.approx(2900 * 0.0003)
    assert book.spot_savings == pytest.approx(2900 * 0.0003 - 800 * 0.0003 - 2900 * 0.0001)
    assert book.by("job")["5"].attempts == 2


def test_a_requeue_for_another_reason_is_not_an_interruption() -> None:
    lives = [life("compute-st-1", 0, 1000, ended_by="replaced")]
    runs = [attempt("5", 200, 990, ("compute-st-1",), state="REQUEUED")]
    assert not build(lives, runs, SIZES, BOOK, now=1000).costs[0].interrupted


def test_a_running_job_and_a_running_node_are_costed_up_to_now() -> None:
    lives = [life("compute-st-1", 0, None)]
    runs = [attempt("9", 0, None, ("compute-st-1",), cpus=4)]
    book = build(lives, runs, SIZES, BOOK, now=100)
    assert book.costs[0].direct == pytest.approx(0.01)
    assert book.spent == pytest.approx(0.01)


def test_an_unpriced_type_is_named_and_costs_nothing() -> None:
    lives = [life("compute-st-1", 0, 100, instance_type="x9.huge")]
    book = build(lives, [], SIZES, BOOK, now=100)
    assert book.unpriced == ["x9.huge"]
    assert book.spent == 0.0


def test_grouping_by_an_unknown_key_names_the_choices() -> None:
    with pytest.raises(ValueError, match="job, user, tenant, pack, partition"):
        build([], [], SIZES, BOOK, now=0).by("colour")


def test_cheapest_first_saved_the_mean_of_the_groups_a_job_fits_less_what_it_cost() -> None:
    book = PriceBook("USD", {
        ("c7i.large", "spot"): Price(0.12, "spec", ""),
        ("c7i.xlarge", "spot"): Price(0.36, "spec", ""),
        ("c7i.4xlarge", "spot"): Price(9.99, "spec", ""),
    })  # fmt: skip
    sizes = {
        "cheap": NodeSize(2, 2000, instance_type="c7i.large", capacity="spot"),
        "dear": NodeSize(2, 2000, instance_type="c7i.xlarge", capacity="spot"),
        "big": NodeSize(16, 32000, instance_type="c7i.4xlarge", capacity="spot"),
        "unpriced": NodeSize(2, 2000),
    }
    lives = [life("cheap-st-1", 0, HOUR, group="cheap", instance_type="c7i.large"),
             life("dear-st-1", 0, HOUR, group="dear", instance_type="c7i.xlarge")]  # fmt: skip
    runs = [
        # half of cheap-st-1 for an hour: 0.06; on dear it would be 0.18, on big 16 times
        # smaller a share of 9.99 (1/16 * 9.99); placement blind to price costs their mean
        attempt("1", 0, HOUR, ("cheap-st-1",), cpus=1),
        # asked for partition dear: Slurm had no choice, nothing is counted
        attempt("2", 0, HOUR, ("dear-st-1",), cpus=1, partition="dear"),
    ]
    got = build(lives, runs, sizes, book, now=HOUR, chosen_in="all")
    blind = (0.06 + 0.18 + 9.99 / 16) / 3
    assert got.cheapest_first == pytest.approx(blind - 0.06)
    assert got.summary()["cheapest_first_savings"] == pytest.approx(blind - 0.06, abs=1e-6)
    # a 2-CPU job that ran on dear (cheap was busy): the mean counts big at 2 of its 16 CPUs
    wide = attempt("3", 0, HOUR, ("dear-st-1",), cpus=2)
    got = build(lives, [wide], sizes, book, now=HOUR, chosen_in="all")
    assert got.cheapest_first == pytest.approx((0.12 + 0.36 + 9.99 / 8) / 3 - 0.36)
    assert not build(lives, runs, sizes, book, now=HOUR).cheapest_first  # no partition named


def test_an_instance_costs_its_own_zones_spot_price() -> None:
    zoned = Price(0.30, "Spot price in force", "", {"eu-west-1a": 0.24, "eu-west-1b": 0.36})
    book = PriceBook("USD", {**BOOK.prices, ("c7i.2xlarge", "spot"): zoned})
    lives = [life("compute-st-1", 0, HOUR, zone="eu-west-1a"),
             life("compute-st-2", 0, HOUR, zone="eu-west-1b"),
             life("compute-st-3", 0, HOUR)]  # fmt: skip
    # an hour in each zone, and one of a life from before zones were logged (the mean)
    assert build(lives, [], SIZES, book, now=HOUR).spent == pytest.approx(0.24 + 0.36 + 0.30)
