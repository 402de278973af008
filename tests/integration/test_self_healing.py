"""Single faults on a live cluster (head + 2) with jobs running: each daemon, mount or the
supervisor itself killed, the local cloud service killed, a compute node vanished; each is
found and repaired without anyone asking, and every job ends with its whole answer. A daemon
restarted in place keeps its node's jobs; a mount that died under a job, or a node that
vanished, has that job requeued, to run again. The tests share one cluster, in file order."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from clusterkit.providers.local import cloud, net
from clusterkit.providers.local.node import kill_pids, stop_nodes
from tests.driver import Clusterkit

NAME = "heal"
USER = "ckuser"
STEPS = 10  # seconds a job counts, one line a second
REPAIRED_WITHIN = 10.0  # the detection target; repairs here take about a second


PROTECT_AFTER = 3  # failed repairs of the group, within the window, that protect it


@pytest.fixture(scope="module")
def cluster(ck: Clusterkit) -> Clusterkit:
    protected_mode = {"failures": PROTECT_AFTER, "window_seconds": 120}
    ck.run("up", "-f", str(ck.spec(NAME, 2, protected_mode=protected_mode)), timeout=600)
    return ck


def on(ck: Clusterkit, node: str, command: str) -> str:
    return ck.run("ssh", NAME, node, "--", command, timeout=60).stdout


def as_user(ck: Clusterkit, command: str) -> str:
    return ck.run("ssh", NAME, "-u", USER, "--", f"cd ~ && {command}", timeout=60).stdout


def submit(ck: Clusterkit, node: str, out: str, steps: int = STEPS) -> str:
    """A job on ``node`` that counts to ``steps`` into ``out`` (from scratch when it runs
    again)."""
    count = f"for i in $(seq {steps}); do echo $i >> {out}; sleep 1; done"
    script = f"rm -f {out}; {count}; echo done >> {out}"
    text = as_user(ck, f"sbatch --parsable -w {node} -o /dev/null --wrap '{script}'")
    job = text.strip().split(";")[0]
    wait_for(f"job {job} to run",
             lambda: as_user(ck, f"squeue -h -j {job} -o %T").strip() == "RUNNING")  # fmt: skip
    time.sleep(2)  # a line or two written, and the controller's state saved
    return job


def wait_for(what: str, done: Callable[[], bool], timeout: float = 60.0) -> float:
    """Seconds until ``done()``; fails naming ``what`` after ``timeout``."""
    start = time.monotonic()
    while not done():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)
    return time.monotonic() - start


def gone(ck: Clusterkit, job: str) -> bool:
    """Whether ``job`` left the queue (squeue fails on a job Slurm already forgot)."""
    return as_user(ck, f"squeue -h -j {job} 2>/dev/null || true").strip() == ""


def finished(ck: Clusterkit, job: str, out: str) -> str:
    wait_for(f"job {job} to end", lambda: gone(ck, job), timeout=120)
    return as_user(ck, f"cat {out}")


def whole(text: str, steps: int = STEPS) -> bool:
    return text.split() == [*map(str, range(1, steps + 1)), "done"]


def supervisor_events(ck: Clusterkit, action: str) -> list[dict[str, Any]]:
    text = ck.run("events", NAME, "-o", "json").stdout  # one event per line
    listed = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [e for e in listed if e["source"] == "supervisor" and e["action"] == action]


def alive(ck: Clusterkit, node: str, pattern: str) -> bool:
    """A process on ``node`` whose command line starts like ``^pattern``, or is named so."""
    how = "-f" if pattern.startswith("^") else "-x"
    probe = f"pgrep {how} '{pattern}' >/dev/null && echo yes"
    # No answer at all (sshd itself down) is not alive either.
    return ck.run("ssh", NAME, node, "--", probe, check=False).stdout.strip() == "yes"


# What is killed, where, one after another (pkill -f patterns anchored at the command's
# start, so the shell that runs pkill never matches itself).
DAEMONS = [
    ("compute-st-1", "slurmd", "^/usr/sbin/slurmd "),
    ("compute-st-2", "sshd", "^sshd: .*listener"),  # the listener's own title
    ("compute-st-1", "munged", "^/usr/sbin/munged"),
]


def test_killed_daemons_come_back_in_place_and_their_nodes_jobs_finish(
    cluster: Clusterkit,
) -> None:
    nodes = sorted({node for node, _, _ in DAEMONS})
    jobs = {node: submit(cluster, node, f"heal-daemons-{node}.out") for node in nodes}
    before = len(supervisor_events(cluster, "restarted"))
    for node, daemon, pattern in DAEMONS:
        on(cluster, node, f"pkill -9 -f '{pattern}'")

        def back(node: str = node, pattern: str = pattern) -> bool:
            return alive(cluster, node, pattern)

        wait_for(f"{daemon} on {node} to run again", back, REPAIRED_WITHIN)
    for node, job in jobs.items():
        text = finished(cluster, job, f"heal-daemons-{node}.out")
        assert whole(text), f"job {job} on {node}, its daemons restarted under it:\n{text}"
    restarted = {
        (e["service"], e["node"]) for e in supervisor_events(cluster, "restarted")[before:]
    }
    assert {(daemon, node) for node, daemon, _ in DAEMONS} <= restarted
    requeued = {e.get("job") for e in supervisor_events(cluster, "requeued")}
    assert not requeued & set(jobs.values())  # in place: nothing was run again


def test_a_dead_shared_mount_is_mounted_again_and_its_job_requeued(cluster: Clusterkit) -> None:
    node = "compute-st-2"
    out = "heal-mount.out"
    job = submit(cluster, node, out)
    on(cluster, node, "pkill -9 -f '^sshfs .* /shared$'")
    probe = "ls /shared/clusterkit >/dev/null && mountpoint -q /shared/home/ckuser && echo ok"
    wait_for(
        "/shared and the home beneath it to answer again",
        lambda: on(cluster, node, f"{probe} || true").strip() == "ok",
        REPAIRED_WITHIN,
    )
    text = finished(cluster, job, out)
    assert whole(text), f"job {job} after /shared was mounted again:\n{text}"
    requeued = [e for e in supervisor_events(cluster, "requeued") if e["job"] == job]
    assert requeued and requeued[0]["node"] == node


def test_killed_head_daemons_come_back_and_keep_every_job(cluster: Clusterkit) -> None:
    out = "heal-head.out"
    # Slurm saves its state up to 5 s after a change: a controller killed sooner after a job
    # starts forgets that (the reconciler then releases the job it held, and it runs again;
    # bench/faults.py meets that case). The kill here comes later, as after most crashes.
    job = submit(cluster, "compute-st-1", out, steps=2 * STEPS)
    mark = "heal-head-queued.out"
    queued = as_user(cluster, f"rm -f {mark}; sbatch --parsable --hold -o /dev/null "
                              f"--wrap 'echo ran > {mark}'").strip()  # fmt: skip
    time.sleep(6)
    head = f"{NAME}-head"
    for daemon in ("slurmctld", "ck-reconciler"):
        on(cluster, head, f"pkill -9 -x {daemon}")

        def back(daemon: str = daemon) -> bool:
            return alive(cluster, head, daemon)

        wait_for(f"{daemon} to run again", back, REPAIRED_WITHIN)
        wait_for("slurmctld to answer", lambda: "UP" in on(cluster, head, "scontrol ping || true"))
    assert whole(finished(cluster, job, out), 2 * STEPS)
    as_user(cluster, f"scontrol release {queued}")  # kept through the restart: it runs now
    wait_for(f"the queued job {queued} to run and end", lambda: gone(cluster, queued))
    assert as_user(cluster, f"cat {mark}").strip() == "ran"  # it was kept, not lost


def test_the_supervisor_itself_is_restarted_by_the_nodes_init(cluster: Clusterkit) -> None:
    for node in (f"{NAME}-head", "compute-st-1"):
        on(cluster, node, "pkill -9 -x ck-supervise")

        def back(node: str = node) -> bool:
            return alive(cluster, node, "ck-supervise")

        wait_for(f"ck-supervise on {node}", back, REPAIRED_WITHIN)
    # The new supervisor does the work of the old one.
    on(cluster, "compute-st-1", "pkill -9 -x slurmd")
    wait_for("slurmd again", lambda: alive(cluster, "compute-st-1", "^/usr/sbin/slurmd "),
             REPAIRED_WITHIN)  # fmt: skip


def test_the_local_cloud_service_is_restarted_by_its_keeper(cluster: Clusterkit) -> None:
    before = cloud.server_pids(NAME)
    assert len(before) == 1 and cloud.answers(NAME)
    kill_pids(before)

    def serving_again() -> bool:  # a new server (the old one may still answer as it dies)
        now = cloud.server_pids(NAME)
        return bool(now) and now != before and cloud.answers(NAME)

    wait_for("a new cloud service to answer", serving_again, REPAIRED_WITHIN)
    # It serves what it kept: the cluster's instances, as before.
    assert sorted(i.node for i in cloud.client(NAME).describe()) == ["compute-st-1", "compute-st-2"]
    restarted = [e for e in json.loads(f"[{','.join(_host_events(cluster))}]")
                 if e["action"] == "service restarted"]  # fmt: skip
    assert restarted and restarted[-1]["source"] == "cloud"


def test_a_vanished_compute_is_replaced_and_its_job_requeued(cluster: Clusterkit) -> None:
    node = "compute-st-2"
    out = "heal-vanish.out"
    job = submit(cluster, node, out)
    old = next(n["instance_id"] for n in cluster.status(NAME)["nodes"] if n["name"] == node)
    stop_nodes([net.netns_path(NAME, node)])  # the machine is gone, with its job's processes
    took = wait_for(f"{node} to be replaced", lambda: _replaced(cluster, node, old), 60)
    text = finished(cluster, job, out)
    assert whole(text), f"job {job} after {node} was replaced in {took:.1f} s:\n{text}"


def test_a_group_whose_repairs_keep_failing_is_protected_until_lifted(
    cluster: Clusterkit,
) -> None:
    node = "compute-st-1"
    head = f"{NAME}-head"
    cluster.run("cloud", NAME, "--fail", "1000")  # every launch refused from now on
    try:
        stop_nodes([net.netns_path(NAME, node)])
        wait_for("the group to be protected", lambda: bool(_reconciler(cluster, "protected")))
        (event,) = _reconciler(cluster, "protected")
        assert event["group"] == "compute" and event["failures"] == PROTECT_AFTER
        for member in ("compute-st-1", "compute-st-2"):  # drained with the reason
            reason = on(cluster, head, f"sinfo -h -N -n {member} -o %E").strip()
            assert reason.startswith("(Code:Protected)"), f"{member}: {reason!r}"
        st = cluster.status(NAME)
        assert st["status"] == "degraded"
        assert any(p.startswith("group compute is in protected mode") for p in st["problems"])
        assert "clusterkit unprotect heal compute" in cluster.run("status", NAME).stdout
        tried = len(_reconciler(cluster, "replace failed"))
        time.sleep(10)  # three passes of the reconciler: it no longer tries
        assert len(_reconciler(cluster, "replace failed")) == tried
    finally:
        cluster.run("cloud", NAME, "--fail", "0")
    lifted = cluster.run("unprotect", NAME).stdout
    history = [e for e in _all_events(cluster) if e["source"] == "reconciler"]
    assert "protected mode lifted: compute" in lifted, f"{lifted}\n" + "\n".join(
        json.dumps(e) for e in history[-20:])  # fmt: skip
    assert _reconciler(cluster, "lifted")[-1]["group"] == "compute"

    def ready() -> bool:
        st = cluster.status(NAME)
        return st["status"] == "ready" and all(n["state"] == "running" for n in st["nodes"])

    wait_for(f"{node} replaced and the cluster ready again", ready)
    assert "no group was protected" in cluster.run("unprotect", NAME).stdout


def test_up_right_after_the_controller_died_repairs_and_verifies(cluster: Clusterkit) -> None:
    """The nodes are UNKNOWN to a controller that just started: up waits for them to
    register before it verifies, instead of failing on what is about to pass."""
    on(cluster, f"{NAME}-head", "pkill -9 -x slurmctld")
    done = cluster.run("up", "-f", str(cluster.home / f"{NAME}.yaml"), timeout=600)
    assert "ready" in done.stdout + done.stderr
    st = cluster.status(NAME)
    assert st["status"] == "ready", st["problems"]


def _all_events(ck: Clusterkit) -> list[dict[str, Any]]:
    text = ck.run("events", NAME, "-o", "json").stdout
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _reconciler(ck: Clusterkit, action: str) -> list[dict[str, Any]]:
    return [e for e in _all_events(ck) if e["source"] == "reconciler" and e["action"] == action]


def _host_events(ck: Clusterkit) -> list[str]:
    path = ck.cluster_dir(NAME) / "cloud" / "events.jsonl"
    return [line for line in path.read_text().splitlines() if line.strip()]


def _replaced(ck: Clusterkit, node: str, old: str) -> bool:
    mine = next(n for n in ck.status(NAME)["nodes"] if n["name"] == node)
    return bool(mine["instance_id"]) and mine["instance_id"] != old and mine["state"] == "running"
