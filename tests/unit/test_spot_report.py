"""spot-report's sums, on plain events."""

from __future__ import annotations

from typing import Any

from clusterkit.spot import report


def ev(time: str, source: str, action: str, **fields: Any) -> dict[str, Any]:
    return {"time": f"2026-11-22T10:00:{time}Z", "source": source, "action": action, **fields}


EVENTS = [
    ev("00.000", "cloud", "spot-notice-sent", node="a", instance_id="i-a"),
    ev("01.250", "spot-agent", "notice", node="a", instance="i-a", spot_action="terminate"),
    ev("01.500", "spot-agent", "drained", node="a", instance="i-a", seconds=0.25),
    ev("02.000", "spot-agent", "requeued", job="7", lost_seconds=1.5, restarts=1),
    ev("02.000", "spot-agent", "requeued", job="8", lost_seconds=3.0, restarts=3),
    ev("02.100", "spot-agent", "gave-up", job="9", restarts=3),
    ev("02.200", "spot-agent", "handled", node="a", left_seconds=4.0),
    ev("03.000", "spot-agent", "notice", node="b", instance="i-b", spot_action="rebalance"),
    ev("03.100", "spot-agent", "drained", node="b", instance="i-b", seconds=0.1),
    # Job 7 restarted and ended before the reconciler saw it running: its end says so.
    ev("20.000", "reconciler", "completed", job="7", state="COMPLETED", restarts=1),
    ev("21.000", "reconciler", "restarted", job="8", restarts=3),
    ev("22.000", "reconciler", "completed", job="99", state="COMPLETED", restarts=0),
]


def test_report_sums_notices_jobs_and_lost_work() -> None:
    rep = report(EVENTS)
    assert (rep.interruptions, rep.rebalances) == (1, 1)
    # From the notice's sending (the cloud service) to the drain; else the agent's own time.
    assert rep.drain_seconds == [1.5, 0.1]
    assert (rep.notices_handled, rep.notices_requeued_in_time) == (1, 1)
    assert (rep.jobs_requeued, rep.requeues) == (3, 2)
    assert rep.restarts == 4  # 1 (job 7, seen at its end) + 3 (job 8); job 99 was never ours
    assert (rep.jobs_recovered, rep.jobs_failed, rep.jobs_unfinished) == (1, 1, 1)
    assert rep.jobs_given_up == 1
    assert (rep.lost_seconds, rep.lost_seconds_max) == (4.5, 3.0)
    assert rep.recovery_rate == 0.5


def test_an_empty_cluster_reports_nothing() -> None:
    rep = report([])
    assert rep.recovery_rate is None and rep.drain_seconds_median is None
    assert rep.as_dict()["interruptions"] == 0


# `sacct --duplicates -X -n -P -o JobID,State,Start,End,NodeList` of the same jobs, as 22.05
# prints it: one record per attempt, the earlier ones REQUEUED.
SACCT = """\
7|REQUEUED|2026-11-22T09:59:00|2026-11-22T10:00:02|a
7|REQUEUED|2026-11-22T10:00:10|2026-11-22T10:00:15|b
7|COMPLETED|2026-11-22T10:00:18|2026-11-22T10:00:20|b
8|REQUEUED|2026-11-22T09:59:00|2026-11-22T10:00:02|a
8|RUNNING|2026-11-22T10:00:21|Unknown|c
9|REQUEUED|2026-11-22T09:59:00|2026-11-22T10:00:02|a
9|CANCELLED by 0|2026-11-22T10:00:05|2026-11-22T10:00:05|b
"""


def test_with_accounting_the_attempts_decide_ends_and_restarts() -> None:
    from clusterkit.nodetools.jobwatch import parse_attempts

    attempts = parse_attempts(SACCT)
    assert [a.state for a in attempts["9"]] == ["REQUEUED", "CANCELLED"]
    rep = report(EVENTS, attempts)
    # Job 7 ran three times (a requeue the reconciler never saw is in accounting); job 8 still
    # runs; job 9 was given up on.
    assert rep.restarts == 2 + 1 + 1
    assert (rep.jobs_recovered, rep.jobs_failed, rep.jobs_unfinished) == (1, 1, 1)
    assert rep.jobs_given_up == 1
    assert (rep.lost_seconds, rep.requeues) == (4.5, 2)  # lost work: the agents' measure


def test_a_job_accounting_has_not_seen_yet_is_unfinished() -> None:
    rep = report(EVENTS, {})
    assert (rep.jobs_recovered, rep.jobs_failed, rep.jobs_unfinished) == (0, 1, 2)
