"""Spot interruptions seen from this machine: a cluster's events and their report.

The work happens on the cluster: Spot agents on the nodes (``nodetools.spot``) and the head's
reconciler (``nodetools.reconciler``, which follows requeued jobs to their end) record every
step. This module gathers those records with the local cloud service's own (the notices it
sent, the instances it ended) and sums them up:

- interruptions and rebalance recommendations, and how fast each node was drained;
- jobs requeued, restarted, recovered (ended COMPLETED after a requeue) or failed;
- work lost: per requeue, the seconds between the job's newest checkpoint (or the start of
  its run) and its requeue.

Where the cluster keeps accounting, how each requeued job ended and how often it restarted
come from Slurm's own records (``sacct --duplicates``: one per attempt) rather than from the
reconciler's events, which miss what happened while it was down; without accounting, from the
events.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clusterkit import proc
from clusterkit.errors import ClusterkitError, SSHError
from clusterkit.nodetools import events
from clusterkit.nodetools.jobwatch import DONE_STATES, SACCT_ATTEMPTS, Attempt, parse_attempts
from clusterkit.nodetools.spot import parse_time
from clusterkit.plan import head_name
from clusterkit.state import ClusterState, check_name, load_state, spec_of
from clusterkit.trust import ClusterTrust

JOB_ENDS = ("completed", "failed", "vanished")  # what the reconciler records of a job's end


def events_dir(state: ClusterState) -> str:
    return f"{spec_of(state).shared_storage.mount_point}/clusterkit/events"


def cluster_events(name: str) -> list[dict[str, Any]]:
    """Every event of cluster ``name``, oldest first: the head's log, the agents' files on
    shared storage, and (local provider) the cloud service's log on this machine."""
    check_name(name)
    state = load_state(name)
    found = _host_events(state)
    if "configure" in state.steps:
        script = f"cat {events.EVENTS} {events_dir(state)}/*.jsonl 2>/dev/null; true"
        trust = ClusterTrust(state.name, state.dir)
        # One argument: ssh hands the remote shell a single command line.
        argv = trust.ssh_argv(head_name(name), [script])
        try:
            text = proc.run(argv, timeout=60).stdout
        except ClusterkitError as exc:
            raise SSHError(f"{name}: cannot read the head's event logs: {exc}") from exc
        found += events.parse(text)
    return sorted(found, key=lambda e: str(e.get("time", "")))


def _host_events(state: ClusterState) -> list[dict[str, Any]]:
    path = state.dir / "cloud" / "events.jsonl"
    return list(events.read(Path(path)))


@dataclass
class SpotReport:
    interruptions: int = 0
    rebalances: int = 0
    drain_seconds: list[float] = field(default_factory=list)  # notice sent -> node drained
    notices_requeued_in_time: int = 0  # notices whose jobs were all requeued before the end
    notices_handled: int = 0
    jobs_requeued: int = 0
    requeues: int = 0
    restarts: int = 0
    jobs_recovered: int = 0
    jobs_failed: int = 0
    jobs_unfinished: int = 0  # requeued, not seen to end yet
    jobs_given_up: int = 0  # cancelled by an agent at the restart limit
    lost_seconds: float = 0.0
    lost_seconds_max: float = 0.0

    @property
    def recovery_rate(self) -> float | None:
        ended = self.jobs_recovered + self.jobs_failed
        return self.jobs_recovered / ended if ended else None

    @property
    def drain_seconds_median(self) -> float | None:
        return statistics.median(self.drain_seconds) if self.drain_seconds else None

    def as_dict(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["recovery_rate"] = self.recovery_rate
        data["drain_seconds_median"] = self.drain_seconds_median
        return data


def report(
    found: Sequence[dict[str, Any]], accounted: Mapping[str, list[Attempt]] | None = None
) -> SpotReport:
    """The sums of a cluster's events (see the module's docstring); ``accounted``: the
    requeued jobs' attempts from accounting, which then decide how each ended."""
    rep = SpotReport()
    _count_notices(rep, found)
    _count_jobs(rep, found)
    if accounted is not None:
        _count_from_accounting(rep, found, accounted)
    return rep


def requeued_jobs(found: Sequence[dict[str, Any]]) -> list[str]:
    """The jobs Spot agents requeued or gave up on, in the order first seen."""
    jobs = [str(e["job"]) for e in found if e.get("action") in ("requeued", "gave-up")]
    return list(dict.fromkeys(j for j in jobs if j and j != "None"))


def _count_from_accounting(
    rep: SpotReport, found: Sequence[dict[str, Any]], accounted: Mapping[str, list[Attempt]]
) -> None:
    """Outcomes and restarts of the requeued jobs from their attempts in accounting."""
    gave_up = {str(e.get("job")) for e in found if e.get("action") == "gave-up"}
    jobs = requeued_jobs(found)
    finals = {j: accounted[j][-1].state if accounted.get(j) else "" for j in jobs}
    rep.restarts = sum(max(len(accounted.get(j, [])) - 1, 0) for j in jobs)
    rep.jobs_recovered = sum(1 for s in finals.values() if s == "COMPLETED")
    rep.jobs_given_up = len(gave_up & set(jobs))
    rep.jobs_failed = sum(
        1 for j, s in finals.items() if (s in DONE_STATES and s != "COMPLETED") or j in gave_up
    )
    rep.jobs_unfinished = len(jobs) - rep.jobs_recovered - rep.jobs_failed


def _count_notices(rep: SpotReport, found: Sequence[dict[str, Any]]) -> None:
    sent = {e.get("instance_id"): e for e in found if e.get("action") == "spot-notice-sent"}
    for e in found:
        if e.get("source") != "spot-agent":
            continue
        if e.get("action") == "notice":
            if e.get("spot_action") == "rebalance":
                rep.rebalances += 1
            else:
                rep.interruptions += 1
        elif e.get("action") == "drained":
            rep.drain_seconds.append(_drain_seconds(e, sent.get(e.get("instance"))))
        elif e.get("action") == "handled":
            rep.notices_handled += 1
            rep.notices_requeued_in_time += float(e.get("left_seconds", -1)) >= 0


def _count_jobs(rep: SpotReport, found: Sequence[dict[str, Any]]) -> None:
    outcome: dict[str, str] = {}  # job -> requeued | completed | failed | vanished | gave-up
    restarts: dict[str, int] = {}  # job -> Slurm's restart count, the highest seen
    for e in found:
        job, action = str(e.get("job")), e.get("action")
        if action == "requeued":
            rep.requeues += 1
            rep.lost_seconds += float(e.get("lost_seconds", 0.0))
            rep.lost_seconds_max = max(rep.lost_seconds_max, float(e.get("lost_seconds", 0.0)))
            outcome[job] = "requeued"
        elif action == "gave-up":
            outcome[job] = "gave-up"
        elif e.get("source") == "reconciler" and action in (*JOB_ENDS, "restarted"):
            # A restart seen only at the job's end (its run was short) still counts.
            restarts[job] = max(restarts.get(job, 0), int(e.get("restarts", 0)))
            if action in JOB_ENDS and job in outcome:
                outcome[job] = str(action)
    rep.jobs_requeued = len(outcome)
    rep.restarts = sum(restarts.get(job, 0) for job in outcome)
    rep.jobs_recovered = sum(1 for v in outcome.values() if v == "completed")
    rep.jobs_failed = sum(1 for v in outcome.values() if v in ("failed", "gave-up"))
    rep.jobs_given_up = sum(1 for v in outcome.values() if v == "gave-up")
    rep.jobs_unfinished = sum(1 for v in outcome.values() if v in ("requeued", "vanished"))


def _drain_seconds(drained: dict[str, Any], sent: dict[str, Any] | None) -> float:
    """From the notice's arrival (sent by the local cloud; else seen by the agent) to the
    drain. On one machine the service and the nodes share a clock."""
    if sent is None:
        return float(drained.get("seconds", 0.0))
    return round(parse_time(str(drained["time"])) - parse_time(str(sent["time"])), 3)


def spot_report(name: str) -> SpotReport:
    found = cluster_events(name)
    return report(found, _accounted(name, requeued_jobs(found)))


def _accounted(name: str, jobs: list[str]) -> dict[str, list[Attempt]] | None:
    """The jobs' attempts from the cluster's accounting; None where it keeps none."""
    state = load_state(name)
    if not spec_of(state).accounting.enabled or "configure" not in state.steps:
        return None
    if not jobs:
        return {}
    trust = ClusterTrust(state.name, state.dir)
    out = trust.on_head([*SACCT_ATTEMPTS, ",".join(jobs)], timeout=60,
                        doing="read the requeued jobs from accounting")  # fmt: skip
    return parse_attempts(out)
