"""Protected mode's rules on plain events: what counts as a failure, the window, the limit,
lifting, and a reconciler that restarts reading the log again."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from clusterkit.headfiles import power_config
from clusterkit.nodetools import events, protect
from clusterkit.nodetools.power import PowerConfig
from clusterkit.nodetools.protect import PROTECTED_CODE, Protection, event_time
from clusterkit.nodetools.reconciler import Reconciler
from clusterkit.slurm import SlurmNode
from clusterkit.spec import parse_spec

GROUPS = {"c-st-1": "compute", "c-dy-1": "compute", "g-dy-1": "gpu"}


def protection(after: int = 3, window: float = 60) -> Protection:
    return Protection(GROUPS, after, window)


def at(seconds: float, source: str, action: str, **fields: Any) -> dict[str, Any]:
    return {"time": events.utc(1_800_000_000 + seconds), "source": source, "action": action,
            **fields}  # fmt: skip


def resume_failed(seconds: float, group: str = "compute") -> dict[str, Any]:
    member = "c-dy-1" if group == "compute" else "g-dy-1"
    return at(seconds, "resume", "failed", group=group, nodes=[member],
              reason="(Code:InsufficientInstanceCapacity) resume failed")  # fmt: skip


NOW = 1_800_000_000.0


def node(name: str, *flags: str, state: str = "IDLE", reason: str = "") -> SlurmNode:
    return SlurmNode(
        name=name, state=state, flags=flags, cpus=2, alloc_cpus=0, memory_mb=2048,
        alloc_memory_mb=0, partitions=("all",), reason=reason, address=name, hostname=name,
    )  # fmt: skip


class RecordingSlurm:
    def __init__(self) -> None:
        self.updates: list[tuple[tuple[str, ...], dict[str, str]]] = []
        self.undrained: list[str] = []

    def update(self, nodes: Sequence[str], **settings: str) -> None:
        if nodes:
            self.updates.append((tuple(nodes), settings))

    def undrain(self, nodes: Sequence[str]) -> None:
        self.undrained += nodes


@pytest.fixture(autouse=True)
def event_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    log = tmp_path / "events.jsonl"
    monkeypatch.setattr(events, "EVENTS", log)
    monkeypatch.setattr(events.record, "__defaults__", (log,))
    monkeypatch.setattr(events.read, "__defaults__", (log,))
    return log


def test_event_time_reads_what_events_write() -> None:
    assert event_time({"time": events.utc(1_800_000_123.25)}) == pytest.approx(1_800_000_123.25)
    assert event_time({"time": "yesterday"}) == 0.0
    assert event_time({}) == 0.0


def test_the_limit_within_the_window_protects_the_group_once() -> None:
    p = protection(after=3)
    assert p.observe([resume_failed(0), resume_failed(10)], NOW + 10) == []
    assert p.observe([resume_failed(20)], NOW + 20) == ["compute"]
    p.protected["compute"] = {}
    assert p.observe([resume_failed(30)], NOW + 30) == []  # protected already


def test_failures_spread_wider_than_the_window_never_protect() -> None:
    p = protection(after=3, window=60)
    due = p.observe([resume_failed(0), resume_failed(40), resume_failed(80), resume_failed(120)],
                    NOW + 120)  # fmt: skip
    assert due == []


def test_old_failures_read_again_do_not_protect() -> None:
    """A reconciler that restarts an hour later reads the same log: no protection from it."""
    p = protection(after=3, window=60)
    assert p.observe([resume_failed(0), resume_failed(1), resume_failed(2)], NOW + 3600) == []


def test_zero_never_protects() -> None:
    p = protection(after=0)
    assert p.observe([resume_failed(s) for s in range(20)], NOW + 20) == []


def test_groups_are_counted_apart() -> None:
    p = protection(after=2)
    assert p.observe([resume_failed(0, "gpu"), resume_failed(1)], NOW + 1) == []
    assert p.observe([resume_failed(2, "gpu")], NOW + 2) == ["gpu"]


@pytest.mark.parametrize(
    ("event", "counts"),
    [
        (at(0, "reconciler", "replace failed", nodes=["c-st-1"], error="Boom"), True),
        (at(0, "resume", "error", nodes=["g-dy-1"], detail="CloudError: x"), True),
        (at(0, "resume-fail", "powered down", nodes=["c-dy-1"],
            reason="(Code:ResumeTimeout) not up within 300s"), True),
        (at(0, "reconciler", "fail", nodes=["c-dy-1"],
            reason="(Code:InstanceLost) gone while powering up"), True),
        # A node whose instance was reclaimed is not a failed launch.
        (at(0, "reconciler", "fail", nodes=["c-dy-1"], reason="(Code:InstanceLost) instance gone"),
         False),
        (at(0, "resume", "launch", group="compute", nodes=["c-dy-1"], error=None), False),
        (at(0, "reconciler", "replace", nodes=["c-st-1"]), False),  # the first replace
        (at(0, "suspend", "terminated", nodes=["c-dy-1"]), False),
    ],
)  # fmt: skip
def test_what_counts_as_a_failure(event: dict[str, Any], counts: bool) -> None:
    assert bool(protection().failures_in(event)) is counts


def test_a_repair_that_does_not_hold_counts() -> None:
    p = protection(after=2, window=60)
    replace = [at(s, "reconciler", "replace", nodes=["c-st-1"]) for s in (0, 30, 200)]
    assert p.observe(replace[:1], NOW) == []  # a first repair is no failure
    assert p.observe(replace[1:2], NOW + 30) == []  # replaced again within 60 s: one failure
    assert p.observe(replace[2:], NOW + 200) == []  # a later one is a new first
    assert len(p.recent["compute"]) == 1


def test_a_failed_replace_counts_once_not_also_as_a_repair_that_did_not_hold() -> None:
    p = protection(after=10)
    for s in (0, 3, 6):
        p.observe([at(s, "reconciler", "replace failed", nodes=["c-st-1"], error="X"),
                   at(s, "reconciler", "replace", nodes=["c-st-1"])], NOW + s)  # fmt: skip
    assert len(p.recent["compute"]) == 3


def test_protect_drains_the_groups_nodes_with_the_reason_and_records_it() -> None:
    p = protection(after=1)
    p.observe([resume_failed(0)], NOW)
    slurm = RecordingSlurm()
    nodes = [node("c-st-1"), node("c-dy-1", "CLOUD", "POWERED_DOWN"),
             node("g-dy-1", "CLOUD", "POWERED_DOWN"),
             node("c-dy-2", "DRAIN", reason="operator: disk")]  # fmt: skip
    protect.protect(p, "compute", nodes, slurm)  # type: ignore[arg-type]
    ((drained, settings),) = slurm.updates
    assert drained == ("c-st-1", "c-dy-1")  # not the other group's, not an already drained one
    assert settings["state"] == "DRAIN"
    assert settings["reason"].startswith(PROTECTED_CODE)
    assert "1 failed launches or repairs in 60s" in settings["reason"]
    assert "InsufficientInstanceCapacity" in settings["reason"]
    (event,) = [e for e in events.read() if e["action"] == "protected"]
    assert event["group"] == "compute" and event["failures"] == 1
    assert "compute" in p.protected


def test_lift_resumes_what_protection_drained_and_clears_the_count() -> None:
    p = protection(after=1)
    p.observe([resume_failed(0)], NOW)
    protect.protect(p, "compute", [node("c-st-1")], RecordingSlurm())  # type: ignore[arg-type]
    drained = node("c-st-1", "DRAIN", reason=f"{PROTECTED_CODE} 1 failed")
    other = node("c-dy-1", "DRAIN", reason="operator: disk")
    slurm = RecordingSlurm()
    assert protect.lift(p, [], [drained, other], slurm) == ["compute"]  # type: ignore[arg-type]
    assert slurm.undrained == ["c-st-1"]  # an operator's drain stays
    assert p.protected == {} and "compute" not in p.recent
    # A reconciler reading the log from the start agrees: lifted, nothing counted.
    again = protection(after=1)
    assert again.observe(events.read(), NOW) == []
    assert again.protected == {}


def test_failures_then_a_lift_in_one_read_leave_nothing_due() -> None:
    """What ``--lift`` reads from the log: the failures that protected, then the lift."""
    lifted = at(3, "reconciler", "lifted", group="compute")
    p = protection(after=2)
    assert p.observe([resume_failed(0), resume_failed(1), lifted], NOW + 3) == []
    assert p.protected == {}


def test_lift_of_an_unknown_group_names_it() -> None:
    with pytest.raises(ValueError, match="no such group: nope"):
        protect.lift(protection(), ["nope"], [], RecordingSlurm())  # type: ignore[arg-type]


def test_lift_with_nothing_protected_records_nothing() -> None:
    assert protect.lift(protection(), [], [node("c-st-1")], RecordingSlurm()) == []  # type: ignore[arg-type]
    assert list(events.read()) == []


def test_a_protected_event_read_after_a_restart_keeps_the_group_protected() -> None:
    p = protection(after=1)
    p.observe([resume_failed(0)], NOW)
    protect.protect(p, "compute", [], RecordingSlurm())  # type: ignore[arg-type]
    again = protection()
    again.observe(events.read(), NOW + 3600)
    assert set(again.protected) == {"compute"}


def test_the_reconciler_leaves_a_protected_groups_nodes_alone() -> None:
    config = PowerConfig(
        cluster="c", options={"compute": (), "gpu": ()}, node_group=GROUPS,
        static=frozenset({"c-st-1"}), resume_timeout=60,
    )  # fmt: skip
    gone = node("c-st-1", state="DOWN", reason="Not responding")
    assert Reconciler(config).plan([gone], [], NOW)  # replaced when not protected
    assert Reconciler(config).plan([gone], [], NOW, protected={"compute"}) == []


def test_the_spec_sets_the_limit_and_window() -> None:
    spec = parse_spec({"name": "c", "protected_mode": {"failures": 4, "window_seconds": 90}})
    config = PowerConfig.from_dict(power_config(spec))
    assert (config.protect_after, config.protect_window) == (4, 90.0)
    default = PowerConfig.from_dict(power_config(parse_spec({"name": "c"})))
    assert (default.protect_after, default.protect_window) == (10, 600.0)


def test_tail_reads_only_new_complete_lines(event_log: Path) -> None:
    tail = events.Tail(event_log)
    assert tail.read() == []
    events.record("a", "one")
    with open(event_log, "a", encoding="utf-8") as fh:
        fh.write('{"source": "b", "action": "torn"')  # a writer mid-line
    assert [e["action"] for e in tail.read()] == ["one"]
    with open(event_log, "a", encoding="utf-8") as fh:
        fh.write("}\n")
    assert [e["action"] for e in tail.read()] == ["torn"]
    event_log.write_text("")  # replaced by a shorter log: read from its start
    events.record("c", "fresh")
    assert [e["action"] for e in tail.read()] == ["fresh"]
