"""``status`` tells the truth: what makes a ready cluster degraded, one line each."""

from __future__ import annotations

import pytest

from clusterkit import health
from clusterkit.health import NodeView

HEAD = NodeView("c-head", "head", None, "static", "running", None)


def compute(slurm_state: str, *, kind: str = "static", state: str = "running",
            reason: str = "", name: str = "c-st-1") -> NodeView:  # fmt: skip
    return NodeView(name, "compute", "compute", kind, state, slurm_state, reason)


def test_a_healthy_cluster_has_no_problem() -> None:
    nodes = [
        HEAD, compute("IDLE"), compute("MIXED", name="c-st-2"),
        compute("IDLE+CLOUD+POWERED_DOWN", kind="dynamic", state="off", name="c-dy-1"),
        compute("IDLE+CLOUD+POWERING_UP", kind="dynamic", state="running", name="c-dy-2"),
    ]  # fmt: skip
    assert health.problems("c", nodes, None) == []
    assert health.summary("ready", []) == "ready"


def test_a_controller_that_does_not_answer_is_named() -> None:
    (line,) = health.problems(
        "c", [HEAD, compute("IDLE")], "sinfo: Unable to contact slurm controller"
    )
    assert line == "the Slurm controller does not answer: sinfo: Unable to contact slurm controller"
    assert health.summary("ready", [line]) == "degraded"


@pytest.mark.parametrize(
    ("node", "expected"),
    [
        (compute("DOWN+NOT_RESPONDING", reason="Not responding"),
         "c-st-1: Slurm says DOWN+NOT_RESPONDING (Not responding)"),
        (compute("IDLE+NOT_RESPONDING"), "c-st-1: Slurm says IDLE+NOT_RESPONDING"),
        (compute("UNKNOWN"), "c-st-1: Slurm says UNKNOWN"),
        (compute("DOWN", reason="(Code:InstanceLost) instance gone"),
         "c-st-1: Slurm says DOWN ((Code:InstanceLost) instance gone)"),
        (compute("IDLE", state="stopped"), "c-st-1: instance stopped"),
        (compute("DOWN+CLOUD", kind="dynamic", name="c-dy-1"), "c-dy-1: Slurm says DOWN+CLOUD"),
    ],
)  # fmt: skip
def test_down_unresponsive_and_lost_nodes_are_problems(node: NodeView, expected: str) -> None:
    assert health.problems("c", [HEAD, node], None) == [expected]


def test_a_drain_is_not_a_problem() -> None:
    drained = compute("IDLE+DRAIN", reason="operator: new disk")
    spot = compute("MIXED+DRAIN", reason="(Code:SpotInterruption)", name="c-st-2")
    assert health.problems("c", [HEAD, drained, spot], None) == []


def test_a_protected_group_is_one_line_saying_how_to_lift_it() -> None:
    why = "(Code:Protected) 3 failed launches or repairs in 600s; last: resume failed"
    nodes = [HEAD, compute("IDLE+DRAIN", reason=why),
             compute("DOWN+DRAIN", reason=why, name="c-st-2")]  # fmt: skip
    assert health.problems("demo", nodes, None) == [
        "group compute is in protected mode (3 failed launches or repairs in 600s; last: resume "
        "failed); once fixed: clusterkit unprotect demo compute"
    ]


def test_only_a_ready_cluster_becomes_degraded() -> None:
    assert health.summary("creating", ["x"]) == "creating"
    assert health.summary("failed", ["x"]) == "failed"


def test_a_head_whose_instance_is_stopped_is_a_problem() -> None:
    head = NodeView("c-head", "head", None, "static", "stopped", None)
    assert health.problems("c", [head], None) == ["c-head: instance stopped"]
