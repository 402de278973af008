"""Benchmark of high-throughput packing: four workloads of short tasks, seven ways to run them.

Workloads, on a local cluster of 4 compute nodes declaring 8 CPUs each (32 slots; the nodes
are namespaces on this machine, so all of them share its real cores):

  W1  4,000 tasks of ``sleep 0.5``
  W2  20,000 tasks of ``sleep 0.05``
  W3  2,000 tasks of long-tailed durations: 99 % log-normal with a median of 0.5 s
      (sigma 0.5), 1 % of 20 s, drawn with a fixed seed
  W4  W1 with every fourth task needing 4 CPUs

The ideal makespan of a workload is its CPU-seconds over the 32 slots, or its longest task
if that is longer. Variants, one after another on the same cluster and machine:

  sbatch    one ``sbatch --wrap`` per task, from a shell loop on the head (W1 only: 4,000
            submissions already take minutes, and the ratio is the point)
  array     a plain job array, one task per element (one array per shape in W4)
  parallel  GNU parallel per node through ``srun`` inside one allocation of 4 x 8 CPUs, node
            i taking every fourth task (not W4: parallel has no per-task CPU count)
  hq        HyperQueue (``hyperqueue.LocalCluster``) on this machine with 4 workers of 8
            cores: no Slurm in its way, so a bound on what it would do in an allocation
  xargs     the bare limit: ``xargs -P 32`` of the same commands on this machine, no
            scheduler and no record of anything (not W4: xargs has no CPU counts either)
  pack      ``clusterkit pack submit`` from this machine (W4: its ``@cpus=4`` lines)
  container pack with ``--container``: each task in its own crun container of an image of
            the host's ``sh`` and ``sleep`` (W1 only: the cost of a container per task)

Each span runs from the start of the submission until the tool says the work is done: for
the Slurm variants until ``squeue`` on the head shows none of the user's jobs (polled every
0.2 s in the same SSH session), for pack from before its ``clusterkit pack submit`` on this
machine (reading the tasks, SSH and the upload included), for hq until ``wait_for_jobs``
returns, for xargs until it exits. Efficiency is ideal / span.

Targets (the packing issue's): W1 pack >= 96 % of ideal; W2 pack's efficiency >= 90 % of
xargs'; W3 and W4 pack's span within 10 % of the best other variant's (or better); pack at
least matches hq and parallel on every workload (their span / pack's >= 1.0); ``pack
submit`` of 100,000 tasks (``--hold``, cancelled at once) <= 2 s; ``pack status`` of that
pack <= 1 s.

Run it as root from the repository root (about 40 minutes; ``--only W1,W3`` picks
workloads, ``--skip sbatch,array`` variants), with HyperQueue installed in the same venv
(``pip install hyperqueue``):

    .venv/bin/python bench/htc.py [--only W1,W2] [--skip sbatch] [--home DIR]

It prints a table per workload and the targets, writes ``bench/results/htc.json`` and
exits 1 when a target is missed (2 when it cannot run). The cluster is destroyed on exit,
also on failure, Ctrl-C and SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from common import Clusterkit as Cli
from common import Result, last_line, table  # bench/ is on sys.path when run

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from tests.rootfs import build_image  # noqa: E402 - the tests' image, from the host's programs

RESULTS = REPO / "bench" / "results" / "htc.json"

NAME = "pkbench"
USER = "ckuser"
COMPUTES = 4
CPUS = 8
SLOTS = COMPUTES * CPUS
MEMORY_MB = 4096
INSTANCE_TYPE = "c7i.2xlarge"
BIG = 100_000
SEED = 18
RUN_TIMEOUT_S = 3600.0
HOME = Path("/tmp/ck-bench-htc")
POLL = f'while squeue -h -u {USER} -o %i | grep -q .; do sleep 0.2; done; echo "end $(date +%s.%N)"'
# One task per array element: the element runs its line of the tasks file.
ARRAY_SCRIPT = """#!/bin/bash
exec bash -c "$(sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" "$1")"
"""
PARALLEL_SCRIPT = """#!/bin/bash
# No CPU binding: a local node declares more CPUs than the machine has.
srun --cpu-bind=none -N{nodes} -n{nodes} -c{cpus} bash -c \\
  'awk -v n={nodes} -v i=$SLURM_NODEID "(NR - 1) % n == i" $HOME/bench/{w}.txt | \\
   parallel --will-cite -j{cpus} --joblog $HOME/bench/par.{w}.$SLURM_NODEID'
"""


@dataclass(frozen=True)
class Workload:
    key: str
    what: str
    seconds: list[float]  # each task's duration
    cpus: list[int]  # each task's CPUs

    @property
    def ideal(self) -> float:
        work = sum(s * c for s, c in zip(self.seconds, self.cpus, strict=True))
        return max(work / SLOTS, *self.seconds)

    def commands(self) -> list[str]:
        return [f"sleep {s:g}" for s in self.seconds]

    def shaped(self) -> list[str]:
        """The commands as a pack's TASKS file: a task of more CPUs says so on its line."""
        return [f"@cpus={c} {cmd}" if c > 1 else cmd
                for cmd, c in zip(self.commands(), self.cpus, strict=True)]  # fmt: skip


def workloads() -> dict[str, Workload]:
    rng = random.Random(SEED)  # noqa: S311 - a fixed workload, not a secret
    tail = [20.0 if rng.random() < 0.01 else round(rng.lognormvariate(math.log(0.5), 0.5), 3)
            for _ in range(2000)]  # fmt: skip
    return {
        "W1": Workload("W1", "4,000 x 0.5 s", [0.5] * 4000, [1] * 4000),
        "W2": Workload("W2", "20,000 x 0.05 s", [0.05] * 20_000, [1] * 20_000),
        "W3": Workload("W3", "2,000 long-tailed (median 0.5 s, 1 % of 20 s)", tail, [1] * 2000),
        "W4": Workload(
            "W4", "W1, every fourth task 4 CPUs", [0.5] * 4000,
            [4 if i % 4 == 3 else 1 for i in range(4000)],
        ),
    }  # fmt: skip


@dataclass
class Span:
    variant: str
    seconds: float | None
    note: str = ""
    errors: list[str] = field(default_factory=list)


def ck(*args: str, timeout: float = 300.0) -> Result:
    return Cli(HOME).run(*args, check=False, timeout=timeout)


def as_user(command: str, timeout: float = RUN_TIMEOUT_S) -> Result:
    return ck("ssh", NAME, "-u", USER, "--", f"cd ~ && {command}", timeout=timeout)


def user_home() -> Path:
    """The cluster user's home as this machine sees it (the head's /shared is here)."""
    return HOME / "clusters" / NAME / "shared" / "home" / USER


def on_head(variant: str, submit: str) -> Span:
    """Run ``submit`` then poll squeue, in one SSH session; the span as the head measures it."""
    t = as_user(f's=$(date +%s.%N); echo "start $s"; {submit}; {POLL}')
    start = re.search(r"^start (\d+\.\d+)$", t.stdout, re.MULTILINE)
    end = re.search(r"^end (\d+\.\d+)$", t.stdout, re.MULTILINE)
    if t.rc != 0 or start is None or end is None:
        return Span(variant, None, errors=[f"exit {t.rc}: {last_line(t.stderr)}"])
    return Span(variant, float(end.group(1)) - float(start.group(1)))


# ---------------------------------------------------------------------------------------------
# variants


def run_sbatch(w: Workload) -> Span:
    loop = (
        f'while read -r c; do sbatch -Q -o /dev/null --wrap "$c" || exit 1; '
        f"done < bench/{w.key}.txt"
    )
    return on_head("sbatch", loop)


def run_array(w: Workload) -> Span:
    submits = []
    for cpus in sorted(set(w.cpus), reverse=True):
        n = w.cpus.count(cpus)
        submits.append(f"sbatch -Q -o /dev/null -c {cpus} --array=0-{n - 1} bench/array.sh "
                       f"bench/{w.key}.c{cpus}.txt")  # fmt: skip
    return on_head("array", " && ".join(submits))


def run_parallel(w: Workload) -> Span:
    script = PARALLEL_SCRIPT.format(nodes=COMPUTES, cpus=CPUS, w=w.key)
    (user_home() / "bench" / f"par.{w.key}.sh").write_text(script, encoding="utf-8")
    submit = (f"rm -f bench/par.{w.key}.[0-9]*; sbatch -Q -o bench/par.{w.key}.out "
              f"-N{COMPUTES} --ntasks-per-node={CPUS} bench/par.{w.key}.sh")  # fmt: skip
    span = on_head("parallel", submit)
    log = as_user(f"cat bench/par.{w.key}.[0-9]* | awk '$7 == \"0\"' | wc -l", 60)
    done = int(log.stdout.strip() or 0)  # the joblogs' header lines say "Exitval" there
    span.note = f"{done} of {len(w.seconds)} done"
    if done != len(w.seconds):
        span.errors.append(span.note)
    return span


def run_hq(w: Workload) -> Span:
    try:
        from hyperqueue import Job, LocalCluster
        from hyperqueue.cluster import WorkerConfig
        from hyperqueue.ffi.protocol import ResourceRequest
    except ImportError:
        return Span("hq", None, errors=["hyperqueue is not installed: pip install hyperqueue"])
    os.environ["TQDM_DISABLE"] = "1"  # its progress bar, on every poll
    with tempfile.TemporaryDirectory(prefix="ck-bench-hq-") as d, LocalCluster(d) as cluster:
        for _ in range(COMPUTES):
            cluster.start_worker(WorkerConfig(cores=CPUS))
        client = cluster.client()
        job = Job()
        for s, cpus in zip(w.seconds, w.cpus, strict=True):
            job.program(["sleep", f"{s:g}"], stdout=None, stderr=None,
                        resources=ResourceRequest(cpus=cpus))  # fmt: skip
        time.sleep(2)  # the workers register with the server
        start = time.monotonic()
        ok = client.wait_for_jobs([client.submit(job)], raise_on_error=False)
        seconds = time.monotonic() - start
    return Span("hq", seconds, errors=[] if ok else ["a task failed"])


def run_xargs(w: Workload) -> Span:
    durations = "".join(f"{s:g}\n" for s in w.seconds)
    start = time.monotonic()
    done = subprocess.run(["xargs", "-P", str(SLOTS), "-n", "1", "sleep"], input=durations,
                          text=True, check=False)  # fmt: skip
    return Span("xargs", time.monotonic() - start, errors=[] if done.returncode == 0 else
                [f"xargs exit {done.returncode}"])  # fmt: skip


def run_pack(w: Workload, tmp: Path, image: Path | None = None) -> Span:
    """``pack submit`` of the workload; with ``image``, each task in a container of it."""
    variant, pack = ("container", f"bench-{w.key}-c") if image else ("pack", f"bench-{w.key}")
    path = tmp / f"{w.key}.pack.txt"
    path.write_text("".join(f"{c}\n" for c in w.shaped()), encoding="utf-8")
    boxed = ["--container", str(image)] if image else []
    start = time.time()
    sub = ck("pack", "submit", NAME, str(path), "--name", pack, *boxed, "-o", "json")
    if sub.rc != 0:
        return Span(variant, None, errors=[last_line(sub.stderr)])
    poll = as_user(POLL)
    end = re.search(r"^end (\d+\.\d+)$", poll.stdout, re.MULTILINE)
    if end is None:
        return Span(variant, None, errors=[last_line(poll.stderr)])
    st = ck("pack", "collect", NAME, pack, "-d", str(tmp / "collect"), "-o", "json")
    summary = json.loads(st.stdout) if st.rc == 0 else {}
    arrays = json.loads(sub.stdout)["arrays"]
    note = (f"{len(arrays)} array(s), {sum(a['chunking']['elements'] for a in arrays)} "
            f"elements; first task start to last end {summary.get('makespan_s')} s; submit "
            f"{sub.seconds:.2f} s")  # fmt: skip
    errors = [] if summary.get("done") == len(w.seconds) else [f"{summary.get('done')} done"]
    return Span(variant, float(end.group(1)) - start, note, errors)


def big_pack(tmp: Path) -> dict[str, Any]:
    """``pack submit --hold`` of BIG tasks, ``pack status`` of it, then cancelled; and the
    plain ``sbatch --hold --array`` of as many elements, as a baseline."""
    path = tmp / "big.txt"
    path.write_text("".join(f"sleep 0.5 # {i}\n" for i in range(BIG)), encoding="utf-8")
    sub = ck("pack", "submit", NAME, str(path), "--hold", "--name", "bench-big", "-o", "json")
    status = ck("pack", "status", NAME, "bench-big", "-o", "json")
    if sub.rc == 0:
        as_user(f"scancel {' '.join(str(a['job_id']) for a in json.loads(sub.stdout)['arrays'])}")
    tasks = json.loads(status.stdout).get("tasks") if status.rc == 0 else None
    script = (
        "s=$(date +%s%N); j=$(sbatch --parsable --hold -o /dev/null "
        f"--array=0-{BIG - 1} --wrap 'sleep 0.5'); e=$(date +%s%N); scancel $j; "
        'echo "inner_ns $((e - s))"'
    )
    base = as_user(script, timeout=120)
    m = re.search(r"inner_ns (\d+)", base.stdout)
    return {
        "submit_s": sub.seconds if sub.rc == 0 else None,
        "status_s": status.seconds if status.rc == 0 and tasks == BIG else None,
        "sbatch_s": int(m.group(1)) / 1e9 if m else None,
        "errors": [last_line(r.stderr) for r in (sub, status) if r.rc != 0],
    }


# ---------------------------------------------------------------------------------------------


def measure(only: list[str], skip: set[str], tmp: Path) -> dict[str, Any]:
    spec = tmp / f"{NAME}.yaml"
    spec.write_text(
        f"{{name: {NAME}, groups: [{{name: compute, min: {COMPUTES}, max: {COMPUTES}, "
        f"cpus: {CPUS}, memory_mb: {MEMORY_MB}, instance_types: [{INSTANCE_TYPE}]}}]}}\n",
        encoding="utf-8",
    )
    up = ck("up", "-f", str(spec), timeout=900)
    if up.rc != 0:
        raise RuntimeError(f"up failed: {last_line(up.stderr)}")
    as_user("mkdir -p bench")  # the user's, so its jobs can write their logs there
    bench = user_home() / "bench"
    (bench / "array.sh").write_text(ARRAY_SCRIPT, encoding="utf-8")
    all_w = workloads()
    image = build_image(tmp / "image.tgz", ("sh", "sleep"))
    results: dict[str, Any] = {}
    for key in only:
        w = all_w[key]
        (bench / f"{key}.txt").write_text("".join(f"{c}\n" for c in w.commands()))
        for cpus in set(w.cpus):
            lines = [c for c, n in zip(w.commands(), w.cpus, strict=True) if n == cpus]
            (bench / f"{key}.c{cpus}.txt").write_text("".join(f"{c}\n" for c in lines))
        runs: list[tuple[str, Callable[[], Span]]] = [
            ("pack", partial(run_pack, w, tmp)),
            ("container", partial(run_pack, w, tmp, image)),
            ("hq", partial(run_hq, w)),
            ("xargs", partial(run_xargs, w)),
            ("parallel", partial(run_parallel, w)),
            ("array", partial(run_array, w)),
            ("sbatch", partial(run_sbatch, w)),
        ]
        spans = {}
        for variant, run in runs:
            if variant in skip or not applies(variant, key):
                continue
            print(f"{key} {variant}: running ...", flush=True)
            spans[variant] = run()
            s = spans[variant]
            shown = "n/a" if s.seconds is None else f"{s.seconds:.2f} s"
            print(f"  {shown} {s.note} {' '.join(s.errors)}", flush=True)
        results[key] = {"workload": w.what, "ideal_s": round(w.ideal, 3),
                        "spans": {k: asdict(v) for k, v in spans.items()}}  # fmt: skip
    print("submit and status of 100,000 tasks ...", flush=True)
    results["big"] = big_pack(tmp)
    return results


def applies(variant: str, workload: str) -> bool:
    if variant in ("sbatch", "container"):
        return workload == "W1"
    if variant in ("parallel", "xargs"):
        return workload != "W4"  # no per-task CPU counts
    return True


@dataclass(frozen=True)
class Target:
    name: str
    measured: float | None
    need: str
    passed: bool


def targets(results: dict[str, Any]) -> list[Target]:
    found = []

    def span(w: str, v: str) -> float | None:
        s = results.get(w, {}).get("spans", {}).get(v)
        return s["seconds"] if s and not s["errors"] else None

    if "W1" in results and (p := span("W1", "pack")):
        eff = results["W1"]["ideal_s"] / p
        found.append(Target("W1 pack: ideal / span", eff, ">= 0.96", eff >= 0.96))
    if "W2" in results and (p := span("W2", "pack")) and (x := span("W2", "xargs")):
        rel = x / p  # (ideal / pack) / (ideal / xargs)
        found.append(Target("W2 pack's efficiency / xargs'", rel, ">= 0.90", rel >= 0.90))
    for w in ("W3", "W4"):
        if w not in results or not (p := span(w, "pack")):
            continue
        others = [s for v in results[w]["spans"] if v != "pack" and (s := span(w, v))]
        if others:
            rel = p / min(others)
            found.append(Target(f"{w} pack's span / best other's", rel, "<= 1.10", rel <= 1.10))
    for w in ("W1", "W2", "W3", "W4"):
        for v in ("hq", "parallel"):
            if w in results and (p := span(w, "pack")) and (o := span(w, v)):
                found.append(Target(f"{w} {v}'s span / pack's", o / p, ">= 1.0", o / p >= 1.0))
    big = results.get("big", {})
    for key, label, limit in (("submit_s", "pack submit of 100,000 tasks (s)", 2.0),
                              ("status_s", "pack status of 100,000 tasks (s)", 1.0)):  # fmt: skip
        value = big.get(key)
        found.append(Target(label, value, f"<= {limit:g}", value is not None and value <= limit))
    return found


def report(results: dict[str, Any]) -> list[Target]:
    for key, r in results.items():
        if key == "big":
            continue
        ideal = r["ideal_s"]
        rows = [["variant", "span", "efficiency", "vs pack", "note"]]
        pack = r["spans"].get("pack", {}).get("seconds")
        for v, s in r["spans"].items():
            sec = s["seconds"]
            rows.append([
                v,
                "n/a" if sec is None else f"{sec:.2f} s",
                "-" if not sec else f"{ideal / sec:.1%}",
                "-" if not sec or not pack else f"{sec / pack:.2f}x",
                (s["note"] + " " + " ".join(s["errors"])).strip(),
            ])  # fmt: skip
        print(f"\n{key}: {r['workload']}; ideal {ideal:.2f} s\n{table(rows)}")
    big = results.get("big", {})
    print(f"\n100,000 tasks: pack submit {big.get('submit_s')} s, pack status "
          f"{big.get('status_s')} s, plain sbatch --array {big.get('sbatch_s')} s")  # fmt: skip
    found = targets(results)
    rows = [["target", "measured", "need", "result"]]
    rows += [[t.name, "n/a" if t.measured is None else f"{t.measured:.3f}", t.need,
              "PASS" if t.passed else "FAIL"] for t in found]  # fmt: skip
    print("\n" + table(rows))
    return found


def git_commit() -> str:
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=False).stdout.strip()  # fmt: skip
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "clusterkit"],
                           capture_output=True, text=True, check=False).stdout.strip()  # fmt: skip
    return (head or "unknown") + ("-dirty" if dirty else "")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--only", default="W1,W2,W3,W4", help="workloads, e.g. W1,W3")
    parser.add_argument("--skip", default="", help="variants to skip, e.g. sbatch,array")
    parser.add_argument("--home", type=Path, default=HOME, help="CLUSTERKIT_HOME to use")
    parser.add_argument("--json", type=Path, default=RESULTS, help="where to write results")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("htc: needs root (namespaces, bridges)", file=sys.stderr)
        return 2
    only = [w.strip().upper() for w in args.only.split(",") if w.strip()]
    unknown = [w for w in only if w not in workloads()]
    if unknown:
        print(f"htc: --only {unknown[0]}: the workloads are W1, W2, W3, W4", file=sys.stderr)
        return 2
    globals()["HOME"] = args.home
    args.home.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    commit = git_commit()
    with tempfile.TemporaryDirectory(prefix="ck-bench-htc-") as tmp:
        try:
            results = measure(only, set(filter(None, args.skip.split(","))), Path(tmp))
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            print(f"htc: cannot measure: {exc}", file=sys.stderr)
            return 2
        finally:
            ck("down", NAME, timeout=300)
    found = report(results)
    data = {
        "benchmark": "htc",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "commit": commit,
        "machine": {"kernel": platform.release(), "cpus": os.cpu_count()},
        "slots": SLOTS,
        "results": results,
        "targets": [asdict(t) for t in found],
        "passed": all(t.passed for t in found),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    print(f"measured: {commit}\nresults: {args.json}")
    return 0 if data["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
