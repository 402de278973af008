"""Benchmark of high-throughput packing: many short tasks on a few big nodes, four ways.

The workload of the packing issue: TASKS (4,000) tasks of ``sleep 0.5`` on a local cluster of
4 compute nodes declaring 8 CPUs each (``pkbench``). The ideal makespan is the total task time
over the total cores, 4,000 x 0.5 s / 32 = 62.5 s. Side by side, on the same cluster, as the
cluster user:

(a) one ``sbatch --wrap 'sleep 0.5'`` per task, submitted by a shell loop on the head;
(b) a plain job array with one task per element, ``sbatch --array=0-3999``;
(c) GNU parallel over the job's machinefile inside one allocation (``sbatch -N4
    --ntasks-per-node=8``; ``ck-machinefile`` turned into ``--sshloginfile``, ``8/host``
    lines, so parallel starts each task over SSH on a node with a free slot);
(c2) informational: the same allocation with one ``parallel -j8`` per node started by
    ``srun`` (no SSH per task), each node taking every fourth task;
(d) ``clusterkit pack submit pkbench tasks.txt --estimate 0.5`` (auto chunking).

Every figure is one wall-clock span, measured the same way for every variant: from the
start of the submission until ``squeue`` on the head shows none of the user's jobs (polled
every 0.5 s in the same SSH session). For (d) the span starts before the
``clusterkit pack submit`` process on this machine (so it includes reading the tasks, two
SSH sessions and the upload) and its own manifest's first-start-to-last-end is shown too.

What each variant cost is the cluster's own ledger over its span (``clusterkit cost pkbench
--since START -o json`` as it ends): the compute nodes' time at their price (``spent`` less the
head), shown per 1,000 tasks, and the part of it Slurm allocated to jobs (``jobs``). The nodes
are priced as c7i.2xlarge (8 vCPUs), on-demand from the shipped table and Spot at the spec's
assumed ratio.

Targets: (d) reaches >= 90 % of ideal (ideal / span), is >= 10x faster than (a), and at
least matches (c). Then ``clusterkit pack submit`` of 100,000 tasks (``--hold``; cancelled
at once, nothing runs) must take <= 5 s, against ``sbatch --hold --array=0-99999`` of one
command as the baseline.

Run it as root from the repository root (about 25 minutes; ``--quick`` runs 1,000 tasks):

    .venv/bin/python bench/htc.py [--quick] [--home DIR]

It prints a table (figure, measured, target, baseline, ratio, PASS/FAIL), writes
``bench/results/htc.json`` and exits 1 when a target is missed (2 when it cannot run). The
cluster is destroyed on exit, also on failure, Ctrl-C and SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from common import Clusterkit as Cli
from common import Result, last_line, table  # bench/ is on sys.path when run

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "htc.json"

NAME = "pkbench"
USER = "ckuser"
COMPUTES = 4
CPUS = 8
MEMORY_MB = 4096
TASKS = 4000
QUICK_TASKS = 1000
TASK_S = 0.5
INSTANCE_TYPE = "c7i.2xlarge"  # what the nodes are priced as (8 vCPUs)
BIG = 100_000
SUBMIT_TARGET_S = 5.0
IDEAL_TARGET = 0.90
VS_A_TARGET = 10.0
RUN_TIMEOUT_S = 3600.0
C_LIMIT_MIN = 10  # GNU parallel over SSH may crawl here (see the README); it is cut at this
POLL = f'while squeue -h -u {USER} -o %i | grep -q .; do sleep 0.5; done; echo "end $(date +%s.%N)"'
PARALLEL_SCRIPT = """#!/bin/bash
# (c): GNU parallel over the job's machinefile, one SSH session per task.
mf=$(ck-machinefile)
grep -v '^#' "$mf" | awk '{split($2, a, "="); print a[2] "/" $1}' > "$HOME/sl.$SLURM_JOB_ID"
# -N0: each input line starts one task but is not appended to its command.
seq {tasks} | parallel --will-cite -N0 --joblog "$HOME/par-ssh.joblog" \\
  --sshloginfile "$HOME/sl.$SLURM_JOB_ID" 'sleep {task_s}'
"""
PARALLEL_SRUN_SCRIPT = """#!/bin/bash
# (c2): one parallel -j{cpus} per node through srun; node i takes every {nodes}th task.
# No CPU binding: a local node declares more CPUs than the machine has.
srun --cpu-bind=none -N{nodes} -n{nodes} -c{cpus} bash -c \\
  'seq {tasks} | awk -v n={nodes} -v i=$SLURM_NODEID "NR % n == i" | \\
   parallel --will-cite -N0 -j{cpus} --joblog $HOME/par-srun.joblog.$SLURM_NODEID "sleep {task_s}"'
"""


def ck(*args: str, timeout: float = 300.0) -> Result:
    return Cli(HOME).run(*args, check=False, timeout=timeout)


def as_user(command: str, timeout: float = RUN_TIMEOUT_S) -> Result:
    return ck("ssh", NAME, "-u", USER, "--", f"cd ~ && {command}", timeout=timeout)


HOME = Path("/tmp/ck-bench-htc")


@dataclass
class Variant:
    key: str
    label: str
    seconds: float | None  # submission start to an empty queue
    rc: int
    note: str = ""
    errors: list[str] = field(default_factory=list)
    projected: float | None = None  # an incomplete run's span at its rate, for all tasks
    cost: dict[str, float] = field(default_factory=dict)  # the ledger over the span


def window_cost(since: float) -> dict[str, float]:
    """What the ledger says the cluster spent since ``since``: compute nodes (all but the
    head), what of it went to jobs, and the same on on-demand; {} if it cannot say."""
    iso = datetime.fromtimestamp(since).isoformat(timespec="seconds")
    got = ck("cost", NAME, "--since", iso, "-o", "json")
    try:
        summary = json.loads(got.stdout)["summary"]
    except (ValueError, KeyError):
        print(f"  no cost: {last_line(got.stderr)}", flush=True)
        return {}
    return {
        "compute": summary["spent"] - summary["head"],
        "jobs": summary["jobs"],
        "on_demand": summary["on_demand"],
    }


def end_time(out: str) -> float | None:
    m = re.search(r"^end (\d+\.\d+)$", out, re.MULTILINE)
    return float(m.group(1)) if m else None


def on_head(key: str, label: str, submit: str) -> Variant:
    """Run ``submit`` then poll squeue, in one SSH session; span measured on the head."""
    script = f's=$(date +%s.%N); echo "start $s"; {submit}; {POLL}'
    t = as_user(script)
    m = re.search(r"^start (\d+\.\d+)$", t.stdout, re.MULTILINE)
    end = end_time(t.stdout)
    if t.rc != 0 or m is None or end is None:
        return Variant(key, label, None, t.rc, errors=[f"exit {t.rc}: {last_line(t.stderr)}"])
    return Variant(key, label, end - float(m.group(1)), 0)


def variant_a(tasks: int) -> Variant:
    loop = (
        f"for i in $(seq {tasks}); do sbatch -Q -o /dev/null --wrap 'sleep {TASK_S}' "
        "|| exit 1; done"
    )
    return on_head("a", f"(a) {tasks} x sbatch", loop)


def variant_b(tasks: int) -> Variant:
    submit = f"sbatch -Q -o /dev/null --array=0-{tasks - 1} --wrap 'sleep {TASK_S}'"
    return on_head("b", "(b) job array, 1 task per element", submit)


def variant_c(tasks: int, srun: bool) -> Variant:
    """GNU parallel inside one allocation, cut at ``C_LIMIT_MIN`` minutes: a run that does not
    finish in time is reported with how many tasks it did and a linear projection."""
    template = PARALLEL_SRUN_SCRIPT if srun else PARALLEL_SCRIPT
    script = (
        template.replace("{tasks}", str(tasks))
        .replace("{task_s}", str(TASK_S))
        .replace("{cpus}", str(CPUS))
        .replace("{nodes}", str(COMPUTES))
    )
    name = "par-srun" if srun else "par-ssh"
    write = f"rm -f {name}.joblog*; cat > {name}.sh <<'EOF'\n{script}EOF\n"
    submit = (
        f"{write}sbatch -Q -o {name}.out -N{COMPUTES} --ntasks-per-node={CPUS} "
        f"--time={C_LIMIT_MIN} {name}.sh"
    )
    if srun:
        v = on_head("c2", "(c2) parallel -j8 per node via srun (info)", submit)
    else:
        v = on_head("c", "(c) GNU parallel over the machinefile (ssh)", submit)
    # Successful tasks' runtimes from the joblog(s): their count, and a check that each task
    # was the workload's sleep and nothing else.
    log = as_user(f"cat {name}.joblog* | awk '$7 == \"0\" {{print $4}}'", timeout=60)
    runtimes = [float(x) for x in log.stdout.split()] if log.rc == 0 else []
    done = len(runtimes)
    median = statistics.median(runtimes) if runtimes else 0.0
    v.note = f"{done} of {tasks} tasks done, median task runtime {median:.3f} s"
    if v.seconds is not None and 0 < done < tasks:
        v.note += (
            f" when the {C_LIMIT_MIN} min limit ended it; at that rate all would take "
            f"{v.seconds * tasks / done:.0f} s"
        )
        v.projected = v.seconds * tasks / done
    elif done == 0:
        v.errors.append("no task finished")
    return v


def variant_d(tasks: int, tasks_file: Path) -> Variant:
    """``clusterkit pack submit`` from this machine, then the same squeue poll."""
    start = time.time()
    sub = ck("pack", "submit", NAME, str(tasks_file), "--estimate", str(TASK_S),
             "--name", f"bench-{tasks}", "-o", "json")  # fmt: skip
    if sub.rc != 0:
        return Variant("d", "(d) clusterkit pack", None, sub.rc, errors=[last_line(sub.stderr)])
    poll = as_user(POLL)
    end = end_time(poll.stdout)
    if end is None:
        return Variant("d", "(d) clusterkit pack", None, poll.rc, errors=[last_line(poll.stderr)])
    info = json.loads(sub.stdout)
    st = ck("pack", "collect", NAME, info["pack"], "-d", str(HOME / "collect"), "-o", "json")
    summary = json.loads(st.stdout) if st.rc == 0 else {}
    note = (
        f"chunk {info['chunking']['chunk']} x {info['chunking']['elements']} elements; "
        f"manifest: {summary.get('done')} done, {summary.get('failed')} failed, first start "
        f"to last end {summary.get('makespan_s')} s; submit {sub.seconds:.2f} s"
    )
    errors = [] if summary.get("done") == tasks else [f"only {summary.get('done')} done"]
    return Variant("d", "(d) clusterkit pack", end - start, 0, note, errors)


def big_submit(tmp: Path) -> tuple[Result, Result]:
    """``pack submit --hold`` of BIG tasks (then cancelled) and the plain sbatch baseline."""
    path = tmp / "big.txt"
    path.write_text("".join(f"sleep {TASK_S} # {i}\n" for i in range(BIG)), encoding="utf-8")
    sub = ck("pack", "submit", NAME, str(path), "--hold", "--name", "bench-big", "-o", "json")
    if sub.rc == 0:
        info = json.loads(sub.stdout)
        as_user(f"scancel {info['job_id']}", timeout=60)
        if info["tasks"] != BIG:  # the figure counts only a submission of every task
            sub = Result(sub.seconds, 1, sub.stdout, f"submitted {info['tasks']} tasks")
    script = (
        "s=$(date +%s%N); j=$(sbatch --parsable --hold -o /dev/null "
        f"--array=0-{BIG - 1} --wrap 'sleep {TASK_S}'); e=$(date +%s%N); scancel $j; "
        'echo "inner_ns $((e - s))"'
    )
    base = as_user(script, timeout=120)
    m = re.search(r"inner_ns (\d+)", base.stdout)
    if m:
        base = Result(int(m.group(1)) / 1e9, base.rc, base.stdout, base.stderr)
    return sub, base


# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Figure:
    name: str
    measured: float | None
    unit: str
    target: str  # e.g. ">= 0.90", "<= 5"; "" for information
    baseline: float | None = None
    passed: bool | None = None  # None: informational

    def row(self) -> list[str]:
        m = "n/a" if self.measured is None else f"{self.measured:.2f}{self.unit}"
        b = "-" if self.baseline is None else f"{self.baseline:.2f}{self.unit}"
        ratio = (
            f"{self.measured / self.baseline:.2f}x"
            if self.measured is not None and self.baseline
            else "-"
        )
        verdict = "info" if self.passed is None else ("PASS" if self.passed else "FAIL")
        return [self.name, m, self.target or "-", b, ratio, verdict]


def figures(variants: dict[str, Variant], tasks: int, big: tuple[Result, Result]) -> list[Figure]:
    ideal = tasks * TASK_S / (COMPUTES * CPUS)
    figs = [
        Figure(f"ideal makespan ({tasks} x {TASK_S} s / {COMPUTES * CPUS} cores)", ideal, " s", "")
    ]
    for key in ("a", "b", "c", "c2", "d"):
        v = variants.get(key)
        if v is None:
            continue
        figs.append(Figure(f"{v.label}: span", v.seconds, " s", "", ideal))
        if v.projected is not None:
            figs.append(Figure(f"  {v.note}", v.projected, " s", "", ideal))
    d = variants.get("d")
    ds = d.seconds if d and not d.errors else None
    eff = ideal / ds if ds else None
    figs.append(Figure("(d) efficiency: ideal / span", eff, "", ">= 0.90",
                       passed=eff is not None and eff >= IDEAL_TARGET))  # fmt: skip
    for key, target, need in (("a", ">= 10", VS_A_TARGET), ("c", ">= 1", 1.0)):
        other = variants.get(key)
        span = (other.projected or other.seconds) if other else None
        speedup = span / ds if span and ds else None
        what = "projected span" if other and other.projected else "span"
        figs.append(Figure(f"(d) speed-up over ({key}): {what}({key}) / span(d)", speedup, "x",
                           target, passed=speedup is not None and speedup >= need))  # fmt: skip
    a = variants.get("a")
    if a and a.seconds:
        figs.append(Figure("  bound: no variant beats ideal, so (d) / (a) <= span(a) / ideal",
                           a.seconds / ideal, "x", ""))  # fmt: skip
    figs += cost_figures(variants, tasks)
    sub, base = big
    figs.append(
        Figure(
            f"pack submit of {BIG:,} tasks (--hold) vs one sbatch --array",
            sub.seconds if sub.rc == 0 else None,
            " s",
            "<= 5",
            base.seconds if base.rc == 0 else None,
            passed=sub.rc == 0 and sub.seconds <= SUBMIT_TARGET_S,
        )
    )
    return figs


def cost_figures(variants: dict[str, Variant], tasks: int) -> list[Figure]:
    """Cost per 1,000 tasks of each variant (in US cents: fractions of one here), and pack's
    against one sbatch per task."""
    cents = 100 * 1000 / tasks
    per = {k: v.cost["compute"] * cents for k, v in variants.items() if v.cost}
    figs = [Figure(f"{variants[k].label}: cost per 1,000 tasks (allocated to jobs: "
                   f"{variants[k].cost['jobs'] * cents:.3f})", c, " cents", "")
            for k, c in per.items()]  # fmt: skip
    if "a" in per and "d" in per:
        figs.append(Figure("(a) / (d): one sbatch per task against pack, per task",
                           per["a"] / per["d"] if per["d"] else None, "x", ""))  # fmt: skip
    return figs


def git_commit() -> str:
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=False).stdout.strip()  # fmt: skip
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "clusterkit"],
                           capture_output=True, text=True, check=False).stdout.strip()  # fmt: skip
    return (head or "unknown") + ("-dirty" if dirty else "")


def load() -> dict[str, Any]:
    one, five, _ = os.getloadavg()
    others = sum(
        1 for p in Path("/proc").iterdir()
        if p.name.isdigit() and _cmdline(p).startswith(b"ck-node:")
        and not _cmdline(p).startswith(f"ck-node:{NAME}:".encode())
    )  # fmt: skip
    return {"load1": round(one, 2), "load5": round(five, 2), "other_cluster_nodes": others}


def _cmdline(p: Path) -> bytes:
    try:
        return (p / "cmdline").read_bytes()
    except OSError:
        return b""


def measure(
    tasks: int, tmp: Path, skip: set[str]
) -> tuple[dict[str, Variant], Any, dict[str, Any]]:
    spec = tmp / f"{NAME}.yaml"
    spec.write_text(
        f"{{name: {NAME}, groups: [{{name: compute, min: {COMPUTES}, max: {COMPUTES}, "
        f"cpus: {CPUS}, memory_mb: {MEMORY_MB}, instance_types: [{INSTANCE_TYPE}]}}]}}\n",
        encoding="utf-8",
    )
    loads: dict[str, Any] = {"before": load()}
    up = ck("up", "-f", str(spec), timeout=900)
    if up.rc != 0:
        raise RuntimeError(f"up failed: {last_line(up.stderr)}")
    tasks_file = tmp / "tasks.txt"
    tasks_file.write_text(f"sleep {TASK_S}\n" * tasks, encoding="utf-8")
    variants: dict[str, Variant] = {}
    steps: list[tuple[str, Callable[[], Variant]]] = [
        ("d", lambda: variant_d(tasks, tasks_file)),
        ("c2", lambda: variant_c(tasks, srun=True)),
        ("b", lambda: variant_b(tasks)),
        ("c", lambda: variant_c(tasks, srun=False)),
        ("a", lambda: variant_a(tasks)),
    ]
    for key, run in steps:
        if key in skip:
            continue
        print(f"{key}: running ({tasks} tasks) ...", flush=True)
        loads[key] = load()
        started = time.time()
        variants[key] = run()
        v = variants[key]
        v.cost = window_cost(started)
        span = "n/a" if v.seconds is None else f"{v.seconds:.1f} s"
        print(f"  {v.label}: {span} {v.note} {' '.join(v.errors)}", flush=True)
    print("submit of 100,000 tasks ...", flush=True)
    big = big_submit(tmp)
    print(f"  pack submit {big[0].seconds:.2f} s (rc {big[0].rc}); sbatch {big[1].seconds:.2f} s",
          flush=True)  # fmt: skip
    return variants, big, loads


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_TASKS} tasks, not {TASKS}")
    parser.add_argument("--home", type=Path, default=HOME, help="CLUSTERKIT_HOME to use")
    parser.add_argument("--skip", default="", help="variants to skip, e.g. a,c")
    parser.add_argument("--json", type=Path, default=RESULTS, help="where to write results")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("htc: needs root (namespaces, bridges)", file=sys.stderr)
        return 2
    globals()["HOME"] = args.home
    args.home.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    tasks = QUICK_TASKS if args.quick else TASKS
    commit = git_commit()
    with tempfile.TemporaryDirectory(prefix="ck-bench-htc-") as tmp:
        try:
            variants, big, loads = measure(
                tasks, Path(tmp), set(filter(None, args.skip.split(",")))
            )
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            print(f"htc: cannot measure: {exc}", file=sys.stderr)
            return 2
        finally:
            ck("down", NAME, timeout=300)
    figs = figures(variants, tasks, big)
    print("\n" + table([["figure", "measured", "target", "baseline", "ratio", "result"]]
                       + [f.row() for f in figs]))  # fmt: skip
    print("(baseline of the spans: the ideal makespan; ratio = span / ideal)")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "benchmark": "htc",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "commit": commit,
        "machine": {"kernel": platform.release(), "cpus": os.cpu_count()},
        "workload": {"tasks": tasks, "task_s": TASK_S, "computes": COMPUTES, "cpus": CPUS},
        "load": loads,
        "variants": {k: asdict(v) for k, v in variants.items()},
        "big_submit": {
            "pack_s": big[0].seconds,
            "pack_rc": big[0].rc,
            "sbatch_s": big[1].seconds,
            "sbatch_rc": big[1].rc,
        },
        "figures": [asdict(f) for f in figs],
        "passed": all(f.passed is not False for f in figs),
    }
    args.json.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    print(f"measured: {commit}\nresults: {args.json}")
    return 0 if data["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
