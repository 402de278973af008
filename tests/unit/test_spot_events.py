"""The head's consumer of EC2 events: parsing EventBridge messages and the deferral rule."""

from __future__ import annotations

import json
from typing import Any

from clusterkit.nodetools.cloud import Instance
from clusterkit.nodetools.spot import Handler, Notice, SpotConfig
from clusterkit.nodetools.spot_events import Consumer, Ec2Event, parse_event


def message(detail_type: str, detail: dict[str, Any], source: str = "aws.ec2") -> str:
    return json.dumps({
        "version": "0", "id": "x", "detail-type": detail_type, "source": source,
        "account": "123456789012", "time": "2026-11-22T10:00:00Z", "region": "eu-west-1",
        "resources": [], "detail": detail,
    })  # fmt: skip


def test_parse_the_three_kinds_and_nothing_else() -> None:
    warning = message("EC2 Spot Instance Interruption Warning",
                      {"instance-id": "i-1", "instance-action": "stop"})  # fmt: skip
    event = parse_event(warning)
    assert event == Ec2Event("notice", "i-1", event.time, "stop")  # type: ignore[union-attr]
    rebalance = parse_event(
        message("EC2 Instance Rebalance Recommendation", {"instance-id": "i-2"})
    )
    assert rebalance is not None and rebalance.kind == "rebalance"
    state = parse_event(message("EC2 Instance State-change Notification",
                                {"instance-id": "i-3", "state": "terminated"}))  # fmt: skip
    assert state is not None and (state.kind, state.action) == ("state", "terminated")
    assert parse_event(message("AWS API Call via CloudTrail", {"instance-id": "i-4"})) is None
    assert parse_event(message("EC2 Spot Instance Interruption Warning", {}, source="x")) is None
    assert parse_event("not json") is None


class FakeCloud:
    def describe(self) -> list[Instance]:
        return [Instance(instance_id="i-1", node="w-dy-1", group="w", address="10.0.0.3",
                         instance_type="c7i.large", lifecycle="spot", launched_at=0.0,
                         state="running")]  # fmt: skip


class Recording(Handler):
    def __init__(self, reason: str) -> None:
        super().__init__(SpotConfig(cluster="c", checkpoint_dir="/x/{user}/{job}",
                                    events_dir="/x"), local_processes=None)  # fmt: skip
        self.reason = reason
        self.handled: list[Notice] = []
        self.slurm.node_reason = lambda node: self.reason  # type: ignore[method-assign]

    def handle(self, notice: Notice) -> None:
        self.handled.append(notice)


def consumer(handler: Handler, now: float = 1000.0) -> tuple[Consumer, list[float]]:
    slept: list[float] = []
    return Consumer(handler, FakeCloud(), lambda *a, **k: {},  # type: ignore[arg-type]
                    clock=lambda: now, sleep=slept.append), slept  # fmt: skip


def test_a_warning_is_handled_when_the_agent_has_not_acted() -> None:
    handler = Recording(reason="")
    c, slept = consumer(handler)
    assert c.consume(Ec2Event("notice", "i-1", 998.0, "terminate")) == "handled"
    assert slept == [4.0]  # 6 s after the event: the agent's chance first
    assert handler.handled == [Notice("w-dy-1", "i-1", "terminate", 998.0 + 120)]


def test_a_warning_the_agent_handled_is_left_alone() -> None:
    handler = Recording(reason="spot:terminate at 2026-11-22T10:02:00Z (i-1)")
    c, _ = consumer(handler)
    assert c.consume(Ec2Event("notice", "i-1", 998.0, "terminate")) == "left-to-agent"
    assert handler.handled == []


def test_unknown_instances_and_state_changes_are_only_recorded() -> None:
    handler = Recording(reason="")
    c, _ = consumer(handler)
    assert c.consume(Ec2Event("notice", "i-9", 998.0, "terminate")) == "unknown-instance"
    assert c.consume(Ec2Event("state", "i-1", 998.0, "terminated")) == "recorded"
    assert handler.handled == []
