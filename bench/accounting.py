"""Benchmark of accounting: what it adds to ``up``, and how fast ``sacct`` answers.

1. ``up`` of a head + 4 compute nodes to a verified cluster, with accounting (the default:
   MariaDB and slurmdbd on the head, two tenants) against the same spec with
   ``accounting: {enabled: false}``, alternated in one run (median of ``--runs``, default 3).
   Target: at most 5 s more. The step times of ``up`` (its own log) say where the difference
   goes.
2. ``sacct`` for 10,000 finished jobs: an array of 10,000 trivial tasks (``--wrap=true``) is
   run to its end, then ``sacct -X -n -P`` over all of them is timed on the head (median of 5,
   each run listing every job). Target: at most 2 s. The baseline is ``squeue`` of an empty
   queue in the same run (what any Slurm client costs here).

Run it as root from the repository root:

    .venv/bin/python bench/accounting.py [--runs N] [--jobs N] [--json PATH]

It prints a table and exits 1 when a target is missed (2 when it cannot run).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import Clusterkit, ck, local_cluster, need_root, save_results, table, verdict

UP_TARGET_S = 5.0
SACCT_TARGET_S = 2.0
ARRAY_CHUNK = 1000  # MaxArraySize is far above; chunks keep each submit short


def spec(name: str, accounting: bool) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": name,
        "groups": [{"name": "compute", "min": 4, "max": 4, "cpus": 2, "memory_mb": 2048}],
        "users": [{"name": "alice", "uid": 2101}, {"name": "bob", "uid": 2102}],
    }
    if accounting:
        doc["tenants"] = [{"name": "physics", "users": ["alice"], "limits": {"cpus": 4}},
                          {"name": "chem", "users": ["bob"]}]  # fmt: skip
    else:
        doc["accounting"] = {"enabled": False}
    return doc


@dataclass
class Results:
    up_with_s: list[float] = field(default_factory=list)
    up_without_s: list[float] = field(default_factory=list)
    steps_with: list[dict[str, float]] = field(default_factory=list)  # up's own step times
    steps_without: list[dict[str, float]] = field(default_factory=list)
    jobs: int = 0
    array_s: float = 0.0
    sacct_s: list[float] = field(default_factory=list)
    sacct_rows: int = 0
    squeue_s: list[float] = field(default_factory=list)


def timed_up(name: str, accounting: bool) -> tuple[float, dict[str, float]]:
    """``up`` to a verified cluster: its wall time and the time of each step it printed."""
    with tempfile.TemporaryDirectory(prefix="ck-bench-acct-") as tmp:
        home = Path(tmp)
        path = home / "spec.yaml"
        path.write_text(json.dumps(spec(name, accounting)), encoding="utf-8")
        start = time.monotonic()
        try:
            done = Clusterkit(home).run("up", "-f", str(path), timeout=600)
            took = time.monotonic() - start
        finally:
            ck(home, "down", name)
    steps = {
        m.group(1): float(m.group(2))
        for m in re.finditer(r"^✓ (.+?) \(([\d.]+)s\)$", done.stderr, re.MULTILINE)
    }
    return took, steps


def on_head(home: Path, name: str, command: str, timeout: float = 600) -> str:
    return ck(home, "ssh", name, "--", command, timeout=timeout)


def sacct_figures(res: Results, jobs: int) -> None:
    with local_cluster(spec("bsacct", True), "ck-bench-sacct-") as home:
        start = time.monotonic()
        submitted = 0
        while submitted < jobs:
            n = min(ARRAY_CHUNK, jobs - submitted)
            on_head(home, "bsacct", f"cd /tmp && runuser -u bob -- sbatch -Q --array=1-{n} "
                    "-o /dev/null -c1 --mem=50M --wrap=true")  # fmt: skip
            submitted += n
        while on_head(home, "bsacct", "squeue -h -o %i | head -1").strip():
            time.sleep(2)
        res.jobs, res.array_s = jobs, time.monotonic() - start
        for _ in range(5):
            out = on_head(
                home,
                "bsacct",
                "s=$(date +%s.%N); n=$(sacct -a -X -n -P -S 2020-01-01 "
                '-o jobid,state | wc -l); echo $n $(echo "$(date +%s.%N) - $s" | bc)',
            )
            rows, seconds = out.split()
            res.sacct_rows, res.sacct_s = int(rows), [*res.sacct_s, float(seconds)]
            out = on_head(home, "bsacct", "s=$(date +%s.%N); squeue -h >/dev/null; "
                          "echo \"$(date +%s.%N) - $s\" | bc")  # fmt: skip
            res.squeue_s.append(float(out))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if not need_root("bench/accounting.py"):
        return 2
    res = Results()
    for _ in range(args.runs):
        took, steps = timed_up("bnoacct", accounting=False)
        res.up_without_s.append(took)
        res.steps_without.append(steps)
        took, steps = timed_up("bwacct", accounting=True)
        res.up_with_s.append(took)
        res.steps_with.append(steps)
    sacct_figures(res, args.jobs)
    save_results(args.json, res)
    with_s, without_s = statistics.median(res.up_with_s), statistics.median(res.up_without_s)
    sacct_s, squeue_s = statistics.median(res.sacct_s), statistics.median(res.squeue_s)
    added = with_s - without_s
    rows = [
        ["figure", "measured", "target", "baseline", "ratio", "verdict"],
        ["up head+4, accounting - without", f"{added:+.1f} s", f"<= {UP_TARGET_S:.0f} s",
         f"{without_s:.1f} s without", f"{with_s / without_s:.2f}x", verdict(added <= UP_TARGET_S)],
        [f"sacct of {res.sacct_rows} finished jobs", f"{sacct_s:.2f} s",
         f"<= {SACCT_TARGET_S:.0f} s", f"squeue {squeue_s:.2f} s", f"{sacct_s / squeue_s:.1f}x",
         verdict(sacct_s <= SACCT_TARGET_S and res.sacct_rows >= res.jobs)],
        [f"array of {res.jobs} trivial tasks to its end", f"{res.array_s:.0f} s", "-", "-", "-",
         "-"],
    ]  # fmt: skip
    print(table(rows))
    print(f"up with accounting: {res.up_with_s}; without: {res.up_without_s}")
    for step in res.steps_with[0]:
        w = statistics.median(s.get(step, 0.0) for s in res.steps_with)
        wo = statistics.median(s.get(step, 0.0) for s in res.steps_without)
        print(f"  step {step}: {w:.1f} s with, {wo:.1f} s without ({w - wo:+.1f} s)")
    return 0 if added <= UP_TARGET_S and sacct_s <= SACCT_TARGET_S else 1


if __name__ == "__main__":
    sys.exit(main())
