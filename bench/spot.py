"""Benchmark of Spot interruptions on a local cluster: a chaos run of checkpointing jobs.

    .venv/bin/python bench/spot.py [--jobs 20] [--seed 1] [--json PATH]

One cluster (a static compute and five dynamic ones, 2 CPUs each) runs N copies of
``examples/jobs/hashchain.py`` under ``ck-run`` twice in the same run:

- the baseline: no interruption (makespan);
- the chaos run: while jobs remain, every 6 to 14 s (seeded) a random node running one of
  them gets a notice with an 8 s lead time.

Figures, from the cluster's own events (``clusterkit spot-report``), against the targets of
the Spot-interruption issue: notice -> node drained (target <= 3 s), notices whose jobs were
all requeued before the instance ended (target: all), every job's answer exact, total work
lost and restarts, and the chaos run's makespan against the baseline's.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import ck, local_cluster, need_root, save_results, table, verdict

NAME = "ckbenchspot"
LEAD = 8
CHECKPOINT_EVERY = 4
STEPS = 150
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "jobs" / "hashchain.py"
HOME = "/shared/home/ckuser"
SPEC = {
    "name": NAME,
    "groups": [{"name": "compute", "min": 1, "max": 6, "cpus": 2}],
    "slurm": {"suspend_time": 30, "suspend_timeout": 5, "resume_timeout": 60,
              "max_restarts": 20},
    "spot": {"grace_seconds": 10},
    "local": {"spot_notice_seconds": LEAD},
}  # fmt: skip


def on_head(home: Path, script: str, user: str = "root") -> str:
    return ck(home, "ssh", "-u", user, NAME, "--", script)


def submit_all(home: Path, tag: str, jobs: int) -> list[str]:
    command = (f"exec ck-run --checkpoint-every {CHECKPOINT_EVERY} -- "
               f"python3 hashchain.py --steps {STEPS} --seed {tag}-$SLURM_ARRAY_TASK_ID "
               "--pause 0.3")  # fmt: skip
    sbatch = (f"sbatch --parsable -c2 --requeue --open-mode=append --array=0-{jobs - 1} "
              f"-o {tag}-%a.out --wrap '{command}'")  # fmt: skip
    out = on_head(home, f"cd {HOME} && {sbatch}", user="ckuser")
    array = out.strip().split(";")[0]
    return [f"{array}_{i}" for i in range(jobs)]


def running(home: Path, array: str) -> dict[str, str]:
    """Task -> node of the array's running tasks."""
    out = on_head(home, f"squeue -h -t RUNNING -j {array} -o '%i %N'")
    return dict(line.split() for line in out.splitlines() if line.strip())


def run_wave(home: Path, tag: str, jobs: int, rng: random.Random | None) -> tuple[float, int]:
    """Submit ``jobs`` tasks and wait for them all; interrupt at random when ``rng``."""
    start = time.monotonic()
    tasks = submit_all(home, tag, jobs)
    array = tasks[0].split("_")[0]
    sent = 0
    noticed: dict[str, float] = {}  # node -> when; its name returns as a new instance later
    next_at = start + (rng.uniform(6, 14) if rng else 0)
    while on_head(home, f"squeue -h -j {array}").strip():
        if rng and time.monotonic() >= next_at:
            now = time.monotonic()
            gone = {n for n, at in noticed.items() if now - at < LEAD + 5}  # still ending
            busy = sorted(set(running(home, array).values()) - gone)
            if busy:
                node = rng.choice(busy)
                ck(home, "interrupt", NAME, node, "--in", str(LEAD))
                noticed[node] = now
                sent += 1
            next_at = time.monotonic() + rng.uniform(6, 14)
        time.sleep(1)
    return time.monotonic() - start, sent


def wrong_answers(home: Path, tag: str, jobs: int) -> dict[str, str]:
    """Tasks whose last answer is not the exact answer of their seed: task -> its output."""
    wrong = {}
    for i in range(jobs):
        out = on_head(home, f"cat {HOME}/{tag}-{i}.out")
        want = subprocess.run(
            [sys.executable, str(EXAMPLE), "--check", "--steps", str(STEPS),
             "--seed", f"{tag}-{i}"],
            capture_output=True, text=True, check=True,
        ).stdout.split()[1:3]  # fmt: skip
        got = [line.split()[1:3] for line in out.splitlines() if line.startswith("answer ")]
        if got[-1:] != [want]:
            wrong[str(i)] = out
    return wrong


@dataclass
class Results:
    jobs: int
    baseline_makespan_s: float
    chaos_makespan_s: float
    notices_sent: int
    exact_answers: int
    report: dict[str, Any]
    calm_cost: dict[str, Any]  # `clusterkit cost` of the baseline run's window
    chaos_cost: dict[str, Any]  # and of the chaos run's
    wrong: dict[str, str]  # task -> output, for every answer that is not exact
    events: list[dict[str, Any]]  # the chaos run's Spot events (evidence for a failure)


def cost_since(home: Path, since: float) -> dict[str, Any]:
    """What the cluster spent from ``since`` to now (``clusterkit cost``'s summary)."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(since))
    found: dict[str, Any] = json.loads(ck(home, "cost", NAME, "--since", stamp, "-o", "json"))
    summary: dict[str, Any] = found["summary"]
    return summary


def measure(home: Path, jobs: int, seed: int) -> Results:
    calm_start = time.time()
    base, _ = run_wave(home, "calm", jobs, None)
    calm_cost = cost_since(home, calm_start)
    chaos_start = time.time()
    chaos, sent = run_wave(home, "chaos", jobs, random.Random(seed))  # noqa: S311 - chaos, not secrets
    time.sleep(8)  # the reconciler records the last jobs' ends
    chaos_cost = cost_since(home, chaos_start)
    wrong = wrong_answers(home, "chaos", jobs)
    report = json.loads(ck(home, "spot-report", NAME, "-o", "json"))
    found = ck(home, "events", NAME, "--spot", "-o", "json")
    spot_events = [json.loads(line) for line in found.splitlines() if line.strip()]
    return Results(jobs, base, chaos, sent, jobs - len(wrong), report, calm_cost, chaos_cost,
                   wrong, spot_events)  # fmt: skip


def show(r: Results) -> bool:
    rep = r.report
    drain = max(rep["drain_seconds"] or [0.0])
    in_time = rep["notices_requeued_in_time"] == rep["notices_handled"] == r.notices_sent
    rows = [
        ["figure", "value", "baseline", "ratio", "target", "verdict"],
        ["notice -> node drained (worst)", f"{drain:.2f}s",
         f"median {rep['drain_seconds_median'] or 0:.2f}s", "-", "<= 3 s", verdict(drain <= 3)],
        ["notices: every job requeued before the end",
         f"{rep['notices_requeued_in_time']} of {r.notices_sent}", "-", "-", "all",
         verdict(in_time)],
        ["exact answers after the chaos run", f"{r.exact_answers} of {r.jobs}", "-", "-",
         "all", verdict(r.exact_answers == r.jobs)],
        ["makespan under interruptions", f"{r.chaos_makespan_s:.1f}s",
         f"{r.baseline_makespan_s:.1f}s (none)",
         f"{r.chaos_makespan_s / r.baseline_makespan_s:.2f}x", "-", "-"],
        ["work lost (total, worst requeue)",
         f"{rep['lost_seconds']:.1f}s, {rep['lost_seconds_max']:.1f}s", "-", "-",
         f"<= {CHECKPOINT_EVERY}s per requeue",
         verdict(rep["lost_seconds_max"] <= CHECKPOINT_EVERY)],
        ["restarts / jobs recovered", f"{rep['restarts']} / {rep['jobs_recovered']}", "-", "-",
         "-", "-"],
        *cost_rows(r.calm_cost, r.chaos_cost),
    ]  # fmt: skip
    print(table(rows))
    return drain <= 3 and in_time and r.exact_answers == r.jobs


def cost_rows(calm: dict[str, Any], chaos: dict[str, Any]) -> list[list[str]]:
    """The ledger's figures of the chaos run against the same work on on-demand: the calm
    run's jobs at on-demand prices (no interruption to redo)."""
    cur = chaos["currency"]
    return [
        ["chaos run: spent (all instances)", f"{chaos['spent']:.4f} {cur}",
         f"{calm['spent']:.4f} {cur} (calm)", f"{chaos['spent'] / calm['spent']:.2f}x", "-",
         "-"],
        ["chaos run: cost of interruptions", f"{chaos['interruption']:.4f} {cur}", "-",
         f"{chaos['interruption'] / chaos['spent']:.1%} of spent", "-", "-"],
        ["chaos run: Spot savings (net)", f"{chaos['spot_savings']:.4f} {cur}",
         f"{chaos['on_demand']:.4f} {cur} on-demand",
         f"{chaos['spot_savings'] / chaos['on_demand']:.0%} saved", "-", "-"],
        ["chaos run vs the same work on on-demand", f"{chaos['spent']:.4f} {cur}",
         f"{calm['on_demand']:.4f} {cur} (calm run, on-demand)",
         f"{chaos['spent'] / calm['on_demand']:.2f}x", "-", "-"],
    ]  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args()
    if not need_root("spot"):
        return 2
    with local_cluster(SPEC, "ck-bench-spot-") as home:
        ck(home, "ssh", NAME, "--", f"cat > {HOME}/hashchain.py && chown ckuser: "
           f"{HOME}/hashchain.py", stdin=EXAMPLE.read_text(encoding="utf-8"))  # fmt: skip
        results = measure(home, args.jobs, args.seed)
    save_results(args.json, results)
    return 0 if show(results) else 1


if __name__ == "__main__":
    sys.exit(main())
