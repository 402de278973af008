"""The Spot handler's rules on plain data: a fake Slurm, a fake clock, real checkpoints."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from clusterkit.nodetools import jobwatch, spot
from clusterkit.nodetools.checkpoint import Checkpoints
from clusterkit.nodetools.spot import Agent, Handler, Notice, RunningJob, SpotConfig


@dataclass
class FakeSlurm:
    jobs: list[RunningJob] = field(default_factory=list)
    reason: str = ""
    calls: list[tuple[str, ...]] = field(default_factory=list)

    def drain(self, node: str, reason: str) -> None:
        self.calls.append(("drain", node, reason))

    def resume(self, node: str) -> None:
        self.calls.append(("resume", node))

    def node_reason(self, node: str) -> str:
        return self.reason

    def jobs_on(self, node: str) -> list[RunningJob]:
        return list(self.jobs)

    def job_ids_on(self, node: str) -> set[str]:
        return {j.id for j in self.jobs}

    def signal_all(self, job: str, signame: str) -> None:
        self.calls.append(("signal", job, signame))

    def requeue(self, job: str) -> bool:
        self.calls.append(("requeue", job))
        self.jobs = [j for j in self.jobs if j.id != job]
        return True

    def release(self, jobs: list[str]) -> None:
        self.calls.append(("release", *jobs))

    def cancel(self, job: str) -> None:
        self.calls.append(("cancel", job))
        self.jobs = [j for j in self.jobs if j.id != job]


@dataclass
class Clock:
    now: float = 1_000_000.0
    on_sleep: list[Any] = field(default_factory=list)

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        for hook in self.on_sleep:
            hook(self.now)


@pytest.fixture
def config(tmp_path: Path) -> SpotConfig:
    return SpotConfig(
        cluster="demo", checkpoint_dir=str(tmp_path / "{user}" / "{job}"),
        events_dir=str(tmp_path / "events"), grace_seconds=30, requeue_margin_seconds=5,
        max_restarts=2,
    )  # fmt: skip


def make(
    config: SpotConfig, slurm: FakeSlurm, clock: Clock, procs: dict[str, list[int]]
) -> tuple[Handler, list[dict[str, Any]]]:
    recorded: list[dict[str, Any]] = []

    def record(source: str, action: str, **fields: Any) -> dict[str, Any]:
        event = {"source": source, "action": action, **fields}
        recorded.append(event)
        return event

    handler = Handler(config, slurm=slurm, record=record, local_processes=lambda: procs,  # type: ignore[arg-type]
                      clock=clock, sleep=clock.sleep)  # fmt: skip
    return handler, recorded


def actions(recorded: list[dict[str, Any]]) -> list[str]:
    return [e["action"] for e in recorded]


def test_notice_drains_then_requeues_with_the_reason(config: SpotConfig) -> None:
    clock = Clock()
    slurm = FakeSlurm([RunningJob("7", "ann", clock.now - 100, 0)])
    handler, recorded = make(config, slurm, clock, {})
    handler.handle(Notice("w-dy-1", "i-abc", "terminate", clock.now + 120))
    assert slurm.calls[0] == (
        "drain",
        "w-dy-1",
        f"spot:terminate at {spot._stamp(clock.now + 120)} (i-abc)",
    )
    assert slurm.calls[1:] == [("requeue", "7"), ("release", "7")]
    assert actions(recorded) == ["notice", "drained", "requeued", "handled"]
    requeued = recorded[2]
    # Nothing signalled (not under ck-run), no checkpoint: the whole run so far is lost.
    assert requeued["lost_seconds"] == 100.0 and requeued["checkpoint"] is None
    assert requeued["restarts"] == 1


def test_rebalance_only_drains(config: SpotConfig) -> None:
    clock = Clock()
    slurm = FakeSlurm([RunningJob("7", "ann", clock.now, 0)])
    handler, recorded = make(config, slurm, clock, {})
    handler.handle(Notice("n1", "i-1", "rebalance", clock.now))
    assert [c[0] for c in slurm.calls] == ["drain"]
    assert slurm.calls[0][2].startswith("spot:rebalance at ")
    assert actions(recorded) == ["notice", "drained"]


def test_a_job_at_its_restart_limit_is_cancelled_not_requeued(config: SpotConfig) -> None:
    clock = Clock()
    slurm = FakeSlurm([RunningJob("8", "ann", clock.now, 2), RunningJob("9", "bo", clock.now, 1)])
    handler, recorded = make(config, slurm, clock, {})
    handler.handle(Notice("n1", "i-1", "terminate", clock.now + 120))
    assert ("cancel", "8") in slurm.calls and ("requeue", "8") not in slurm.calls
    assert ("requeue", "9") in slurm.calls
    gave_up = next(e for e in recorded if e["action"] == "gave-up")
    assert "slurm.max_restarts 2" in gave_up["reason"]


def sleeper_ignoring_usr1() -> subprocess.Popen[bytes]:
    code = "import signal, time; signal.signal(signal.SIGUSR1, signal.SIG_IGN); time.sleep(60)"
    return subprocess.Popen([sys.executable, "-c", code])


def test_grace_is_bounded_by_the_time_left(config: SpotConfig) -> None:
    clock = Clock()
    slurm = FakeSlurm([RunningJob("7", "ann", clock.now, 0)])
    child = sleeper_ignoring_usr1()
    try:
        time.sleep(0.3)  # its handler is in place
        handler, recorded = make(config, slurm, clock, {"7": [child.pid]})
        start = clock.now
        # 12 s of notice, 5 s margin: requeued 7 s in, not after the 30 s grace.
        handler.handle(Notice("n1", "i-1", "stop", clock.now + 12))
    finally:
        child.kill()
        child.wait()
    assert actions(recorded) == ["notice", "drained", "signalled", "requeued", "handled"]
    assert 7.0 <= clock.now - start < 8.0
    assert recorded[-1]["left_seconds"] >= 4.0


def test_waiting_ends_once_the_signalled_job_has_saved(config: SpotConfig) -> None:
    # Checkpoint times are wall-clock times: the fake clock starts at the real time.
    clock = Clock(now=time.time())
    start = clock.now
    job = RunningJob("7", "ann", start - 50, 0)
    slurm = FakeSlurm([job])
    store = Checkpoints(config.checkpoints_of(job))
    old = store.save_json({"step": 1})
    meta = Path(old.location) / "ck-meta.json"
    meta.write_text(json.dumps({"time": start - 30}))  # saved before the notice: not an answer

    def answer(now: float) -> None:  # the job saves 2 s after the signal
        if now >= start + 2 and store.latest().seq == 1:  # type: ignore[union-attr]
            store.save_json({"step": 2})

    clock.on_sleep.append(answer)
    child = sleeper_ignoring_usr1()
    try:
        time.sleep(0.3)
        handler, recorded = make(config, slurm, clock, {"7": [child.pid]})
        handler.handle(Notice("n1", "i-1", "terminate", start + 120))
    finally:
        child.kill()
        child.wait()
    assert actions(recorded) == ["notice", "drained", "signalled", "checkpointed", "requeued",
                                 "handled"]  # fmt: skip
    assert clock.now - start < 5  # not the 30 s grace
    requeued = recorded[4]
    assert requeued["checkpoint"] is not None and requeued["lost_seconds"] < 5
    assert store.latest().seq == 2  # type: ignore[union-attr]


def test_a_job_on_several_interrupted_nodes_is_requeued_by_its_batch_host(
    config: SpotConfig,
) -> None:
    clock = Clock()
    job = RunningJob("7", "ann", clock.now, 0, batch_host="n1")
    slurm = FakeSlurm([job], reason="spot:terminate at 2026-11-22T10:00:00Z (i-1)")
    handler, _ = make(config, slurm, clock, {})
    handler.handle(Notice("n2", "i-2", "terminate", clock.now + 60))
    assert ("requeue", "7") not in slurm.calls  # n1's agent does it
    handler.handle(Notice("n1", "i-1", "terminate", clock.now + 60))
    assert ("requeue", "7") in slurm.calls
    slurm.jobs, slurm.reason = [RunningJob("8", "ann", clock.now, 0, batch_host="n1")], ""
    handler.handle(Notice("n2", "i-2", "terminate", clock.now + 60))
    assert ("requeue", "8") in slurm.calls  # n1 not interrupted: n2's agent requeues it


def test_signal_all_uses_scancel_for_every_job(config: SpotConfig) -> None:
    clock = Clock()
    slurm = FakeSlurm([RunningJob("7", "ann", clock.now, 0)])
    cfg = SpotConfig(**{**config.__dict__, "signal_jobs": "all", "grace_seconds": 1})
    handler, recorded = make(cfg, slurm, clock, {})
    handler.handle(Notice("n1", "i-1", "terminate", clock.now + 120))
    assert ("signal", "7", "USR1") in slurm.calls
    assert "signalled" in actions(recorded)


def test_a_new_instance_clears_an_old_notices_drain(config: SpotConfig) -> None:
    clock = Clock()
    slurm = FakeSlurm(reason="spot:terminate at 2026-11-22T10:00:00Z (i-old)")
    handler, _ = make(config, slurm, clock, {})
    assert handler.undrain_if_replaced("n1", "i-new") is True
    assert slurm.calls == [("resume", "n1")]
    # Its own instance's notice, or another reason, is left alone.
    assert handler.undrain_if_replaced("n1", "i-old") is False
    slurm.reason = "maintenance"
    assert handler.undrain_if_replaced("n1", "i-new") is False


class FakeImds:
    def __init__(self, answers: dict[str, dict[str, Any]]) -> None:
        self.answers = answers

    def get_json(self, path: str) -> dict[str, Any] | None:
        return self.answers.get(path)


def test_agent_reports_each_notice_once(config: SpotConfig) -> None:
    imds = FakeImds({})
    agent = Agent("n1", "i-1", imds, Handler(config))  # type: ignore[arg-type]
    assert agent.poll() is None
    imds.answers["events/recommendations/rebalance"] = {"noticeTime": "2026-11-22T10:00:00Z"}
    first = agent.poll()
    assert first is not None and first.action == "rebalance"
    assert agent.poll() is None
    imds.answers["spot/instance-action"] = {"action": "stop", "time": "2026-11-22T10:02:00Z"}
    notice = agent.poll()
    assert notice == Notice("n1", "i-1", "stop", spot.parse_time("2026-11-22T10:02:00Z"))
    assert agent.poll() is None


def test_parse_time_is_utc() -> None:
    assert spot.parse_time("1970-01-01T00:02:00Z") == 120.0
    assert spot.parse_time("1970-01-01T00:00:01.5Z") == 1.5


def test_ck_run_processes_are_found_with_their_job(tmp_path: Path) -> None:
    script = tmp_path / "ck-run"
    script.write_text("import time; time.sleep(30)\n")
    env = {**os.environ, "SLURM_JOB_ID": "77"}
    array = {**os.environ, "SLURM_JOB_ID": "80", "SLURM_ARRAY_JOB_ID": "78",
             "SLURM_ARRAY_TASK_ID": "2"}  # fmt: skip
    children = [subprocess.Popen([sys.executable, str(script)], env=e) for e in (env, array)]
    try:
        deadline = time.monotonic() + 5
        found: dict[str, list[int]] = {}
        while time.monotonic() < deadline:
            found = spot.ck_run_processes()
            if "77" in found and "78_2" in found:
                break
            time.sleep(0.05)
        assert found.get("77") == [children[0].pid]
        assert found.get("78_2") == [children[1].pid]
    finally:
        for child in children:
            child.send_signal(signal.SIGKILL)
            child.wait()


# ---------------------------------------------------------------------------------------------
# The head's follow-up of requeued jobs

SHOW_JOB = (
    "JobId=7 JobName=wrap UserId=ann(2001) JobState={state} Reason=None Requeue=1 "
    "Restarts={restarts} BatchFlag=1 NodeList=w-dy-2 BatchHost=w-dy-2 NumNodes=1 "
    "WorkDir=/root Comment={comment} StdErr=/dev/null StdIn=/dev/null StdOut=/dev/null Power="
)


def show(state: str, restarts: int, comment: str = "(null)") -> dict[str, jobwatch.JobInfo]:
    return jobwatch.parse_jobs(SHOW_JOB.format(state=state, restarts=restarts, comment=comment))


def test_watch_records_restart_then_end() -> None:
    watch = jobwatch.JobWatch()
    watch.follow([{"action": "requeued", "job": "7", "restarts": 1}])
    assert watch.observe(show("PENDING", 1)) == []
    assert watch.observe(show("RUNNING", 1)) == [
        {"action": "restarted", "job": "7", "node": "w-dy-2", "restarts": 1}
    ]
    assert watch.observe(show("RUNNING", 1)) == []
    ended = watch.observe(show("FAILED", 1, "ck-run: restarted 3 times, more than the limit"))
    assert ended == [{"action": "failed", "job": "7", "state": "FAILED", "restarts": 1,
                      "comment": "ck-run: restarted 3 times, more than the limit"}]  # fmt: skip
    assert watch.following == {}


def test_watch_finds_followed_jobs_slurm_still_holds() -> None:
    watch = jobwatch.JobWatch()
    watch.follow([{"action": "requeued", "job": "7", "restarts": 1}])
    held = jobwatch.parse_jobs(SHOW_JOB.format(state="PENDING", restarts=1, comment="x")
                               .replace("Reason=None", "Reason=BeginTime"))  # fmt: skip
    assert watch.held(held) == ["7"]
    assert watch.held(show("PENDING", 1)) == []


def test_watch_notes_a_job_slurm_forgot() -> None:
    watch = jobwatch.JobWatch()
    watch.follow([{"action": "requeued", "job": "9_3", "restarts": 2}])
    assert watch.missing({}) == ["9_3"]
    assert watch.observe({}) == [{"action": "vanished", "job": "9_3"}]


def test_a_job_slurm_forgot_ends_as_accounting_recorded_it() -> None:
    watch = jobwatch.JobWatch()
    watch.follow([{"action": "requeued", "job": "9_3", "restarts": 1},
                  {"action": "requeued", "job": "11", "restarts": 1}])  # fmt: skip
    accounted = jobwatch.parse_attempts(
        "9_3|REQUEUED|t0|t1|a\n9_3|REQUEUED|t2|t3|b\n9_3|COMPLETED|t4|t5|b\n"
        "11|REQUEUED|t0|t1|a\n11|PENDING|Unknown|Unknown|None assigned\n"
    )
    assert watch.observe({}, accounted) == [
        {"action": "completed", "job": "9_3", "state": "COMPLETED", "restarts": 2,
         "comment": "", "from": "sacct"},
        {"action": "vanished", "job": "11"},  # accounting has not seen it end
    ]  # fmt: skip


def test_array_tasks_are_named_array_underscore_task() -> None:
    line = "JobId=12 ArrayJobId=10 ArrayTaskId=2 JobState=RUNNING Restarts=0 NodeList=a"
    assert list(jobwatch.parse_jobs(line)) == ["10_2"]


def test_new_events_reads_each_complete_line_once(tmp_path: Path) -> None:
    watch = jobwatch.JobWatch()
    log = tmp_path / "n1-i-1.jsonl"
    log.write_text('{"action": "requeued", "job": "1"}\n{"action": "req')
    assert [e["job"] for e in watch.new_events(tmp_path)] == ["1"]
    with open(log, "a") as fh:
        fh.write('ueued", "job": "2"}\n')
    assert [e["job"] for e in watch.new_events(tmp_path)] == ["2"]
    assert watch.new_events(tmp_path) == []
