"""Spot interruptions on a real local cluster: notice, drain, checkpoint, requeue, restore.

One cluster serves the module: one static compute and three dynamic ones, 2 CPUs each, so
a 2-CPU job has a node to itself. Notices come from ``clusterkit interrupt`` through the
nodes' metadata service, and the Spot agent on each node acts on them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.driver import Clusterkit
from tests.local_residue import residue

NAME = "spotit"
LEAD = 8  # seconds of notice
CHECKPOINT_EVERY = 4
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "jobs" / "hashchain.py"
SPEC = {
    "name": NAME,
    "groups": [{"name": "compute", "min": 1, "max": 4, "cpus": 2}],
    "slurm": {"suspend_time": 6, "suspend_timeout": 5, "resume_timeout": 60, "max_restarts": 2},
    "spot": {"grace_seconds": 10},
    "local": {"spot_notice_seconds": LEAD},
}
HOME = "/shared/home/ckuser"


@pytest.fixture(scope="module")
def cluster(ck: Clusterkit) -> Iterator[Clusterkit]:
    path = ck.write_spec(SPEC)
    ck.run("up", "-f", str(path), timeout=600)
    ck.run("ssh", NAME, "--", f"cat > {HOME}/hashchain.py && chown ckuser: {HOME}/hashchain.py",
           input=EXAMPLE.read_text(encoding="utf-8"))  # fmt: skip
    yield ck
    ck.run("down", NAME)
    assert residue(ck, NAME) == []


def wait_for(
    what: str,
    check: Callable[[], bool],
    timeout: float = 120,
    explain: Callable[[], str] | None = None,
) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() >= deadline:
            detail = f"\n{explain()}" if explain else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what}{detail}")
        time.sleep(0.5)


def situation(ck: Clusterkit) -> str:
    """The queue, the nodes and the interruption events, for a failure's message."""
    queue = head(ck, "squeue -o '%i %T %r %D %N'; sinfo -N -o '%N %T %E' | sort -u")
    found = "\n".join(json.dumps(e) for e in spot_events(ck) if e["action"] != "started")
    return f"{queue}\n{found}"


def head(ck: Clusterkit, command: str, user: str = "root") -> str:
    return ck.run("ssh", "-u", user, NAME, "--", command, timeout=300).stdout


def submit(ck: Clusterkit, args: str) -> str:
    return head(ck, f"cd {HOME} && sbatch --parsable {args}", user="ckuser").strip()


def nodes_of(ck: Clusterkit, job: str) -> list[str]:
    """The nodes running ``job`` (an array task as ``ID_TASK``); none when it is not running."""
    out = head(ck, f"squeue -h -t RUNNING -j {job} -o %N | xargs -r scontrol show hostnames")
    return out.split()


def running_on(ck: Clusterkit, job: str) -> str:
    found = nodes_of(ck, job)
    return found[0] if found else ""


def wait_running(ck: Clusterkit, job: str, after: float = 0.0) -> str:
    wait_for(f"job {job} running", lambda: bool(running_on(ck, job)))
    time.sleep(after)
    return running_on(ck, job)


def interrupt(ck: Clusterkit, node: str, *extra: str) -> None:
    ck.run("interrupt", NAME, node, "--in", str(LEAD), *extra)


def spot_events(ck: Clusterkit) -> list[dict[str, Any]]:
    text = ck.run("events", NAME, "--spot", "-o", "json").stdout
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def has_event(ck: Clusterkit, action: str, **match: str) -> bool:
    return any(
        e["action"] == action and all(e.get(k) == v for k, v in match.items())
        for e in spot_events(ck)
    )


def ended(ck: Clusterkit, job: str) -> dict[str, Any] | None:
    for e in spot_events(ck):
        if e.get("job") == job and e["action"] in ("completed", "failed", "vanished"):
            return e
    return None


def wait_ended(ck: Clusterkit, job: str, timeout: float = 180) -> dict[str, Any]:
    wait_for(f"job {job} to end", lambda: ended(ck, job) is not None, timeout)
    found = ended(ck, job)
    assert found is not None
    return found


def test_the_example_job_survives_two_interruptions_with_the_exact_answer(
    cluster: Clusterkit,
) -> None:
    job = submit(cluster, "-c2 --requeue --open-mode=append -o hashchain.out --wrap "
                 f"'exec ck-run --checkpoint-every {CHECKPOINT_EVERY} -- "
                 "python3 hashchain.py --steps 100 --pause 0.3'")  # fmt: skip
    first = wait_running(cluster, job, after=CHECKPOINT_EVERY + 2)
    interrupt(cluster, first)
    wait_for("the first requeue", lambda: has_event(cluster, "requeued", job=job))
    second = wait_running(cluster, job, after=CHECKPOINT_EVERY + 2)
    interrupt(cluster, second)
    assert wait_ended(cluster, job)["action"] == "completed"
    out = head(cluster, f"cat {HOME}/hashchain.out")
    expected = subprocess.run(
        [sys.executable, str(EXAMPLE), "--check", "--steps", "100"],
        capture_output=True, text=True, check=True,
    ).stdout.split()[1:3]  # fmt: skip
    answer = next(line for line in out.splitlines() if line.startswith("answer ")).split()
    assert answer[1:3] == expected and answer[-1] == "2", out
    assert "start at step 0 of 100 (restart 0)" in out
    # Each restart went on from a checkpoint, not from the start.
    restarts = [line for line in out.splitlines() if line.startswith("start at step")]
    assert [int(line.split()[3]) > 0 for line in restarts] == [False, True, True], out
    found = spot_events(cluster)
    requeued = [e for e in found if e["action"] == "requeued" and e.get("job") == job]
    assert [e["node"] for e in requeued] == [first, second]
    assert len({e["instance"] for e in requeued}) == 2
    assert all(e["lost_seconds"] <= CHECKPOINT_EVERY for e in requeued), requeued
    report = json.loads(cluster.run("spot-report", NAME, "-o", "json").stdout)
    assert report["jobs_recovered"] >= 1 and report["restarts"] >= 2
    # The two interrupted attempts are the interruption's cost; the savings are net of it.
    costs = json.loads(cluster.run("cost", NAME, "--by", "job", "-o", "json").stdout)
    mine = next(r for r in costs["rows"] if r["key"] == job)
    assert mine["attempts"] == 3, mine
    assert 0 < mine["interruption"] < mine["spent"], mine
    assert mine["spot_savings"] < mine["on_demand"] - mine["spent"], mine
    assert costs["summary"]["interruption"] >= mine["interruption"]


def test_exclusive_node_range_and_plain_jobs_run_again(cluster: Clusterkit) -> None:
    # The first run is long enough to be running still when the last of them has started on
    # a powered-up node (a 12 s job could end on its own first, and then no agent would
    # requeue it); a run after a requeue ends soon.
    script = ("'echo run $SLURM_RESTART_COUNT; "
              "[ ${SLURM_RESTART_COUNT:-0} -gt 0 ] && sleep 2 || sleep 30; echo done'")  # fmt: skip
    jobs = {
        "excl": submit(cluster, f"--exclusive -o excl-%j.out --wrap {script}"),
        "range": submit(cluster, f"-N1-2 -c2 -o range-%j.out --wrap {script}"),
        "plain": submit(cluster, f"-c2 -o plain-%j.out --wrap {script}"),
    }
    for job in jobs.values():
        wait_running(cluster, job)
    placed = {kind: nodes_of(cluster, job) for kind, job in jobs.items()}
    assert all(placed.values()), placed  # every job is still running when its nodes get notices
    for node in {n for nodes in placed.values() for n in nodes}:
        interrupt(cluster, node)
    reasons: set[str] = set()

    def all_ended() -> bool:
        reasons.update(head(cluster, "squeue -h -t PENDING -o %r").split())
        return all(ended(cluster, j) is not None for j in jobs.values())

    wait_for("every job to end", all_ended, timeout=180, explain=lambda: situation(cluster))
    assert "BadConstraints" not in reasons
    for kind, job in jobs.items():
        assert ended(cluster, job)["action"] == "completed", kind  # type: ignore[index]
        out = head(cluster, f"cat {HOME}/{kind}-{job}.out")
        # From scratch once per requeue: more than one when a job restarted on a node whose
        # notice was still to come (this test interrupts one node after the other).
        requeues = [e for e in spot_events(cluster) if e["action"] == "requeued"
                    and e.get("job") == job]  # fmt: skip
        assert requeues and out.split() == ["run", str(len(requeues)), "done"], (kind, out)


def test_a_job_past_its_restart_limit_fails_with_the_reason(cluster: Clusterkit) -> None:
    job = submit(cluster, "-c2 --requeue --open-mode=append -o limit.out --wrap "
                 "'exec ck-run --max-restarts 1 -- sleep 60'")  # fmt: skip
    for _ in range(2):
        node = wait_running(cluster, job)
        interrupt(cluster, node)
        wait_for("the job to leave its node", lambda n=node: running_on(cluster, job) != n)  # type: ignore[misc]
    last = wait_ended(cluster, job)
    assert last["action"] == "failed" and last["state"] == "FAILED"
    assert "restarted 2 times, more than the limit of 1" in last["comment"]
    assert "restarted 2 times, more than the limit of 1" in head(cluster, f"cat {HOME}/limit.out")


def running_tasks(ck: Clusterkit, array: str) -> dict[str, str]:
    """Task id -> node, of the array's tasks running now."""
    out = head(ck, f"squeue -h -t RUNNING -j {array} -o '%i %N'")
    return {line.split()[0].split("_")[1]: line.split()[1] for line in out.splitlines()}


def test_only_the_array_tasks_on_the_interrupted_node_are_requeued(cluster: Clusterkit) -> None:
    # 1-CPU tasks on 2-CPU nodes: two tasks share a node, and only that node is interrupted.
    # Running still when the notice's requeue comes (8 s), then short after it.
    script = "echo run ${SLURM_RESTART_COUNT:-0}; [ ${SLURM_RESTART_COUNT:-0} -gt 0 ] || sleep 25"
    array = submit(cluster, f"-c1 --array=0-3 -o arr-%a.out --wrap '{script}'")
    wait_for("all four tasks running", lambda: len(running_tasks(cluster, array)) == 4)
    where = running_tasks(cluster, array)
    on_node = {task for task, node in where.items() if node == where["1"]}
    interrupt(cluster, where["1"])
    wait_for("every task to finish", lambda: not head(cluster, f"squeue -h -j {array}").strip(),
             timeout=240)  # fmt: skip
    runs = {t: head(cluster, f"cat {HOME}/arr-{t}.out").split() for t in "0123"}
    assert runs == {t: ["run", "1" if t in on_node else "0"] for t in "0123"}, where
    requeued = [e["job"] for e in spot_events(cluster) if e["action"] == "requeued"]
    assert sorted(j for j in requeued if j.startswith(f"{array}_")) == sorted(
        f"{array}_{t}" for t in on_node
    )


def powering_up(ck: Clusterkit) -> list[str]:
    out = head(ck, "sinfo -h -N -o '%N %t'")
    return [line.split()[0] for line in out.splitlines() if line.split()[1].endswith("#")]


def test_notices_for_an_idle_node_and_a_node_powering_up(cluster: Clusterkit) -> None:
    # An idle static node: drained, its instance ends, a fresh one is back in service.
    interrupt(cluster, "compute-st-1")
    wait_for("the notice handled", lambda: has_event(cluster, "handled", node="compute-st-1"))
    # One line per partition the node is in.
    states = "sinfo -h -N -n compute-st-1 -o %t"
    wait_for("the static node back in service",
             lambda: set(head(cluster, states).split()) == {"idle"}, timeout=120)  # fmt: skip
    # A dynamic node still booting when the notice comes: its job still runs, elsewhere or
    # on a fresh instance, and the node goes back to rest.
    cluster.run("cloud", NAME, "--boot-delay", "5")
    head(cluster, "scontrol update nodename=compute-st-1 state=DRAIN reason=keep-free")
    try:
        job = submit(cluster, "-c2 -o boot.out --wrap 'echo run $SLURM_RESTART_COUNT'")
        wait_for("a node powering up", lambda: bool(powering_up(cluster)), timeout=60)
        interrupt(cluster, powering_up(cluster)[0])
        wait_for("the job done", lambda: not head(cluster, f"squeue -h -j {job}").strip(),
                 timeout=180)  # fmt: skip
    finally:
        cluster.run("cloud", NAME, "--boot-delay", "0")
        # Only to put the node back for the next test: a clean-up failure must not hide the
        # test's own (Slurm refuses RESUME of a node no longer drained).
        head(cluster, "scontrol update nodename=compute-st-1 state=RESUME 2>/dev/null || true")
    assert head(cluster, f"cat {HOME}/boot.out").split()[0] == "run"
    wait_for("dynamic nodes at rest", lambda: set(
        head(cluster, "sinfo -h -N -n compute-dy-[1-3] -o %t").split()) == {"idle~"})  # fmt: skip
