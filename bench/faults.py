"""Benchmark of self-healing: one fault at a time on a live cluster with a job running.

    .venv/bin/python bench/faults.py [--json PATH]

A configured local cluster (head + 2). Per fault: a job that counts to STEPS, one line a
second, runs on the node hit; the fault is injected (a daemon, a mount or the supervisor
killed, a node's namespaces ended, the cloud service killed); then measured:

- detect: fault -> the repair began (the repairing event's time less its duration);
- repair: fault -> the thing killed is alive again (polled from the host; a probe over ssh
  takes about 0.8 s, so repairs read as at least that);
- whether the job was requeued, whether it ended with its whole answer (lost if not), and
  the work thrown away (seconds of counting done again after a requeue).

Baseline, measured in the same run: how long Slurm alone takes to notice a dead slurmd
(the node NOT_RESPONDING in sinfo) on a node whose supervisor is stopped. Targets (from the
self-healing issue): detect <= 10 s, repair <= 30 s, 0 jobs lost.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from common import Clusterkit, local_cluster, need_root, save_results, table, verdict

from clusterkit.nodetools.spot import parse_time
from clusterkit.providers.local import cloud, net
from clusterkit.providers.local.node import kill_pids, stop_nodes

NAME = "ckbenchfault"
USER = "ckuser"
STEPS = 20
SPEC = {"name": NAME, "groups": [{"name": "compute", "min": 2, "max": 2}]}
HEAD = f"{NAME}-head"
DETECT_TARGET_S, REPAIR_TARGET_S = 10.0, 30.0


@dataclass
class Fault:
    name: str
    node: str  # where it strikes
    inject: Callable[[Clusterkit], None]
    healthy: Callable[[Clusterkit], bool]

    @property
    def job_node(self) -> str:
        """Where the job runs: the node hit, or a compute for a fault of the head's."""
        return "compute-st-1" if self.node == HEAD else self.node


@dataclass
class Outcome:
    fault: str
    detect_s: float | None
    repair_s: float | None
    requeued: bool
    whole: bool
    work_lost_s: float


@dataclass
class Results:
    outcomes: list[Outcome] = field(default_factory=list)
    slurm_notices_dead_slurmd_s: float | None = None


def on(ck: Clusterkit, node: str, command: str, timeout: float = 60) -> str:
    return ck.run("ssh", NAME, node, "--", command, check=False, timeout=timeout).stdout


def as_user(ck: Clusterkit, command: str) -> str:
    return ck.run("ssh", NAME, "-u", USER, "--", f"cd ~ && {command}", check=False).stdout


def running(ck: Clusterkit, node: str, how: str, pattern: str) -> bool:
    return on(ck, node, f"pgrep {how} '{pattern}' >/dev/null && echo yes").strip() == "yes"


def kill(node: str, how: str, pattern: str, label: str) -> Fault:
    def inject(ck: Clusterkit) -> None:
        on(ck, node, f"pkill -9 {how} '{pattern}'")

    return Fault(f"{label} on {node}", node, inject, lambda ck: running(ck, node, how, pattern))


def shared_mount(node: str) -> Fault:
    probe = "ls /shared/clusterkit >/dev/null && mountpoint -q /shared/home/ckuser && echo ok"

    def inject(ck: Clusterkit) -> None:
        on(ck, node, "pkill -9 -f '^sshfs .* /shared$'")

    return Fault(f"sshfs of /shared on {node}", node, inject,
                 lambda ck: on(ck, node, f"{probe} || true").strip() == "ok")  # fmt: skip


def vanish(node: str) -> Fault:
    def inject(ck: Clusterkit) -> None:
        stop_nodes([net.netns_path(NAME, node)])

    def healthy(ck: Clusterkit) -> bool:
        line = on(ck, HEAD, f"sinfo -h -N -n {node} -p compute -o %t").strip()
        return line in ("idle", "mix", "alloc")

    return Fault(f"{node} vanishes (namespaces ended)", node, inject, healthy)


def cloud_service() -> Fault:
    def inject(ck: Clusterkit) -> None:
        kill_pids(cloud.server_pids(NAME))

    def healthy(ck: Clusterkit) -> bool:
        return cloud.answers(NAME)

    return Fault("the local cloud service", "compute-st-1", inject, healthy)


FAULTS: list[Callable[[], Fault]] = [
    lambda: kill("compute-st-1", "-f", "^/usr/sbin/slurmd ", "slurmd"),
    lambda: kill("compute-st-1", "-x", "munged", "munged"),
    lambda: kill("compute-st-2", "-f", "^sshd: .*listener", "sshd"),
    lambda: shared_mount("compute-st-2"),
    lambda: kill(HEAD, "-x", "slurmctld", "slurmctld"),
    lambda: kill(HEAD, "-x", "ck-reconciler", "the reconciler"),
    lambda: kill("compute-st-1", "-x", "ck-supervise", "the supervisor"),
    lambda: kill(HEAD, "-x", "ck-supervise", "the supervisor"),
    cloud_service,
    lambda: vanish("compute-st-2"),
]


def submit(ck: Clusterkit, node: str, out: str) -> str:
    count = f"for i in $(seq {STEPS}); do echo $i >> {out}; sleep 1; done"
    job = as_user(ck, f"sbatch --parsable -w {node} -o /dev/null "
                      f"--wrap 'rm -f {out}; {count}; echo done >> {out}'").strip()  # fmt: skip
    wait(lambda: as_user(ck, f"squeue -h -j {job} -o %T").strip() == "RUNNING", 60)
    time.sleep(6)  # some work done, and the controller's state saved
    return job


def wait(done: Callable[[], bool], timeout: float) -> float | None:
    start = time.monotonic()
    while not done():
        if time.monotonic() - start > timeout:
            return None
        time.sleep(0.1)
    return time.monotonic() - start


def events(ck: Clusterkit) -> list[dict[str, object]]:
    text = ck.run("events", NAME, "-o", "json", check=False).stdout
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def repairs_since(ck: Clusterkit, t0: float) -> list[float]:
    """When each repair recorded since ``t0`` began: a restart's or a replacement's event time
    less its duration; a restarted supervisor's or cloud service's own first event."""
    began = []
    for e in events(ck):
        action, at = e.get("action"), parse_time(str(e["time"]))
        if action in ("restarted", "replace", "fail") and "seconds" in e:
            at -= float(str(e["seconds"]))
        elif not (
            action == "service restarted" or (action, e.get("source")) == ("started", "supervisor")
        ):
            continue
        if at >= t0:
            began.append(at)
    return began


def run_fault(ck: Clusterkit, fault: Fault, index: int) -> Outcome:
    out = f"fault-{index}.out"
    job = submit(ck, fault.job_node, out)
    done_before = len(as_user(ck, f"cat {out}").split())
    fault.inject(ck)  # over ssh for most: the kill is the last thing it does
    t0 = time.time()
    repair = wait(lambda: fault.healthy(ck), 120)
    gone = f"squeue -h -j {job} 2>/dev/null || true"
    wait(lambda: as_user(ck, gone).strip() == "", 180)
    text = as_user(ck, f"cat {out}").split()
    whole = text == [*map(str, range(1, STEPS + 1)), "done"]
    requeued = any(_mentions(e, job) for e in events(ck))
    began = repairs_since(ck, t0 - 2.0)  # a repair may begin before the ssh returned
    detect = max(0.0, min(began) - t0) if began else None
    return Outcome(fault.name, detect, repair, requeued, whole, done_before if requeued else 0)


def _mentions(event: dict[str, object], job: str) -> bool:
    """Whether ``event`` requeued ``job`` (a supervisor's requeue, a reconciler's action)."""
    if event.get("action") == "requeued" and str(event.get("job")) == job:
        return True
    jobs = event.get("jobs")
    return (
        event.get("source") == "reconciler"
        and isinstance(jobs, list)
        and (job in [str(j) for j in jobs])
    )


def slurm_alone(ck: Clusterkit) -> float | None:
    """Seconds until Slurm itself marks a node whose slurmd died NOT_RESPONDING (its
    supervisor stopped first, so nothing repairs it); slurmd is given back afterwards."""
    node = "compute-st-1"
    argv = "/etc/clusterkit/services/supervisor.argv"
    on(
        ck,
        node,
        f"mv {argv} {argv}.off; pkill -9 -x ck-supervise; pkill -9 -f '^/usr/sbin/slurmd '",
    )
    took = wait(lambda: "*" in on(ck, HEAD, f"sinfo -h -N -n {node} -p compute -o %t"), 400)
    on(ck, node, f"mv {argv}.off {argv}")  # the node's init starts the supervisor again
    wait(lambda: "*" not in on(ck, HEAD, f"sinfo -h -N -n {node} -p compute -o %t"), 120)
    return took


def report(r: Results) -> bool:
    base = r.slurm_notices_dead_slurmd_s
    rows = [["fault", "detect", "repair", "requeued", "job", "work lost", "verdict"]]
    ok = True
    for o in r.outcomes:
        detected = o.detect_s is not None and o.detect_s <= DETECT_TARGET_S
        good = detected and o.repair_s is not None and o.repair_s <= REPAIR_TARGET_S and o.whole
        ok &= good
        rows.append([
            o.fault, "-" if o.detect_s is None else f"{o.detect_s:.1f} s",
            "-" if o.repair_s is None else f"{o.repair_s:.1f} s", "yes" if o.requeued else "no",
            "whole" if o.whole else "LOST", f"{o.work_lost_s:.0f} s", verdict(good),
        ])  # fmt: skip
    print(table(rows))
    detects = [o.detect_s for o in r.outcomes if o.detect_s is not None]
    if base and detects:
        worst = max(detects)
        print(f"\nworst detect {worst:.1f} s against Slurm alone noticing a dead slurmd in "
              f"{base:.1f} s: {base / worst:.0f}x sooner")  # fmt: skip
    lost = sum(not o.whole for o in r.outcomes)
    print(f"jobs lost: {lost} (target 0)")
    return ok and lost == 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--no-baseline", action="store_true", help="skip Slurm alone (~60 s)")
    args = parser.parse_args()
    if not need_root("faults"):
        return 2
    results = Results()
    with local_cluster(SPEC, "ck-bench-faults-") as home:
        ck = Clusterkit(home)
        for index, make in enumerate(FAULTS):
            fault = make()
            outcome = run_fault(ck, fault, index)
            print(f"  {outcome}", file=sys.stderr)
            results.outcomes.append(outcome)
        if not args.no_baseline:
            results.slurm_notices_dead_slurmd_s = slurm_alone(ck)
    save_results(args.json, results)
    return 0 if report(results) else 1


if __name__ == "__main__":
    sys.exit(main())
