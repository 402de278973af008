"""Benchmark of the compute boot script: from its start to slurmd registered with slurmctld.

    .venv/bin/python bench/boot.py [--trials N] [--json PATH]

The boot script is the one an EC2 node runs as user-data; here a local node runs it when
Slurm powers it up (``ck-resume`` asks the cluster's cloud service for an instance, which
starts the node's namespaces and sshd, then its boot script). Per trial, timed on the head:
``scontrol update state=POWER_UP`` of a powered-down node, until sinfo shows it idle. The
resume program's ``launch`` event says when the instance was up and its boot script began.

Figures: boot script start -> registered (target <= 3 s, from the AWS-provider issue),
against the baseline of the same run's launch (namespaces and sshd, no boot script).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

from common import ck, local_cluster, need_root, save_results, table, verdict

from clusterkit.nodetools.spot import parse_time

NAME = "ckbenchboot"
NODE = "compute-dy-1"
SPEC = {
    "name": NAME,
    "groups": [{"name": "compute", "min": 0, "max": 1, "cpus": 1, "memory_mb": 1024}],
    "slurm": {"suspend_time": 300, "suspend_timeout": 5, "resume_timeout": 60},
}
# One trial on the head: power the node up, wait until it is idle, then print the time it
# became idle and the resume program's launch event (when the boot script began).
TRIAL = rf"""
until [ "$(sinfo -h -N -n {NODE} -p compute -o %t)" = "idle~" ]; do sleep 0.1; done
scontrol update nodename={NODE} state=POWER_UP
until [ "$(sinfo -h -N -n {NODE} -p compute -o %t)" = idle ]; do sleep 0.02; done
date +%s.%N
grep '"action":"launch"' /var/log/clusterkit/events.jsonl | tail -1
scontrol update nodename={NODE} state=POWER_DOWN_FORCE
"""


@dataclass
class Results:
    boot_s: list[float]  # boot script start -> registered
    launch_s: list[float]  # the baseline: the instance's launch (namespaces, sshd)


def trial(home: Path) -> tuple[float, float]:
    out = ck(home, "ssh", NAME, "--", TRIAL).strip().splitlines()
    idle_at, launch = float(out[0]), json.loads(out[1])
    launched_at = parse_time(launch["time"])
    return idle_at - launched_at, float(launch["seconds"])


def show(r: Results) -> bool:
    boot, launch = statistics.median(r.boot_s), statistics.median(r.launch_s)
    worst = max(r.boot_s)
    rows = [
        ["figure", "value", "baseline", "ratio", "target", "verdict"],
        ["boot script start -> slurmd registered (median)", f"{boot:.2f}s",
         f"{launch:.2f}s (launch)", f"{boot / launch:.1f}x", "<= 3 s", verdict(boot <= 3)],
        ["boot script start -> slurmd registered (worst)", f"{worst:.2f}s", "-", "-",
         "<= 3 s", verdict(worst <= 3)],
    ]  # fmt: skip
    print(table(rows))
    return worst <= 3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args()
    if not need_root("boot"):
        return 2
    with local_cluster(SPEC, "ck-bench-boot-") as home:
        results = Results([], [])
        for _ in range(args.trials):
            boot, launch = trial(home)
            results.boot_s.append(boot)
            results.launch_s.append(launch)
    save_results(args.json, results)
    return 0 if show(results) else 1


if __name__ == "__main__":
    sys.exit(main())
