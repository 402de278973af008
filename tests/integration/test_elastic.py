"""Elastic scaling on a real local cluster: dynamic nodes powered up for jobs and released.

One cluster serves the whole module (CI time is precious): no static computes, four dynamic
ones of two instance types, short power-saving times. Tests run in file order and each
leaves the cluster at rest (every dynamic node powered down) for the next.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from clusterkit.providers.local import net
from clusterkit.providers.local.node import stop_nodes
from tests.driver import Clusterkit
from tests.local_residue import residue

NAME = "elastic"
DYNAMIC = [f"compute-dy-{i}" for i in range(1, 5)]
SUSPEND_TIME = 8
SPEC = {
    "name": NAME,
    "groups": [{
        "name": "compute", "min": 0, "max": 4, "cpus": 2,
        "instance_types": ["c7i.2xlarge", "c6i.2xlarge"],
    }],
    "slurm": {
        "suspend_time": SUSPEND_TIME, "suspend_timeout": 5, "resume_timeout": 60,
        "resume_retry_seconds": 3,
    },
}  # fmt: skip


@pytest.fixture(scope="module")
def cluster(ck: Clusterkit) -> Iterator[Clusterkit]:
    path = ck.write_spec(SPEC)
    ck.run("up", "-f", str(path), timeout=600)
    yield ck
    ck.run("down", NAME)
    assert residue(ck, NAME) == []


def wait_for(what: str, check: Callable[[], bool], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def compute_netns() -> list[str]:
    return [ns for ns in net.cluster_netns(NAME) if "-dy-" in ns or "-st-" in ns]


def head(ck: Clusterkit, command: str, user: str = "root") -> str:
    return ck.run("ssh", "-u", user, NAME, "--", command, timeout=300).stdout


def events(ck: Clusterkit) -> list[dict[str, Any]]:
    text = head(ck, "cat /var/log/clusterkit/events.jsonl")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def at_rest(ck: Clusterkit) -> bool:
    states = head(ck, "sinfo -h -N -p compute -o %t").split()
    return not compute_netns() and len(states) == 4 and all(s == "idle~" for s in states)


def submit(ck: Clusterkit, args: str) -> int:
    out = head(ck, f"sbatch --parsable {args}", user="ckuser")
    return int(out.strip().split(";")[0])


def job_state(ck: Clusterkit, job: int) -> str:
    return head(ck, f"scontrol show job {job} | grep -o 'JobState=[A-Z]*' || true").strip()


def test_nothing_runs_at_rest(cluster: Clusterkit) -> None:
    assert compute_netns() == []
    st = cluster.status(NAME)
    dynamic = [n for n in st["nodes"] if n["kind"] == "dynamic"]
    assert [n["name"] for n in dynamic] == DYNAMIC
    assert {(n["state"], n["power"]) for n in dynamic} == {("off", "off")}


def test_a_three_node_job_powers_up_exactly_three_and_they_go_again(cluster: Clusterkit) -> None:
    out = head(cluster, "sbatch --wait -N3 -o /shared/home/ckuser/three.out "
                        "--wrap 'srun hostname | sort'", user="ckuser")  # fmt: skip
    assert "Submitted batch job" in out
    hosts = head(cluster, "cat /shared/home/ckuser/three.out").split()
    assert len(set(hosts)) == 3 and all(h in DYNAMIC for h in hosts)
    assert len(compute_netns()) == 3  # exactly the job's nodes, still up before SuspendTime
    ended = time.monotonic()
    wait_for("idle nodes released", lambda: not compute_netns(), timeout=SUSPEND_TIME + 30)
    assert time.monotonic() - ended >= SUSPEND_TIME - 2  # not before the suspend time
    wait_for("nodes powered down", lambda: at_rest(cluster))
    suspended = [
        e for e in events(cluster) if e["source"] == "suspend" and e["action"] == "terminated"
    ]
    assert sorted(n for e in suspended for n in e["nodes"]) == sorted(hosts)


def test_a_capacity_error_falls_back_to_the_next_instance_type(cluster: Clusterkit) -> None:
    cluster.run("cloud", NAME, "--capacity", "c7i.2xlarge=0")
    try:
        head(cluster, "sbatch --wait -N1 --wrap true", user="ckuser")
    finally:
        cluster.run("cloud", NAME, "--capacity", "c7i.2xlarge=unlimited")
    launches = [e for e in events(cluster) if e["action"] == "launch"][-2:]
    assert [(e["instance_type"], e["error"]) for e in launches] == [
        ("c7i.2xlarge", "InsufficientInstanceCapacity"),
        ("c6i.2xlarge", None),
    ]
    wait_for("nodes powered down", lambda: at_rest(cluster))


def test_a_job_whose_launch_fails_runs_once_capacity_returns(cluster: Clusterkit) -> None:
    # Both instance types fail once each: the node is failed with the code, its job requeued.
    cluster.run("cloud", NAME, "--fail", "2", "--code", "InsufficientInstanceCapacity")
    job = submit(cluster, "-N1 --wrap 'echo ran'")
    wait_for("the failed resume", lambda: any(e["action"] == "failed" for e in events(cluster)))
    failed = [e for e in events(cluster) if e["action"] == "failed"][-1]
    assert failed["reason"] == "(Code:InsufficientInstanceCapacity) resume failed"
    wait_for("the job to finish", lambda: job_state(cluster, job) in ("", "JobState=COMPLETED"))
    restarts = head(cluster, f"scontrol show job {job} | grep -o 'Restarts=[0-9]*' || true")
    assert restarts.strip() in ("", "Restarts=1")  # purged already, or requeued once
    wait_for("nodes powered down", lambda: at_rest(cluster))


def test_an_array_needing_more_nodes_than_max_runs_within_max(cluster: Clusterkit) -> None:
    job = submit(cluster, "--array=0-9 -N1 --exclusive -o /dev/null --wrap 'sleep 2'")
    most = 0
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        most = max(most, len(compute_netns()))
        if not head(cluster, f"squeue -h -j {job}").strip():
            break
        time.sleep(0.5)
    else:
        raise AssertionError("the array did not finish")
    assert 1 <= most <= 4
    wait_for("nodes powered down", lambda: at_rest(cluster), timeout=120)


def test_a_killed_dynamic_node_is_replaced_and_its_job_requeued(cluster: Clusterkit) -> None:
    # The first run outlasts the test's own steps before the kill (a 5 s job could end on its
    # own first, under load, and then no node failure met it); the run after the requeue ends.
    script = 'echo start $SLURM_RESTART_COUNT; [ "${SLURM_RESTART_COUNT:-0}" -gt 0 ] || sleep 120'
    job = submit(cluster, f"-N1 -o /shared/home/ckuser/killed-%j.out --wrap '{script}'")
    wait_for("the job to run", lambda: job_state(cluster, job) == "JobState=RUNNING")
    node = head(cluster, f"squeue -h -j {job} -o %N").strip()
    first = cluster.status(NAME)
    old_id = next(n["instance_id"] for n in first["nodes"] if n["name"] == node)
    before = len(failures(cluster, node))  # the node may have been failed before (a resume)
    stop_nodes([net.netns_path(NAME, node)])  # the instance dies under its job
    wait_for("the reconciler to fail the node", lambda: len(failures(cluster, node)) > before)
    fail = failures(cluster, node)[before]
    assert fail["reason"] == "(Code:InstanceLost) instance gone" and job in fail["jobs"]
    wait_for("the job to finish", lambda: job_state(cluster, job) in ("", "JobState=COMPLETED"),
             timeout=120)  # fmt: skip
    out = head(cluster, f"cat /shared/home/ckuser/killed-{job}.out")
    log = "/var/log/slurm/slurmctld.log"
    history = head(cluster, f"grep -h 'JobId={job}\\|{node}' {log} | tail -40")
    assert "start 1" in out, (  # it ran again after its requeue
        f"{out}\nevents:\n" + "\n".join(json.dumps(e) for e in events(cluster)[-25:])
        + f"\nslurmctld:\n{history}"
    )  # fmt: skip
    later = [
        e for e in events(cluster)
        if e["action"] == "launch" and e["time"] > fail["time"] and e["instances"]
    ]  # fmt: skip
    assert later and old_id not in later[-1]["instances"].values()  # fresh capacity
    wait_for("nodes powered down", lambda: at_rest(cluster), timeout=120)


def failures(ck: Clusterkit, node: str) -> list[dict[str, Any]]:
    return [
        e for e in events(ck)
        if e["source"] == "reconciler" and e["action"] == "fail" and node in e["nodes"]
    ]  # fmt: skip
