"""Power saving's decisions: capacity options, fallback between them, and the reconciler's rules.

The cloud here is a small in-memory one that answers launches from a script of outcomes;
the real local cloud service and Slurm are exercised by tests/integration/test_elastic.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from clusterkit.elastic import power_state
from clusterkit.headfiles import capacity_options, power_config
from clusterkit.nodetools import events
from clusterkit.nodetools.cloud import Cloud, CloudError, Instance, LaunchResult, Option
from clusterkit.nodetools.power import PowerConfig, Scontrol, failure_reason, launch_group
from clusterkit.nodetools.reconciler import (
    ORPHAN_GRACE_SECONDS,
    Action,
    PassErrors,
    Reconciler,
    drained_by_a_restart,
    held_by_a_restart,
)
from clusterkit.slurm import SlurmNode
from clusterkit.spec import GroupSpec, parse_spec

SPOT_A = Option("a.large", "spot")
SPOT_B = Option("b.large", "spot")
OD_A = Option("a.large", "on-demand")


def instance(
    node: str, iid: str = "", launched_at: float = 0.0, state: str = "running"
) -> Instance:
    return Instance(
        iid or f"i-{node}", node, "compute", "10.0.0.9", "a.large", "spot", state, launched_at
    )


class ScriptedCloud(Cloud):
    """Launches succeed for at most ``room[option]`` nodes, or fail with ``errors[option]``."""

    def __init__(self, room: dict[Option, int], errors: dict[Option, str] | None = None) -> None:
        self.room = room
        self.errors = errors or {}
        self.calls: list[tuple[Option, tuple[str, ...]]] = []

    def launch(self, group: str, nodes: Sequence[str], option: Option) -> LaunchResult:
        self.calls.append((option, tuple(nodes)))
        if option in self.errors:
            raise CloudError(self.errors[option], "refused")
        made = [instance(n) for n in nodes[: self.room.get(option, 0)]]
        short = (
            CloudError("InsufficientInstanceCapacity", "short") if len(made) < len(nodes) else None
        )
        return LaunchResult.of(nodes, made, short)

    def terminate(self, instance_ids: Sequence[str]) -> None:
        raise AssertionError("not used")

    def describe(self) -> list[Instance]:
        return []


# ---------------------------------------------------------------------------------------------
# Options and the head's configuration


@pytest.mark.parametrize(
    ("capacity", "expected"),
    [
        ("spot", [("a", "spot"), ("b", "spot")]),
        ("on-demand", [("a", "on-demand"), ("b", "on-demand")]),
        (
            "spot-then-on-demand",
            [("a", "spot"), ("b", "spot"), ("a", "on-demand"), ("b", "on-demand")],
        ),
    ],
)
def test_options_try_every_type_as_spot_before_on_demand(
    capacity: str, expected: list[tuple[str, str]]
) -> None:
    group = GroupSpec(name="g", instance_types=("a", "b"), capacity=capacity)
    assert [(o["instance_type"], o["lifecycle"]) for o in capacity_options(group)] == expected


def test_power_config_names_static_and_dynamic_nodes_per_group() -> None:
    spec = parse_spec({
        "name": "p", "slurm": {"resume_timeout": 90, "resume_retry_seconds": 7},
        "groups": [{"name": "cpu", "min": 1, "max": 3}, {"name": "gpu", "min": 0, "max": 1}],
    })  # fmt: skip
    config = PowerConfig.from_dict(power_config(spec))
    assert config.static == {"cpu-st-1"}
    assert config.node_group == {
        "cpu-st-1": "cpu", "cpu-dy-1": "cpu", "cpu-dy-2": "cpu", "gpu-dy-1": "gpu",
    }  # fmt: skip
    assert (config.resume_timeout, config.retry_seconds) == (90, 7)
    assert config.by_group(["gpu-dy-1", "cpu-dy-2"]) == {"gpu": ["gpu-dy-1"], "cpu": ["cpu-dy-2"]}
    with pytest.raises(ValueError, match="not a compute node"):
        config.by_group(["p-head"])


# ---------------------------------------------------------------------------------------------
# Fallback


def test_a_capacity_error_moves_to_the_next_option_at_once() -> None:
    cloud = ScriptedCloud({SPOT_B: 5}, {SPOT_A: "InsufficientInstanceCapacity"})
    made, error = launch_group(cloud, "compute", ["n1", "n2"], [SPOT_A, SPOT_B, OD_A])
    assert [i.node for i in made] == ["n1", "n2"] and error is None
    assert [c[0] for c in cloud.calls] == [SPOT_A, SPOT_B]


def test_a_partial_launch_sends_only_the_missing_nodes_on() -> None:
    cloud = ScriptedCloud({SPOT_A: 1, SPOT_B: 1, OD_A: 5})
    made, error = launch_group(cloud, "compute", ["n1", "n2", "n3"], [SPOT_A, SPOT_B, OD_A])
    assert sorted(i.node for i in made) == ["n1", "n2", "n3"] and error is None
    assert [c[1] for c in cloud.calls] == [("n1", "n2", "n3"), ("n2", "n3"), ("n3",)]


def test_when_every_option_fails_the_last_code_is_kept() -> None:
    cloud = ScriptedCloud(
        {}, {SPOT_A: "SpotMaxPriceTooLow", SPOT_B: "MaxSpotInstanceCountExceeded"}
    )
    made, error = launch_group(cloud, "compute", ["n1"], [SPOT_A, SPOT_B])
    assert made == [] and error is not None and error.code == "MaxSpotInstanceCountExceeded"
    assert failure_reason(error) == "(Code:MaxSpotInstanceCountExceeded) resume failed"


def test_an_error_other_than_capacity_stops_the_fallback() -> None:
    cloud = ScriptedCloud({SPOT_B: 5}, {SPOT_A: "UnauthorizedOperation"})
    made, error = launch_group(cloud, "compute", ["n1"], [SPOT_A, SPOT_B])
    assert made == [] and error is not None and error.code == "UnauthorizedOperation"
    assert len(cloud.calls) == 1


# ---------------------------------------------------------------------------------------------
# The reconciler's rules


def node(name: str, state: str = "IDLE", *flags: str, reason: str = "") -> SlurmNode:
    return SlurmNode(
        name=name, state=state, flags=flags, cpus=2, alloc_cpus=0, memory_mb=2048,
        alloc_memory_mb=0, partitions=("all",), reason=reason, address=name, hostname=name,
    )  # fmt: skip


@pytest.fixture
def reconciler() -> Reconciler:
    return Reconciler(PowerConfig(
        cluster="c", options={"compute": (SPOT_A,)},
        node_group={"c-st-1": "compute", "c-dy-1": "compute", "c-dy-2": "compute"},
        static=frozenset({"c-st-1"}), resume_timeout=60,
    ))  # fmt: skip


def test_healthy_nodes_need_nothing(reconciler: Reconciler) -> None:
    nodes = [
        node("c-st-1"),
        node("c-dy-1", "MIXED", "CLOUD"),
        node("c-dy-2", "IDLE", "CLOUD", "POWERED_DOWN"),
    ]
    assert reconciler.plan(nodes, [instance("c-st-1"), instance("c-dy-1")], now=1000) == []


def test_a_dynamic_node_whose_instance_is_gone_is_failed(reconciler: Reconciler) -> None:
    actions = reconciler.plan([node("c-st-1"), node("c-dy-1", "ALLOCATED", "CLOUD")],
                              [instance("c-st-1")], now=1000)  # fmt: skip
    assert actions == [Action("fail", ("c-dy-1",), (), "(Code:InstanceLost) instance gone")]


def test_a_dynamic_node_asked_to_power_down_is_not_failed_again(reconciler: Reconciler) -> None:
    # What Slurm shows right after a fail (DOWN, then POWER_DOWN_FORCE): no instance is due.
    nodes = [node("c-st-1"), node("c-dy-1", "DOWN", "CLOUD", "POWER_DOWN")]
    assert reconciler.plan(nodes, [instance("c-st-1")], now=1000) == []


def test_orphans_are_terminated_but_a_young_instance_is_left_to_its_resume(
    reconciler: Reconciler,
) -> None:
    nodes = [node("c-st-1"), node("c-dy-1", "IDLE", "CLOUD", "POWERED_DOWN")]
    stray = instance("other-dy-9", "i-stray")
    old = instance("c-dy-1", "i-old", launched_at=1000 - ORPHAN_GRACE_SECONDS - 1)
    actions = reconciler.plan(nodes, [instance("c-st-1"), stray, old], 1000)
    assert {a.instances for a in actions} == {("i-stray",), ("i-old",)}
    young = instance("c-dy-1", "i-young", launched_at=1000 - 1)
    assert reconciler.plan(nodes, [instance("c-st-1"), young], 1000) == []
    # Not named yet (its batch's names object is written right after the fleet call): left
    # alone while young, ended once past the grace.
    unnamed = instance("", "i-unnamed", launched_at=1000 - 1)
    assert reconciler.plan(nodes, [instance("c-st-1"), unnamed], 1000) == []
    later = 1000 + ORPHAN_GRACE_SECONDS
    [ended] = reconciler.plan(nodes, [instance("c-st-1"), unnamed], later)
    assert ended.instances == ("i-unnamed",) and ended.reason == "no node of this cluster owns it"


def test_an_older_duplicate_instance_of_a_node_is_terminated(reconciler: Reconciler) -> None:
    nodes = [node("c-st-1"), node("c-dy-1", "MIXED", "CLOUD")]
    pair = [instance("c-dy-1", "i-1", launched_at=5), instance("c-dy-1", "i-2", launched_at=9)]
    actions = reconciler.plan(nodes, [instance("c-st-1"), *pair], now=1000)
    assert [(a.kind, a.instances) for a in actions] == [("terminate", ("i-1",))]


def test_powering_up_fails_past_the_timeout_or_when_its_instance_vanishes(
    reconciler: Reconciler,
) -> None:
    up = [node("c-st-1"), node("c-dy-1", "MIXED", "CLOUD", "POWERING_UP")]
    static = instance("c-st-1")
    assert reconciler.plan(up, [static], now=1000) == []  # resume still launching
    assert reconciler.plan(up, [static], now=1059) == []
    [late] = reconciler.plan(up, [static], now=1061)
    assert late.reason == "(Code:ResumeTimeout) not up in 60s"
    assert reconciler.plan(up, [static, instance("c-dy-1")], now=2000) == []
    [lost] = reconciler.plan(up, [static], now=2001)
    assert lost.reason == "(Code:InstanceLost) gone while powering up"


def test_a_static_node_lost_or_not_responding_is_replaced(reconciler: Reconciler) -> None:
    [gone] = reconciler.plan([node("c-st-1", "ALLOCATED")], [], now=1000)
    assert (gone.kind, gone.nodes) == ("replace", ("c-st-1",))
    silent = node("c-st-1", "DOWN", "NOT_RESPONDING", reason="Not responding")
    [hung] = reconciler.plan([silent], [instance("c-st-1", "i-hung")], now=1000)
    assert (hung.kind, hung.instances) == ("replace", ("i-hung",))
    drained = node("c-st-1", "IDLE", "DRAIN", reason="maintenance")
    assert reconciler.plan([drained], [instance("c-st-1")], now=1000) == []


# ---------------------------------------------------------------------------------------------
# Events and power states


def test_events_round_trip_and_a_torn_line_is_skipped(tmp_path: Path) -> None:
    log = tmp_path / "events.jsonl"
    first = events.record("resume", "launch", path=log, nodes=["n1"], seconds=0.2)
    with open(log, "a", encoding="utf-8") as fh:
        fh.write('{"time": "2026-')  # a writer killed mid-line
    assert list(events.read(log)) == [first]
    assert events.parse(log.read_text()) == [first]
    assert first["time"].endswith("Z") and first["nodes"] == ["n1"]


@pytest.mark.parametrize(
    ("slurm", "kind", "expected"),
    [
        ("IDLE+CLOUD+POWERED_DOWN", "dynamic", "off"),
        ("MIXED+CLOUD+POWERING_UP", "dynamic", "powering up"),
        ("IDLE+CLOUD+POWERING_DOWN", "dynamic", "powering down"),
        ("DOWN+CLOUD+POWER_DOWN+NOT_RESPONDING", "dynamic", "powering down"),
        ("ALLOCATED+CLOUD", "dynamic", "on"),
        ("IDLE", "static", "on"),
        ("DOWN+NOT_RESPONDING", "static", "down"),
        (None, "static", "-"),
    ],
)
def test_power_state_reads_slurm_flags(slurm: str | None, kind: str, expected: str) -> None:
    assert power_state(slurm, kind) == expected


# Which failed passes of the reconciler are recorded


def test_a_failing_pass_before_slurm_first_answers_is_not_an_error() -> None:
    errors = PassErrors(started=100.0, grace=120.0)
    sinfo = "CalledProcessError: Command '['sinfo', '--json']' returned non-zero exit status 1."
    assert not errors.failed(sinfo, now=101.0)  # slurmctld still starting
    assert not errors.failed(sinfo, now=219.0)
    errors.passed()
    assert errors.failed(sinfo, now=230.0)  # once Slurm answered, a failure is one
    assert not errors.failed(sinfo, now=233.0)  # and recorded once while it lasts
    assert errors.failed("OSError: disk full", now=236.0)


def test_a_pass_that_never_succeeds_is_recorded_after_the_grace() -> None:
    errors = PassErrors(started=100.0, grace=120.0)
    assert not errors.failed("SlurmError: no slurmctld", now=150.0)
    assert errors.failed("SlurmError: no slurmctld", now=221.0)


def test_what_a_controller_restart_drained_and_held_is_found_and_nothing_else() -> None:
    nodes = [
        node("c-st-1", "IDLE", "DRAIN", reason="Duplicate jobid"),
        node("c-st-2", "IDLE", "DRAIN", reason="maintenance by the operator"),
        node("c-st-3", "DOWN", reason="Duplicate jobid"),  # down, not drained: another rule's
        node("c-st-4", "IDLE"),
    ]
    assert drained_by_a_restart(nodes) == ["c-st-1"]
    listed = (
        "7|launch failed requeued held\n8|ReqNodeNotAvail, UnavailableNodes:c-st-1\n9|JobHeldUser\n"
    )
    assert held_by_a_restart(listed) == ["7"]
    assert held_by_a_restart("") == []


class ScontrolRecorder(Scontrol):
    """Scontrol without Slurm: what the reconciler asked, and one running job per node."""

    def __init__(self) -> None:
        self.retried: list[tuple[list[int], int]] = []
        self.states: list[tuple[str, ...]] = []
        self.reason: dict[str, str] = {}

    def update(self, nodes: Sequence[str], **settings: str) -> None:
        self.states.append(("update", *nodes, settings.get("state", "")))
        self.reason.update(dict.fromkeys(nodes, settings.get("reason", "")))

    def reasons(self, nodes: Sequence[str]) -> dict[str, str]:
        return {n: self.reason.get(n, "") for n in nodes}

    def undrain(self, nodes: Sequence[str]) -> None:
        if nodes:  # as Scontrol: no call for no node
            self.states.append(("undrain", *nodes))

    def resume(self, nodes: Sequence[str]) -> None:
        self.states.append(("resume", *nodes))

    def set_addresses(self, instances: Sequence[Instance]) -> None:
        pass

    def jobs_on(self, nodes: Sequence[str]) -> list[int]:
        return [7]

    def retry_jobs(self, jobs: Sequence[int], seconds: int) -> None:
        self.retried.append((list(jobs), seconds))


def test_a_replaced_node_is_undrained_and_its_jobs_wait_the_retry_delay(
    reconciler: Reconciler, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The node stays DOWN until its new slurmd registers; its requeued jobs wait the delay,
    since Slurm may still deliver the kill of their last run to the node (measured: a job
    started again at once on the replaced node was killed 0.2 s later, 'NODE FAILURE')."""
    monkeypatch.setattr(events.record, "__defaults__", (tmp_path / "events.jsonl",))
    slurm = ScontrolRecorder()
    lost = Action("replace", ("c-st-1",), (), "(Code:InstanceLost) instance gone")
    reconciler.apply([lost], ScriptedCloud({SPOT_A: 1}), slurm)
    assert slurm.states == [("update", "c-st-1", "DOWN"), ("undrain", "c-st-1")]
    assert slurm.retried == [([7], reconciler.config.retry_seconds)]


def test_a_drain_an_operator_set_while_the_node_was_replaced_stays(
    reconciler: Reconciler, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(events.record, "__defaults__", (tmp_path / "events.jsonl",))
    slurm = ScontrolRecorder()
    cloud = ScriptedCloud({SPOT_A: 1})
    launch = cloud.launch

    def launched_while_drained(group: str, nodes: Sequence[str], option: Option) -> LaunchResult:
        made = launch(group, nodes, option)
        slurm.reason["c-st-1"] = "keep-free"  # `scontrol update ... state=DRAIN reason=...`
        return made

    monkeypatch.setattr(cloud, "launch", launched_while_drained)
    lost = Action("replace", ("c-st-1",), (), "(Code:InstanceLost) instance gone")
    reconciler.apply([lost], cloud, slurm)
    assert slurm.states == [("update", "c-st-1", "DOWN")]  # no undrain: the drain is not ours
