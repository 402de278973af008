"""Spot interruptions on a node: ``ck-spot-agent`` and the handler it shares with the head.

The agent runs on every compute node. Every 2 s it asks the instance metadata service (EC2's,
or the local cloud service's stand-in: the same IMDSv2 client) for
``spot/instance-action`` and ``events/recommendations/rebalance``. On a notice the handler:

1. drains the node at once, with a reason naming the action, the end time and the instance;
2. signals the node's jobs to checkpoint (``USR1`` by default). Jobs run under ``ck-run`` get
   it through ``ck-run`` on this node; with ``signal_jobs: all`` every job's batch shell and
   steps get it from ``scancel --full`` too;
3. waits a grace, bounded by the time left before the instance ends, and ends it early once
   every signalled job has written a checkpoint newer than the signal;
4. requeues the jobs still on the node with ``scontrol requeue`` and makes them eligible at
   once (Slurm would hold them for 121 s). A job already restarted ``max_restarts`` times is
   cancelled instead: completion is always finite.

A rebalance recommendation only drains the node. Each step is an event (with the node, the
instance, the jobs and how long it took) in ``/shared/clusterkit/events/NODE-INSTANCE.jsonl``,
a file of this agent alone; ``clusterkit events`` and ``spot-report`` read them all. A node
that boots as a new instance resumes itself if a notice for its previous instance left it
drained. On AWS the head's event consumer calls the same handler for the same notice.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clusterkit import proc
from clusterkit.errors import CommandError
from clusterkit.nodetools import events
from clusterkit.nodetools.checkpoint import CheckpointError, Checkpoints
from clusterkit.nodetools.imds import Imds, ImdsError
from clusterkit.slurm import wait_past_revocation

CONFIG = Path("/shared/clusterkit/etc/spot.json")
REASON_PREFIX = "spot:"
POLL_SECONDS = 2.0
UNDRAIN_SECONDS = 120.0  # how long a new instance keeps trying to clear an old notice's drain


@dataclass(frozen=True)
class SpotConfig:
    """What the agent knows of the cluster (``/shared/clusterkit/etc/spot.json``)."""

    cluster: str
    checkpoint_dir: str  # "{user}" and "{job}" are filled in per job
    events_dir: str
    signal: str = "USR1"
    signal_jobs: str = "ck-run"  # ck-run | all | none
    grace_seconds: float = 60.0
    requeue_margin_seconds: float = 5.0
    max_restarts: int = 3
    events_queue: dict[str, Any] | None = None  # the head's SQS queue of EC2 events, if any
    region: str | None = None  # of an s3:// checkpoint_dir (the agent has no AWS_DEFAULT_REGION)

    @staticmethod
    def load(path: Path = CONFIG) -> SpotConfig:
        return SpotConfig(**json.loads(path.read_text(encoding="utf-8")))

    def checkpoints_of(self, job: RunningJob) -> str:
        return self.checkpoint_dir.format(user=job.user, job=job.id, cluster=self.cluster)


@dataclass(frozen=True)
class Notice:
    node: str
    instance_id: str
    action: str  # terminate | stop | hibernate | rebalance
    end: float  # when the instance goes (for a rebalance: when it was recommended)


@dataclass(frozen=True)
class RunningJob:
    id: str  # "123", or "123_4" for an array task
    user: str
    start: float  # when this run started
    restarts: int
    batch_host: str = ""  # the node running the batch script (the first of the job's nodes)


def parse_notice(node: str, instance_id: str, data: dict[str, Any]) -> Notice:
    """A ``spot/instance-action`` document (``{"action", "time"}``) as a Notice."""
    return Notice(node, instance_id, str(data["action"]), parse_time(str(data["time"])))


def parse_time(text: str) -> float:
    """RFC 3339 UTC time (``2026-11-22T12:00:00Z``, fractions allowed) as epoch seconds."""
    import calendar  # noqa: PLC0415

    main, _, frac = text.rstrip("Z").partition(".")
    seconds = calendar.timegm(time.strptime(main, "%Y-%m-%dT%H:%M:%S"))
    return seconds + (float(f"0.{frac}") if frac.isdigit() else 0.0)


def reason_for(notice: Notice) -> str:
    return f"{REASON_PREFIX}{notice.action} at {_stamp(notice.end)} ({notice.instance_id})"


def _stamp(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


# ---------------------------------------------------------------------------------------------
# Slurm, as the handler uses it


class SlurmOps:
    """The ``scontrol``/``squeue``/``scancel`` calls of the handler (work on any node)."""

    def drain(self, node: str, reason: str) -> None:
        proc.run(["scontrol", "update", f"nodename={node}", "state=DRAIN", f"reason={reason}"])

    def resume(self, node: str) -> None:
        proc.run(["scontrol", "update", f"nodename={node}", "state=RESUME"])

    def node_reason(self, node: str) -> str:
        out = proc.run(["sinfo", "-h", "-N", "-n", node, "-o", "%E"]).stdout.strip()
        return "" if out == "none" else out

    def jobs_on(self, node: str) -> list[RunningJob]:
        out = proc.run(
            ["squeue", "-h", "-w", node, "-t", "RUNNING,CONFIGURING", "-o", "%i|%u|%S|%B"]
        ).stdout
        jobs = []
        for line in out.splitlines():
            job, user, start, batch_host = line.split("|")
            jobs.append(RunningJob(job, user, _epoch(start), self._restarts(job), batch_host))
        return jobs

    def job_ids_on(self, node: str) -> set[str]:
        """Ids of the jobs still on ``node``: one ``squeue``, for the wait loop."""
        out = proc.run(["squeue", "-h", "-w", node, "-t", "RUNNING,CONFIGURING", "-o", "%i"])
        return set(out.stdout.split())

    def _restarts(self, job: str) -> int:
        out = proc.run(["scontrol", "show", "job", "-o", job], check=False).stdout
        for word in out.split():
            if word.startswith("Restarts="):
                return int(word.split("=", 1)[1])
        return 0

    def signal_all(self, job: str, signame: str) -> None:
        # --full: the batch shell, its children and every step; a job that ended meanwhile
        # refuses the signal, and that is fine.
        proc.run(["scancel", "--full", f"--signal={signame}", job], check=False)

    def requeue(self, job: str) -> bool:
        return proc.run(["scontrol", "requeue", job], check=False).returncode == 0

    def release(self, jobs: Sequence[str], timeout: float = 15.0) -> None:
        """Make requeued jobs eligible at once: Slurm would hold them for 121 s.

        ``scontrol requeue`` returns before the job is back in the queue, and an update of
        its start time before then is lost: each job is released once it is PENDING.
        """
        waiting = set(jobs)
        if waiting:  # requeued just before
            wait_past_revocation(time.time())
        deadline = time.monotonic() + timeout
        while waiting and time.monotonic() < deadline:
            out = proc.run(["squeue", "-h", "-j", ",".join(sorted(waiting)), "-o", "%i %T %r"],
                           check=False).stdout  # fmt: skip
            found = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line}
            for job in list(waiting):
                state = found.get(job)
                if state is None or state[0] == "RUNNING":
                    waiting.discard(job)  # ended, or already running again
                elif state[0] == "PENDING":
                    if state[1:] == ["BeginTime"]:
                        proc.run(["scontrol", "update", f"jobid={job}", "starttime=now"],
                                 check=False)  # fmt: skip
                    waiting.discard(job)
            if waiting:
                time.sleep(0.2)

    def cancel(self, job: str) -> None:
        proc.run(["scancel", job], check=False)


def _epoch(text: str) -> float:
    try:
        return time.mktime(time.strptime(text, "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return time.time()


# ---------------------------------------------------------------------------------------------
# Jobs under ck-run on this node


def ck_run_processes(proc_root: Path = Path("/proc")) -> dict[str, list[int]]:
    """Job id -> pids of the ``ck-run`` processes of that job running on this node."""
    found: dict[str, list[int]] = {}
    for entry in proc_root.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if not any(a.endswith(b"/ck-run") or a == b"ck-run" for a in argv[:2]):
                continue
            env = dict(
                item.split(b"=", 1)
                for item in (entry / "environ").read_bytes().split(b"\0")
                if b"=" in item
            )
        except OSError:
            continue  # gone meanwhile
        job = _job_of(env)
        if job:
            found.setdefault(job, []).append(int(entry.name))
    return found


def _job_of(env: dict[bytes, bytes]) -> str:
    array, task = env.get(b"SLURM_ARRAY_JOB_ID"), env.get(b"SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array.decode()}_{task.decode()}"
    return env.get(b"SLURM_JOB_ID", b"").decode()


# ---------------------------------------------------------------------------------------------
# The handler


@dataclass
class Handler:
    config: SpotConfig
    slurm: SlurmOps = field(default_factory=SlurmOps)
    record: Callable[..., dict[str, Any]] = events.record
    local_processes: Callable[[], dict[str, list[int]]] | None = ck_run_processes
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], None] = time.sleep

    def handle(self, notice: Notice) -> None:
        start = self.clock()
        base = {"node": notice.node, "instance": notice.instance_id, "spot_action": notice.action}
        self.record("spot-agent", "notice", **base, ends=events.utc(notice.end),
                    lead_seconds=round(notice.end - start, 1))  # fmt: skip
        self.slurm.drain(notice.node, reason_for(notice))
        self.record("spot-agent", "drained", **base, seconds=self._since(start))
        if notice.action == "rebalance":
            return
        jobs = self.slurm.jobs_on(notice.node)
        signalled = self._signal(jobs, base)
        deadline = min(start + self.config.grace_seconds,
                       notice.end - self.config.requeue_margin_seconds)  # fmt: skip
        saved = self._await_checkpoints(signalled, deadline, base)
        self._requeue(notice, saved, base)
        self.record("spot-agent", "handled", **base, seconds=self._since(start),
                    left_seconds=round(notice.end - self.clock(), 1))  # fmt: skip

    def _since(self, start: float) -> float:
        return round(self.clock() - start, 3)

    def _signal(self, jobs: Sequence[RunningJob], base: dict[str, Any]) -> dict[str, RunningJob]:
        mode = self.config.signal_jobs
        if mode == "none" or not jobs:
            return {}
        sig = getattr(signal, f"SIG{self.config.signal.removeprefix('SIG')}")
        local = self.local_processes() if self.local_processes else {}
        signalled: dict[str, RunningJob] = {}
        for job in jobs:
            for pid in local.get(job.id, []):
                try:
                    os.kill(pid, sig)
                    signalled[job.id] = job
                except OSError:
                    continue
            if mode == "all":
                self.slurm.signal_all(job.id, self.config.signal)
                signalled[job.id] = job
        if signalled:
            self.record("spot-agent", "signalled", **base, jobs=sorted(signalled),
                        signal=self.config.signal)  # fmt: skip
        return signalled

    def _await_checkpoints(
        self, jobs: dict[str, RunningJob], deadline: float, base: dict[str, Any]
    ) -> dict[str, float]:
        """Checkpoint times of the signalled jobs that saved one before ``deadline``."""
        asked = self.clock()
        saved: dict[str, float] = {}
        waiting = dict(jobs)
        while waiting and self.clock() < deadline:
            for job in list(waiting.values()):
                newest = self._latest_checkpoint(job)
                if newest is not None and newest >= asked - 1.0:
                    saved[job.id] = newest
                    del waiting[job.id]
                    self.record("spot-agent", "checkpointed", **base, job=job.id,
                                seconds_after_signal=round(newest - asked, 3))  # fmt: skip
            if waiting:
                still = self.slurm.job_ids_on(base["node"])
                waiting = {k: v for k, v in waiting.items() if k in still}
                self.sleep(0.5)
        return saved

    def _latest_checkpoint(self, job: RunningJob) -> float | None:
        try:
            newest = Checkpoints(self.config.checkpoints_of(job), self.config.region).latest()
        except (CheckpointError, OSError):
            return None
        return newest.time if newest else None

    def _requeue(self, notice: Notice, saved: dict[str, float], base: dict[str, Any]) -> None:
        requeued: list[str] = []
        for job in self.slurm.jobs_on(notice.node):
            if self._left_to_batch_host(job, notice.node):
                continue
            if job.restarts >= self.config.max_restarts:
                self.slurm.cancel(job.id)
                self.record("spot-agent", "gave-up", **base, job=job.id, restarts=job.restarts,
                            reason=f"restarted {job.restarts} times, the limit "
                            f"(slurm.max_restarts {self.config.max_restarts})")  # fmt: skip
                continue
            now = self.clock()
            done_at = saved.get(job.id) or self._latest_checkpoint(job)
            # Work since the newest checkpoint of this run (or since it started) is lost.
            since = max(done_at or job.start, job.start)
            ok = self.slurm.requeue(job.id)
            if ok:
                requeued.append(job.id)
            self.record("spot-agent", "requeued" if ok else "requeue-failed", **base,
                        job=job.id, restarts=job.restarts + 1, user=job.user,
                        checkpoint=events.utc(done_at) if done_at else None,
                        lost_seconds=round(max(0.0, now - since), 1))  # fmt: skip
        self.slurm.release(requeued)

    def _left_to_batch_host(self, job: RunningJob, node: str) -> bool:
        """A job on several interrupted nodes is requeued once, by its batch host's agent:
        two requeues at once would count two restarts."""
        if not job.batch_host or job.batch_host == node:
            return False
        return self.slurm.node_reason(job.batch_host).startswith(REASON_PREFIX)

    def undrain_if_replaced(self, node: str, instance_id: str) -> bool:
        """Resume ``node`` if a notice for an earlier instance left it drained."""
        reason = self.slurm.node_reason(node)
        if not reason.startswith(REASON_PREFIX) or f"({instance_id})" in reason:
            return False
        self.slurm.resume(node)
        self.record("spot-agent", "undrained", node=node, instance=instance_id,
                    old_reason=reason)  # fmt: skip
        return True


# ---------------------------------------------------------------------------------------------
# ck-spot-agent


@dataclass
class Agent:
    node: str
    instance_id: str
    imds: Imds
    handler: Handler
    seen: set[tuple[str, str]] = field(default_factory=set)

    def poll(self) -> Notice | None:
        """The newest notice for this instance not yet handled, if any."""
        data = self.imds.get_json("spot/instance-action")
        if data is not None:
            notice = parse_notice(self.node, self.instance_id, data)
        else:
            rebalance = self.imds.get_json("events/recommendations/rebalance")
            if rebalance is None:
                return None
            when = parse_time(str(rebalance["noticeTime"]))
            notice = Notice(self.node, self.instance_id, "rebalance", when)
        key = (notice.action, _stamp(notice.end))
        if key in self.seen:
            return None
        self.seen.add(key)
        return notice

    def run(self, poll_seconds: float, once: bool = False) -> int:
        self.handler.record("spot-agent", "started", node=self.node, instance=self.instance_id)
        # Until it succeeds (slurmd may not have registered yet), for a while at most.
        undrain_until = time.monotonic() + UNDRAIN_SECONDS
        last_error = ""
        while True:
            try:
                if time.monotonic() < undrain_until:
                    self.handler.undrain_if_replaced(self.node, self.instance_id)
                    undrain_until = 0.0
                notice = self.poll()
                if notice is not None:
                    self.handler.handle(notice)
                last_error = ""
            except (ImdsError, CommandError, OSError, ValueError, KeyError) as exc:
                error = f"{type(exc).__name__}: {exc}"[-300:]
                if error != last_error:  # once while it lasts, not every poll
                    self.handler.record("spot-agent", "error", node=self.node, detail=error)
                last_error = error
            if once:
                return 0
            time.sleep(poll_seconds)


def _events_path(config: SpotConfig, node: str, instance_id: str) -> Path:
    return Path(config.events_dir) / f"{node}-{instance_id}.jsonl"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ck-spot-agent", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--node", default=socket.gethostname(), help="this node's Slurm name")
    parser.add_argument("--interval", type=float, default=POLL_SECONDS)
    parser.add_argument("--once", action="store_true", help="one poll, then exit")
    args = parser.parse_args(argv)
    config = SpotConfig.load(args.config)
    imds = Imds()
    instance_id = _wait_instance_id(imds)
    path = _events_path(config, args.node, instance_id)

    def record(source: str, action: str, **fields: Any) -> dict[str, Any]:
        return events.record(source, action, path=path, **fields)

    agent = Agent(args.node, instance_id, imds, Handler(config, record=record))
    return agent.run(args.interval, once=args.once)


def _wait_instance_id(imds: Imds) -> str:
    """This instance's id; the service may still be starting when the node boots."""
    for _ in range(60):
        try:
            return imds.get("instance-id") or "unknown"
        except ImdsError:
            time.sleep(1)
    return "unknown"


if __name__ == "__main__":
    sys.exit(main())
