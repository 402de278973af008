"""The head's follow-up of requeued jobs: when each one runs again and how it ends.

Spot agents record the jobs they requeue (``requeued`` events on shared storage). Slurm
forgets a finished job ``MinJobAge`` seconds after its end, so the reconciler, every pass,
looks at the jobs it is following and records:

- ``restarted``: the job runs again (node, restart count);
- ``completed``: it ended COMPLETED;
- ``failed``: it ended in any other state (FAILED, CANCELLED, TIMEOUT, ...), with the job's
  comment (``ck-run`` writes there why it gave up);
- ``vanished``: Slurm no longer knows it and its end was not seen.

A job the queue forgot before its end was seen (the reconciler was down meanwhile) is looked
up in accounting where it is on: ``sacct --duplicates`` keeps one record per attempt, so its
end and its restarts are known; only without accounting does it vanish.

``JobWatch.observe`` holds the rules and works on plain data.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clusterkit import proc
from clusterkit.errors import CommandError

DONE_STATES = {
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL",
    "BOOT_FAIL", "DEADLINE", "PREEMPTED", "SPECIAL_EXIT",
}  # fmt: skip


@dataclass(frozen=True)
class JobInfo:
    id: str  # "123" or "123_4"
    state: str
    restarts: int
    nodes: str
    comment: str = ""
    reason: str = ""


@dataclass
class JobWatch:
    following: dict[str, int] = field(default_factory=dict)  # job -> restarts last seen
    offsets: dict[str, int] = field(default_factory=dict)  # event file -> bytes read

    def follow(self, requeued: Iterable[dict[str, Any]]) -> None:
        for event in requeued:
            if event.get("action") == "requeued" and event.get("job"):
                self.following[str(event["job"])] = int(event.get("restarts", 1)) - 1

    def missing(self, jobs: dict[str, JobInfo]) -> list[str]:
        """Followed jobs the queue no longer holds."""
        return [j for j in self.following if j not in jobs]

    def observe(
        self, jobs: dict[str, JobInfo], accounted: dict[str, list[Attempt]] | None = None
    ) -> list[dict[str, Any]]:
        """What happened to the followed jobs since the last pass, as events to record;
        ``accounted``: accounting's attempts of the jobs the queue no longer holds."""
        found: list[dict[str, Any]] = []
        for job_id, seen in list(self.following.items()):
            info = jobs.get(job_id)
            if info is None:
                found.append(_gone(job_id, (accounted or {}).get(job_id, [])))
                del self.following[job_id]
                continue
            if info.state in DONE_STATES:
                action = "completed" if info.state == "COMPLETED" else "failed"
                found.append({"action": action, "job": job_id, "state": info.state,
                              "restarts": info.restarts, "comment": info.comment})  # fmt: skip
                del self.following[job_id]
            elif info.state == "RUNNING" and info.restarts > seen:
                found.append({"action": "restarted", "job": job_id, "node": info.nodes,
                              "restarts": info.restarts})  # fmt: skip
                self.following[job_id] = info.restarts
        return found

    def held(self, jobs: dict[str, JobInfo]) -> list[str]:
        """Followed jobs Slurm holds after their requeue (the agent could not release them)."""
        return [
            j for j in self.following
            if j in jobs and jobs[j].state == "PENDING" and jobs[j].reason == "BeginTime"
        ]  # fmt: skip

    def new_events(self, directory: Path) -> list[dict[str, Any]]:
        """Events appended to the agents' files since the last call."""
        found: list[dict[str, Any]] = []
        try:
            names = sorted(os.listdir(directory))
        except FileNotFoundError:
            return found
        for name in names:
            if not name.endswith(".jsonl"):
                continue
            path = directory / name
            start = self.offsets.get(name, 0)
            with open(path, "rb") as fh:
                fh.seek(start)
                data = fh.read()
            complete = data[: data.rfind(b"\n") + 1]  # a line still being written waits
            self.offsets[name] = start + len(complete)
            for line in complete.splitlines():
                try:
                    found.append(json.loads(line))
                except ValueError:
                    continue
        return found


def _gone(job_id: str, runs: list[Attempt]) -> dict[str, Any]:
    """The event of a followed job the queue forgot: its end from accounting, if it has one."""
    end = ending(runs)
    if end is None:
        return {"action": "vanished", "job": job_id}
    state, restarts = end
    action = "completed" if state == "COMPLETED" else "failed"
    return {"action": action, "job": job_id, "state": state, "restarts": restarts,
            "comment": "", "from": "sacct"}  # fmt: skip


def parse_jobs(text: str) -> dict[str, JobInfo]:
    """``scontrol show job -o`` output, by job id (array tasks as ``ARRAY_TASK``)."""
    jobs = {}
    for line in text.splitlines():
        fields = _fields(line)
        if "JobId" not in fields:
            continue
        array, task = fields.get("ArrayJobId"), fields.get("ArrayTaskId")
        job_id = f"{array}_{task}" if array and task and task.isdigit() else fields["JobId"]
        jobs[job_id] = JobInfo(
            id=job_id, state=fields.get("JobState", ""), restarts=int(fields.get("Restarts", 0)),
            nodes=fields.get("NodeList", ""), comment=_comment(line),
            reason=fields.get("Reason", ""),
        )  # fmt: skip
    return jobs


def _fields(line: str) -> dict[str, str]:
    out = {}
    for word in line.split():
        key, sep, value = word.partition("=")
        if sep and key not in out:
            out[key] = value
    return out


def _comment(line: str) -> str:
    # The comment may hold spaces: it runs to the next " Key=" scontrol prints after it.
    start = line.find(" Comment=")
    if start < 0:
        return ""
    rest = line[start + len(" Comment=") :]
    for key in (" StdErr=", " StdIn=", " StdOut=", " Power=", " CpusPerTres=", " MailUser="):
        end = rest.find(key)
        if end >= 0:
            rest = rest[:end]
    return rest.strip()


def snapshot() -> dict[str, JobInfo]:
    """Every job slurmctld still holds (finished ones for MinJobAge seconds)."""
    return parse_jobs(proc.run(["scontrol", "show", "job", "-o"], timeout=30).stdout)


# --- accounting: one record per attempt -------------------------------------------------------

SACCT_ATTEMPTS = (
    "sacct", "--duplicates", "-X", "-n", "-P", "-o", "JobID,State,Start,End,NodeList", "-j",
)  # fmt: skip


@dataclass(frozen=True)
class Attempt:
    """One run of a job as accounting keeps it: earlier ones of a requeued job are REQUEUED
    (or NODE_FAIL, PREEMPTED); the last one is the job now."""

    job: str
    state: str
    start: str
    end: str
    nodes: str


def parse_attempts(text: str) -> dict[str, list[Attempt]]:
    """``SACCT_ATTEMPTS`` output by job id, attempts in the order sacct lists them."""
    found: dict[str, list[Attempt]] = {}
    for line in text.splitlines():
        fields = line.strip().split("|")
        if len(fields) < 5 or not fields[0]:
            continue
        job, state, start, end, nodes = fields[:5]
        # "CANCELLED by 2001": the state is the first word.
        found.setdefault(job, []).append(Attempt(job, state.split()[0], start, end, nodes))
    return found


def ending(attempts: list[Attempt]) -> tuple[str, int] | None:
    """How a job ended (its last attempt's state) and its restarts; None while it has not."""
    if not attempts or attempts[-1].state not in DONE_STATES:
        return None
    return attempts[-1].state, len(attempts) - 1


def attempts(job_ids: Iterable[str]) -> dict[str, list[Attempt]]:
    """Accounting's attempts of ``job_ids``; empty without accounting (sacct refuses)."""
    ids = ",".join(job_ids)
    if not ids:
        return {}
    try:
        return parse_attempts(proc.run([*SACCT_ATTEMPTS, ids], timeout=30).stdout)
    except CommandError:
        return {}
