"""Benchmark of elastic scaling on a local cluster: resume latency, a 32-node resume, release.

    .venv/bin/python bench/elastic.py [--trials N] [--json PATH]

One cluster: a static compute (the baseline: a node that is already up) and 32 dynamic ones.
Figures, each against its target from the elastic-scaling issue and a baseline from the
same run:

- sbatch -> RUNNING of a 1-node job on a powered-down node (median of N trials; target 5 s),
  against the same on the static node;
- a 32-node job on powered-down nodes: sbatch -> RUNNING (target 30 s), against the 1-node
  resume above;
- idle node released (namespaces gone) after its job ended, minus SuspendTime
  (target 10 s).

Timing runs on the head (one SSH session per trial), so SSH does not add to the figures.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from common import ck, local_cluster, need_root, save_results, table, verdict

from clusterkit.providers.local import net

NAME = "ckbenchel"
SUSPEND_TIME = 5
SPEC = {
    "name": NAME,
    "groups": [
        {"name": "static", "min": 1, "max": 1, "cpus": 1, "memory_mb": 1024},
        {"name": "burst", "min": 0, "max": 32, "cpus": 1, "memory_mb": 1024},
    ],
    "slurm": {"suspend_time": SUSPEND_TIME, "suspend_timeout": 5, "resume_timeout": 120},
}
# Submits a job as ckuser and prints the seconds until squeue shows it RUNNING.
TIME_TO_RUNNING = r"""
start=$(date +%s.%N)
job=$(runuser -u ckuser -- sbatch --parsable {args} --wrap 'sleep 2')
until [ "$(squeue -h -j $job -o %T)" = RUNNING ]; do sleep 0.05; done
echo "$(date +%s.%N) - $start" | bc
"""


def on_head(home: Path, script: str) -> str:
    return ck(home, "ssh", NAME, "--", script)


def dynamic_netns() -> list[str]:
    return [n for n in net.cluster_netns(NAME) if "-dy-" in n]


def wait_until(check: Callable[[], bool], timeout: float) -> float:
    """Seconds until ``check()`` is true."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise RuntimeError("timed out")
        time.sleep(0.1)
    return time.monotonic() - start


def powered_down(home: Path) -> bool:
    states = on_head(home, "sinfo -h -N -p burst -o %t").split()
    return not dynamic_netns() and bool(states) and all(s == "idle~" for s in states)


def time_to_running(home: Path, args: str) -> float:
    return float(on_head(home, TIME_TO_RUNNING.format(args=args)).strip())


@dataclass
class Results:
    static_to_running_s: list[float]  # baseline: the node is up
    resume_to_running_s: list[float]
    release_after_suspend_time_s: list[float]
    resume32_to_running_s: float
    resume32_nodes: int


def measure(home: Path, trials: int) -> Results:
    static = [time_to_running(home, "-p static -N1 -o /dev/null") for _ in range(trials)]
    resume, release = [], []
    for _ in range(trials):
        wait_until(lambda: powered_down(home), 120)
        resume.append(time_to_running(home, "-p burst -N1 -o /dev/null"))
        on_head(home, 'until [ -z "$(squeue -h -p burst)" ]; do sleep 0.05; done')
        release.append(wait_until(lambda: not dynamic_netns(), 120) - SUSPEND_TIME)
    wait_until(lambda: powered_down(home), 180)
    big = time_to_running(home, "-p burst -N32 -o /dev/null")
    return Results(static, resume, release, big, len(dynamic_netns()))


def report(r: Results) -> bool:
    static = statistics.median(r.static_to_running_s)
    resume = statistics.median(r.resume_to_running_s)
    release = max(r.release_after_suspend_time_s)
    big = r.resume32_to_running_s
    rows = [
        ["figure", "value", "baseline", "ratio", "target", "verdict"],
        ["sbatch->RUNNING, powered-down node (median)", f"{resume:.2f}s",
         f"{static:.2f}s (node up)", f"{resume / static:.1f}x", "<= 5 s", verdict(resume <= 5)],
        ["sbatch->RUNNING, 32 powered-down nodes", f"{big:.2f}s",
         f"{resume:.2f}s (1 node)", f"{big / resume:.1f}x", "<= 30 s", verdict(big <= 30)],
        ["idle node released after SuspendTime (worst)", f"{release:.2f}s",
         f"{SUSPEND_TIME}s suspend time", "-", "<= 10 s", verdict(release <= 10)],
    ]  # fmt: skip
    print(table(rows))
    print(f"nodes up for the 32-node job: {r.resume32_nodes}")
    return resume <= 5 and big <= 30 and release <= 10 and r.resume32_nodes == 32


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args()
    if not need_root("elastic"):
        return 2
    with local_cluster(SPEC, "ck-bench-elastic-") as home:
        results = measure(home, args.trials)
    save_results(args.json, results)
    return 0 if report(results) else 1


if __name__ == "__main__":
    sys.exit(main())
