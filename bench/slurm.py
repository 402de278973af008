"""Benchmark of a configured Slurm cluster on the local provider: ``up`` and a job array.

It measures the figures of the Slurm issue, each against a baseline measured in the same run:

1. ``clusterkit up`` of a head + 4 compute nodes from nothing to a working, verified cluster
   (target <= 60 s), and of a head + 16 (target <= 120 s; skipped with ``--quick``). The spec
   is ``{name: benchslurm, groups: [{name: compute, min: N, max: N, cpus: 8, memory_mb:
   4096}]}``. When ``up`` ends with its own verification step (a ``✓ Verified ...`` line), the
   figure is ``up`` alone; otherwise it is ``up`` followed by ``clusterkit verify NAME`` when
   that command exists, or ``up`` alone (unverified); the output says which. The baseline is
   ``up --no-configure`` of the same size (nodes and SSH only), so the ratio is what
   configuring and verifying Slurm costs. The per-step durations ``up`` prints to stderr
   (``✓ <step> (<seconds>s)``) are parsed and shown for every run. When an ``up`` fails, the
   compute nodes' boot consoles and the head's sshd log are read before ``down`` removes them,
   and what they say is reported.
2. ``sbatch --wait --array=0-999 -o /dev/null --wrap true`` submitted as the cluster user on
   the head + 4 cluster through ``clusterkit ssh NAME -u ckuser``, timed from submit to
   ``sbatch`` returning (target <= 30 s). The baseline runs the same 1000 trivial tasks with
   no scheduler: 1000 ``/bin/true`` processes fork+exec'd by a shell loop on one compute node
   through a single ``clusterkit ssh`` session. The table also shows the per-task scheduling
   overhead, ``(array - baseline) / 1000``.

   After the array it reads the head's slurmctld log (through ``clusterkit ssh``) for the
   job's own record: submit to last task end, tasks started by the main scheduler and by
   backfill, scheduling passes and the gaps between them, and the peak of tasks running at
   once; and ``scontrol show config`` for the settings that explain them. When the target is
   missed it prints what it found, and (unless ``--no-what-if``) applies the candidate fix to
   the live cluster's slurm.conf only (``scontrol reconfigure``; nothing in the repository
   changes) and runs the array again, reported as an informational row.

Run it as root from the repository root (a full run takes about 15 minutes, most of it the
array under the shipped configuration):

    .venv/bin/python bench/slurm.py [--quick] [--no-what-if] [--home DIR]

It prints a table (figure, measured, target, baseline, ratio, PASS/FAIL), writes
``bench/results/slurm.json`` (raw samples, the commit) and exits 1 when a target is missed
(2 when it cannot run). Its cluster is ``benchslurm`` under ``--home`` (default
/tmp/ck-bench-slurm); it is destroyed on exit, also on failure, Ctrl-C and SIGTERM.
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import json
import os
import platform
import re
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

from common import Clusterkit as Cli
from common import Result, last_line, sh, table  # bench/ is on sys.path when run

from clusterkit.providers.local import cgroups, net

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "slurm.json"

NAME = "benchslurm"
USER = "ckuser"
# The project's benchmark shape (the packing issue's workload): compute nodes declaring 8 CPUs
# each, more than this 2-core machine has, as local nodes may (SlurmdParameters=config_overrides).
CPUS = 8
MEMORY_MB = 4096
SMALL = 4
BIG = 16
UP_TARGETS_S = {SMALL: 60.0, BIG: 120.0}
ARRAY_TASKS = 1000
ARRAY_TARGET_S = 30.0

UP_TIMEOUT_S = 900.0
VERIFY_TIMEOUT_S = 300.0
ARRAY_TIMEOUT_S = 1200.0  # the shipped configuration needs about 500 s on a loaded machine
SSH_TIMEOUT_S = 120.0

ARRAY_COMMAND = f"sbatch --wait --array=0-{ARRAY_TASKS - 1} -o /dev/null --wrap true"
BASELINE_COMMAND = (
    "s=$(date +%s%N); "
    f"for i in $(seq {ARRAY_TASKS}); do /bin/true; done; "
    'e=$(date +%s%N); echo "inner_ns $((e - s))"'
)

# sbatch's _job_wait (src/sbatch/sbatch.c): first poll after 2 s, then the sleep is multiplied
# by 4 while it is below both MinJobAge/2 and MAX_WAIT_SLEEP_TIME.
SBATCH_FIRST_POLL_S = 2
SBATCH_MAX_POLL_S = 32

# The candidate fix tried on the live cluster when the array misses its target (see
# ``diagnose``). DefMemPerCPU is added from the spec: RealMemory / CPUs.
WHAT_IF_SCHEDULER = (
    "batch_sched_delay=0,sched_min_interval=0,default_queue_depth=200,"
    "partition_job_depth=200,bf_continue,bf_interval=1"
)
WHAT_IF_MIN_JOB_AGE = 5

STEP_LINE = re.compile(r"^[✓✗] (?P<label>.+) \((?P<seconds>\d+(?:\.\d+)?)s\)\s*$")
VERIFIED_STEP = "Verified"
STRUCTURAL = "(not a setting) "  # prefix of findings that no slurm.conf change removes


# ---------------------------------------------------------------------------------------------
# running commands


# ---------------------------------------------------------------------------------------------
# clusterkit through its CLI


@dataclass(frozen=True)
class Clusterkit:
    """The real CLI with its own ``CLUSTERKIT_HOME``; specs are written to ``specs``."""

    home: Path
    specs: Path

    def run(self, *args: str, timeout: float = SSH_TIMEOUT_S) -> Result:
        return Cli(self.home).run(*args, check=False, timeout=timeout)

    def spec(self, computes: int) -> Path:
        path = self.specs / f"{NAME}-{computes}.yaml"
        path.write_text(
            f"{{name: {NAME}, groups: [{{name: compute, min: {computes}, max: {computes}, "
            f"cpus: {CPUS}, memory_mb: {MEMORY_MB}}}]}}\n",
            encoding="utf-8",
        )
        return path

    def up(self, spec: Path, configure: bool) -> Result:
        extra = [] if configure else ["--no-configure"]
        return self.run("up", "-f", str(spec), *extra, timeout=UP_TIMEOUT_S)

    def has_verify(self) -> bool:
        return self.run("verify", "--help").rc == 0

    def verify(self) -> Result:
        return self.run("verify", NAME, timeout=VERIFY_TIMEOUT_S)

    def ssh(self, command: str, node: str | None = None, user: str = "root",
            timeout: float = SSH_TIMEOUT_S) -> Result:  # fmt: skip
        where = [node] if node else []
        return self.run("ssh", NAME, *where, "-u", user, "--", command, timeout=timeout)

    def down(self) -> Result:
        return self.run("down", NAME, timeout=SSH_TIMEOUT_S)

    def residue(self) -> list[str]:
        """What is left of the cluster on this machine (empty when nothing is)."""
        found = [f"netns {n}" for n in net.cluster_netns(NAME)]
        found += [f"link {link}" for link in net.cluster_links(NAME)]
        found += [f"cgroup {path}" for path in cgroups.leftovers(NAME)]
        if (self.home / "clusters" / NAME).exists():
            found.append(f"dir {self.home / 'clusters' / NAME}")
        return found

    def ensure_gone(self) -> list[str]:
        """``down`` the cluster if anything of it exists; what is still left afterwards."""
        if self.residue():
            self.down()
        return self.residue()


def host_load() -> dict[str, float | int]:
    """The machine is shared: its load and other clusters' node holders give context."""
    one, five, _ = os.getloadavg()
    others = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                cmdline = Path(entry.path, "cmdline").read_bytes()
            except OSError:
                continue
            if cmdline.startswith(b"ck-node:") and not cmdline.startswith(
                f"ck-node:{NAME}:".encode()
            ):
                others += 1
    return {"load1": round(one, 2), "load5": round(five, 2), "other_cluster_nodes": others}


# ---------------------------------------------------------------------------------------------
# part 1: up


@dataclass
class UpRun:
    computes: int
    configure: bool
    seconds: float  # the measured figure: up, plus verify when that was run separately
    up_seconds: float
    rc: int
    verification: str  # "in up", "verify command", "none" (baseline: "n/a")
    verify_seconds: float | None
    verify_rc: int | None
    steps: dict[str, float]
    ready_line: str
    load: dict[str, float | int]
    down_seconds: float
    residue: list[str]
    errors: list[str] = field(default_factory=list)
    evidence: list[str] = field(default_factory=list)  # of a failed up, read before its down


def parse_steps(stderr: str) -> dict[str, float]:
    """``{step label: seconds}`` from the CLI's ``✓ <step> (<seconds>s)`` lines, in order."""
    steps: dict[str, float] = {}
    for line in stderr.splitlines():
        if m := STEP_LINE.match(line.strip()):
            steps[m["label"]] = float(m["seconds"])
    return steps


def verification_of(run: UpRun) -> str:
    return {
        "in up": "up, ending with its verification step",
        "verify command": "up, then `clusterkit verify`",
        "none": "up only: no verification step and no verify command (unverified)",
        "up failed": f"nothing: up failed (exit {run.rc}) before a working cluster",
        "n/a": "up --no-configure",
    }[run.verification]


def measure_up(
    ck: Clusterkit, computes: int, configure: bool, has_verify: bool, keep: bool = False
) -> UpRun:
    """One ``up`` from nothing; the cluster is downed afterwards unless ``keep``."""
    errors = [f"left from before: {r}" for r in ck.ensure_gone()]
    load = host_load()
    up = ck.up(ck.spec(computes), configure)
    steps = parse_steps(up.stderr)
    if up.rc != 0:
        errors.append(f"up exit {up.rc}: {last_line(up.stderr)}")
    seconds, verification = up.seconds, "n/a"
    verify_s: float | None = None
    verify_rc: int | None = None
    if configure:
        if up.rc != 0:
            verification = "up failed"
        elif any(label.startswith(VERIFIED_STEP) for label in steps):
            verification = "in up"
        elif has_verify:
            verification = "verify command"
            if up.rc == 0:
                verify = ck.verify()
                verify_s, verify_rc = verify.seconds, verify.rc
                seconds += verify.seconds
                if verify.rc != 0:
                    errors.append(f"verify exit {verify.rc}: {last_line(verify.stderr)}")
        else:
            verification = "none"
    ready = next((ln for ln in up.stderr.splitlines() if " is ready in " in ln), "")
    run = UpRun(
        computes, configure, seconds, up.seconds, up.rc, verification, verify_s, verify_rc,
        steps, ready.strip(), load, 0.0, [], errors,
    )  # fmt: skip
    if up.rc != 0:
        run.evidence = failure_evidence(ck)
    if not keep or up.rc != 0:
        finish_up(ck, run)
    return run


def failure_evidence(ck: Clusterkit) -> list[str]:
    """What the local nodes' own logs say about a failed ``up`` (they go with ``down``).

    The failed lines of the compute nodes' boot consoles, and the connections the head's
    sshd refused past ``MaxStartups`` (its log is ``nodes/HEAD/sshd.log``: sshd runs ``-e``).
    """
    nodes = ck.home / "clusters" / NAME / "nodes"
    found = []
    for console in sorted(nodes.glob("*/console.log")):
        lines = console.read_text(encoding="utf-8", errors="replace").splitlines()
        for i, line in enumerate(lines):
            if "FAILED" in line:
                before = next((b for b in reversed(lines[:i]) if "boot[" not in b), "")
                found.append(f"{console.parent.name}: {line.strip()} [{before.strip()}]")
    sshd_log = nodes / f"{NAME}-head" / "sshd.log"
    if sshd_log.exists():
        text = sshd_log.read_text(encoding="utf-8", errors="replace")
        drops = sum(1 for ln in text.splitlines() if "past MaxStartups" in ln)
        episodes = text.count("beginning MaxStartups throttling")
        if drops or episodes:
            found.append(
                f"{NAME}-head sshd: {drops} connection(s) past MaxStartups in "
                f"{episodes} throttling episode(s)"
            )
    return found


def up_findings(runs: list[UpRun]) -> list[str]:
    """Why an ``up`` failed, when its evidence says."""
    findings = []
    for run in runs:
        drops = [e for e in run.evidence if "past MaxStartups" in e]
        resets = [e for e in run.evidence if "FAILED" in e]
        if drops and resets:
            found = (re.search(r"\[([^][]*)\]$", e) for e in resets)
            causes = sorted({m.group(1) for m in found if m and m.group(1)})
            findings.append(
                f"head + {run.computes}: {len(resets)} compute node(s) failed to boot on an "
                f"SSH connection to the head ({'; '.join(causes) or 'see their consoles'}), "
                f"while {drops[0].replace(' sshd:', ' had its sshd drop')}. The head's sshd "
                "runs with OpenSSH's "
                "default MaxStartups 10:30:100 (templates/ssh/sshd_config.j2 sets none): past "
                "10 unauthenticated connections it refuses 30 % of new ones, and every "
                "compute's boot script opens its sftp, sshfs /shared and sshfs home "
                "connections to the head the moment the head is ready, each once, without a "
                "retry (templates/boot/compute.sh.j2). Fix: a MaxStartups above the node count "
                "in the head's sshd_config (e.g. 64:30:256 for 16 computes), and retries "
                "around the boot script's sftp/sshfs calls."
            )
        elif run.evidence:
            findings.append(f"head + {run.computes}: " + "; ".join(run.evidence))
    return findings


def finish_up(ck: Clusterkit, run: UpRun) -> None:
    """``down`` the cluster of ``run`` and record how long it took and what it left."""
    down = ck.down()
    run.down_seconds = down.seconds
    if down.rc != 0:
        run.errors.append(f"down exit {down.rc}: {last_line(down.stderr)}")
    run.residue = ck.residue()


def short(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe_up(run: UpRun) -> str:
    kind = "configured" if run.configure else "--no-configure"
    extra = f" + verify {run.verify_seconds:.1f} s" if run.verify_seconds is not None else ""
    status = "" if not run.errors else f"  ERRORS: {short('; '.join(run.errors))}"
    return (
        f"  up head + {run.computes} ({kind}): {run.up_seconds:.1f} s{extra} "
        f"(rc {run.rc}, load {run.load['load1']}){status}"
    )


# ---------------------------------------------------------------------------------------------
# part 2: the job array


@dataclass
class ArrayLog:
    """What the head's slurmctld log says about one array job."""

    job_id: int
    tasks_started: int = 0
    by_backfill: int = 0
    tasks_done: int = 0
    first_start_s: float | None = None  # after submit
    span_s: float | None = None  # submit to the last task's end
    passes: int = 0  # bursts of task starts (starts less than 50 ms apart are one pass)
    median_gap_s: float | None = None  # between passes
    peak_running: int = 0
    mean_running: float | None = None  # time-weighted, first start to last end
    median_task_s: float | None = None  # a task's start to its end: how long it holds a CPU
    mean_refill_s: float | None = None  # a task's end to the next start on its node


@dataclass
class ArrayRun:
    label: str  # "shipped configuration" or "what-if: ..."
    seconds: float  # clusterkit ssh ... sbatch --wait, submit to return
    rc: int
    job_id: int | None
    log: ArrayLog | None
    config: dict[str, str]
    load: dict[str, float | int]
    sdiag: Sdiag | None = None
    errors: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Sdiag:
    """slurmctld's own counters over one array (``sdiag --reset`` before, ``sdiag`` after)."""

    main_cycles: int | None
    backfill_cycles: int | None
    rpc_counts: dict[str, int]


@dataclass
class BaselineRun:
    seconds: float  # the whole clusterkit ssh session
    inner_seconds: float | None  # the loop alone, measured on the node
    rc: int


LOG_LINE = re.compile(r"^\[(?P<ts>[0-9T:.\-]+)\] (?P<msg>.*)$")


@dataclass(frozen=True)
class TaskRecord:
    start: datetime
    node: str
    end: datetime | None = None


def parse_array_log(text: str, job_id: int) -> ArrayLog:
    """Statistics of array job ``job_id`` from slurmctld log lines (timestamps to the ms).

    Tasks start on ``sched: Allocate JobId=J_T(R) NodeList=N`` (main scheduler) or
    ``sched/backfill: _start_job: Started JobId=J_T(R) in P on N`` and end on
    ``_job_complete: JobId=J_T(R) done``; ``R`` is the task's own job record.
    """
    submit = re.compile(rf"_slurm_rpc_submit_batch_job: JobId={job_id}\b")
    start = re.compile(
        rf"(?P<who>sched: Allocate|sched/backfill: _start_job: Started) "
        rf"JobId={job_id}_\d+\((?P<rec>\d+)\).*?(?:NodeList=| on )(?P<node>\S+)"
    )
    done = re.compile(rf"_job_complete: JobId={job_id}_\d+\((?P<rec>\d+)\) done")
    log = ArrayLog(job_id)
    submitted: datetime | None = None
    tasks: dict[str, TaskRecord] = {}
    for line in text.splitlines():
        m = LOG_LINE.match(line.strip())
        if not m:
            continue
        try:
            ts = datetime.fromisoformat(m["ts"])
        except ValueError:
            continue
        if submit.search(m["msg"]):
            submitted = ts
        elif s := start.search(m["msg"]):
            tasks[s["rec"]] = TaskRecord(ts, s["node"])
            log.by_backfill += s["who"].startswith("sched/backfill")
        elif (d := done.search(m["msg"])) and d["rec"] in tasks:
            tasks[d["rec"]] = TaskRecord(tasks[d["rec"]].start, tasks[d["rec"]].node, ts)
    log.tasks_started = len(tasks)
    ended = [t for t in tasks.values() if t.end is not None]
    log.tasks_done = len(ended)
    if not tasks:
        return log
    starts = sorted(t.start for t in tasks.values())
    _concurrency(log, tasks.values())
    pass_starts = [t for i, t in enumerate(starts) if i == 0 or _s(starts[i - 1], t) > 0.05]
    log.passes = len(pass_starts)
    gaps = [_s(a, b) for a, b in itertools.pairwise(pass_starts)]
    log.median_gap_s = round(statistics.median(gaps), 3) if gaps else None
    if ended:
        log.median_task_s = round(statistics.median(_s(t.start, t.end) for t in ended if t.end), 3)
        refills = _refills(tasks.values())
        log.mean_refill_s = round(statistics.mean(refills), 3) if refills else None
    if submitted is not None:
        log.first_start_s = round(_s(submitted, starts[0]), 3)
        if ended:
            log.span_s = round(_s(submitted, max(t.end for t in ended if t.end)), 3)
    return log


def _s(a: datetime, b: datetime) -> float:
    return (b - a).total_seconds()


def _concurrency(log: ArrayLog, tasks: Iterable[TaskRecord]) -> None:
    """Peak and time-weighted mean of tasks running at once (a start before an end)."""
    events = sorted(
        [(t.start, 1) for t in tasks] + [(t.end, -1) for t in tasks if t.end is not None],
        key=lambda e: (e[0], -e[1]),
    )
    running, area = 0, 0.0
    for (ts, delta), (nxt, _) in itertools.pairwise([*events, events[-1]]):
        running += delta
        log.peak_running = max(log.peak_running, running)
        area += running * _s(ts, nxt)
    total = _s(events[0][0], events[-1][0])
    log.mean_running = round(area / total, 2) if total > 0 else None


def _refills(tasks: Iterable[TaskRecord]) -> list[float]:
    """For each ended task: seconds until the next task started on its node (if one did)."""
    by_node: dict[str, list[datetime]] = {}
    records = list(tasks)
    for t in records:
        by_node.setdefault(t.node, []).append(t.start)
    for starts in by_node.values():
        starts.sort()
    refills = []
    for t in records:
        if t.end is None:
            continue
        later = by_node[t.node]
        i = bisect.bisect_left(later, t.end)
        if i < len(later):
            refills.append(_s(t.end, later[i]))
    return refills


CONFIG_KEYS = (
    "SchedulerParameters", "SchedulerType", "SelectTypeParameters", "DefMemPerCPU",
    "DefMemPerNode", "MinJobAge", "ProctrackType", "TaskPlugin", "PriorityType",
)  # fmt: skip


def slurm_config(ck: Clusterkit) -> dict[str, str]:
    """The settings of ``scontrol show config`` that bear on array throughput."""
    out = ck.ssh("scontrol show config").stdout
    config: dict[str, str] = {}
    for line in out.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() in CONFIG_KEYS:
            config[key.strip()] = value.strip()
    # A partition's DefMemPerCPU overrides the global one (scontrol -o: one line each).
    for line in ck.ssh("scontrol -o show partition").stdout.splitlines():
        fields = dict(f.partition("=")[::2] for f in line.split())
        if fields.get("Default") == "YES":
            for key in ("DefMemPerCPU", "DefMemPerNode"):
                if key in fields:
                    config[f"default partition {key}"] = fields[key]
    return config


def wait_idle(ck: Clusterkit, computes: int, timeout: float = 60.0) -> bool:
    """True once Slurm shows every compute node idle (no job left on them)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = ck.ssh("sinfo -h -N -p compute -t idle -o %N").stdout.split()
        if len(set(out)) == computes:
            return True
        time.sleep(1)
    return False


def run_array(ck: Clusterkit, label: str, computes: int) -> ArrayRun:
    errors = [] if wait_idle(ck, computes) else ["compute nodes not all idle before the array"]
    config = slurm_config(ck)
    load = host_load()
    reset = ck.ssh("sdiag --reset").rc == 0
    result = ck.ssh(ARRAY_COMMAND, user=USER, timeout=ARRAY_TIMEOUT_S)
    sdiag = parse_sdiag(ck.ssh("sdiag").stdout) if reset else None
    m = re.search(r"Submitted batch job (\d+)", result.stdout)
    job_id = int(m.group(1)) if m else None
    if result.rc != 0:
        errors.append(f"sbatch exit {result.rc}: {last_line(result.stderr or result.stdout)}")
        if job_id is not None:  # a timeout: leave no tasks behind for the next run
            ck.ssh(f"scancel {job_id}")
    log = None
    if job_id is not None:
        text = ck.ssh(
            f"grep -E 'JobId={job_id}[_ ]' /var/log/slurm/slurmctld.log", timeout=60
        ).stdout
        log = parse_array_log(text, job_id)
        if log.tasks_done != ARRAY_TASKS:
            errors.append(f"slurmctld log shows {log.tasks_done} of {ARRAY_TASKS} tasks done")
    return ArrayRun(label, result.seconds, result.rc, job_id, log, config, load, sdiag, errors)


SDIAG_RPC = re.compile(r"^\s*(?P<rpc>(?:REQUEST|MESSAGE)_\w+)\s+\(\s*\d+\)\s+count:(?P<n>\d+)")


def parse_sdiag(text: str) -> Sdiag:
    """Scheduling cycles of the main scheduler and of backfill, and RPC counts by type."""
    cycles: dict[str, int] = {}
    section = ""
    rpcs: dict[str, int] = {}
    for line in text.splitlines():
        if line.startswith("Main schedule statistics"):
            section = "main"
        elif line.startswith("Backfilling stats"):
            section = "backfill"
        elif (m := re.match(r"\s*Total cycles:\s*(\d+)", line)) and section not in cycles:
            cycles[section] = int(m.group(1))
        elif r := SDIAG_RPC.match(line):
            rpcs[r["rpc"]] = int(r["n"])
    return Sdiag(cycles.get("main"), cycles.get("backfill"), rpcs)


def run_baseline(ck: Clusterkit) -> BaselineRun:
    result = ck.ssh(BASELINE_COMMAND, node="compute-st-1", user=USER)
    m = re.search(r"inner_ns (\d+)", result.stdout)
    return BaselineRun(result.seconds, int(m.group(1)) / 1e9 if m else None, result.rc)


def describe_array(run: ArrayRun) -> str:
    log = run.log
    detail = ""
    if log is not None:
        span = f"{log.span_s:.1f} s" if log.span_s is not None else "?"
        detail = (
            f"; slurmctld: submit to last end {span}, peak {log.peak_running} running, "
            f"{log.passes} passes, {log.by_backfill} started by backfill"
        )
    status = "" if not run.errors else f"  ERRORS: {'; '.join(run.errors)}"
    return f"  array ({run.label}): {run.seconds:.1f} s (rc {run.rc}){detail}{status}"


def sbatch_polls(min_job_age: int, horizon: float) -> list[int]:
    """When ``sbatch --wait`` asks slurmctld whether the job is done, in seconds after submit."""
    t, sleep, polls = 0, SBATCH_FIRST_POLL_S, []
    while t <= horizon:
        t += sleep
        polls.append(t)
        if sleep < min_job_age // 2 and sleep < SBATCH_MAX_POLL_S:
            sleep *= 4
    return polls


def _seconds(value: str) -> int | None:
    m = re.match(r"(\d+)", value)
    return int(m.group(1)) if m else None


def scheduler_params(config: dict[str, str]) -> dict[str, str]:
    raw = config.get("SchedulerParameters", "")
    return dict(
        (p.partition("=")[0], p.partition("=")[2]) for p in raw.split(",") if p and p != "(null)"
    )


def diagnose(run: ArrayRun, computes: int) -> list[str]:
    """Why the array took as long as it did: findings from the log, sdiag and the settings."""
    log, config = run.log, run.config
    if log is None:
        return [STRUCTURAL + "no slurmctld record of the job: nothing to diagnose"]
    findings = []
    slots = computes * CPUS
    per_cpu = config.get("DefMemPerCPU", "") + config.get("default partition DefMemPerCPU", "")
    if log.peak_running < slots and not per_cpu[:1].isdigit():
        findings.append(
            f"Only {log.peak_running} of the {slots} CPUs ever ran a task at once: with "
            f"SelectTypeParameters={config.get('SelectTypeParameters', '?')} and no "
            f"DefMemPerCPU (DefMemPerNode={config.get('DefMemPerNode', '?')}), a job that asks "
            "for no memory is given all of its node's RealMemory, so a node runs one 1-CPU "
            f"task at a time. Fix: DefMemPerCPU={MEMORY_MB // CPUS} (a group's memory_mb / cpus)"
            " in slurm.conf (clusterkit/slurmconf.py, e.g. job_settings)."
        )
    params = scheduler_params(config)
    delay = _seconds(params.get("batch_sched_delay", "3")) or 0
    min_interval = _seconds(params.get("sched_min_interval", "2")) or 0
    bf_interval = _seconds(params.get("bf_interval", "30")) or 0
    throttled = delay > 0 or min_interval >= 100_000 or bf_interval > 1
    if throttled and log.median_gap_s is not None and log.median_gap_s >= 0.5:
        findings.append(
            f"Scheduling passes came {log.median_gap_s:.2f} s apart (median over "
            f"{log.passes} passes; {log.by_backfill} of {log.tasks_started} tasks started by "
            f"backfill){_sdiag_note(run.sdiag)}. SchedulerParameters="
            f"{config.get('SchedulerParameters')}: batch_sched_delay={delay} lets slurmctld's "
            "once-a-second background loop serve the scheduling request a batch job's end "
            f"queues only {delay} s after the previous pass; sched_min_interval={min_interval} "
            "us holds back the passes events trigger; backfill runs every "
            f"{bf_interval} s. Fix (slurmconf.SCHEDULER_PARAMETERS): batch_sched_delay=0, drop "
            "sched_min_interval (or 0), bf_interval=1."
        )
    over = log.span_s is not None and log.span_s > ARRAY_TARGET_S
    if over and not findings and log.mean_running is not None:
        # Only once the configuration's own causes are gone: what is left is structural.
        findings.append(STRUCTURAL + _slot_finding(log, slots, run.sdiag))
    min_age = _seconds(config.get("MinJobAge", "")) or 0
    if min_age > WHAT_IF_MIN_JOB_AGE and log.span_s is not None and run.seconds - log.span_s > 3:
        polls = ", ".join(str(p) for p in sbatch_polls(min_age, run.seconds)[:6])
        findings.append(
            f"sbatch --wait returned {run.seconds - log.span_s:.1f} s after the last task "
            f"ended ({log.span_s:.1f} s after submit): it asks slurmctld at {polls}, ... s "
            "after submit, its sleep growing x4 up to 32 s while below MinJobAge/2 "
            f"(MinJobAge={min_age}). Fix: MinJobAge={WHAT_IF_MIN_JOB_AGE} (SchedMD's "
            "high-throughput guide: 'a few seconds'; sbatch then asks every 2 s)."
        )
    return findings or [STRUCTURAL + "nothing stands out in the log or the configuration"]


def config_causes(findings: list[str]) -> bool:
    """True when a finding names a setting to change (the what-if run is worth making)."""
    return any(not f.startswith(STRUCTURAL) for f in findings)


def _sdiag_note(sdiag: Sdiag | None) -> str:
    if sdiag is None:
        return ""
    ends = sdiag.rpc_counts.get("REQUEST_COMPLETE_BATCH_SCRIPT")
    epilogs = sdiag.rpc_counts.get("MESSAGE_EPILOG_COMPLETE", 0)
    return (
        f"; sdiag: {sdiag.main_cycles} main and {sdiag.backfill_cycles} backfill cycles for "
        f"{ends} batch-job ends and {epilogs} epilog-complete messages"
    )


def _slot_finding(log: ArrayLog, slots: int, sdiag: Sdiag | None) -> str:
    """The structural bound: tasks start only in passes, so a CPU idles between tasks."""
    rate = log.tasks_done / log.span_s if log.span_s else 0.0
    cycle = (log.median_task_s or 0.0) + (log.mean_refill_s or 0.0)
    needed = ARRAY_TASKS * cycle / ARRAY_TARGET_S
    return (
        f"The CPUs were busy {log.mean_running:.1f} of {slots} on average: a task holds its "
        f"CPU {log.median_task_s:.2f} s (median, start to end), then the CPU waits "
        f"{log.mean_refill_s:.2f} s (mean) for the next start on its node, {rate:.1f} tasks/s "
        "overall. A batch job's end (REQUEST_COMPLETE_BATCH_SCRIPT) does not run the scheduler "
        "itself: tasks start only in the background loop's pass (at most "
        f"one a second), backfill's and the odd epilog-triggered one{_sdiag_note(sdiag)}. At "
        f"{cycle:.2f} s per task and CPU, {ARRAY_TASKS} tasks within {ARRAY_TARGET_S:.0f} s "
        f"need about {needed:.0f} CPUs in Slurm's view; this cluster has {slots} "
        f"({slots // CPUS} nodes x cpus {CPUS}). What is left: more CPUs per node in the spec, "
        "or fewer, longer tasks (pack several commands per array task)."
    )


def apply_what_if(ck: Clusterkit, computes: int) -> tuple[str, list[str]]:
    """Put the candidate fix into the live head's slurm.conf and reconfigure; (label, errors)."""
    settings = {
        "DefMemPerCPU": str(MEMORY_MB // CPUS),
        "SchedulerParameters": WHAT_IF_SCHEDULER,
        "MinJobAge": str(WHAT_IF_MIN_JOB_AGE),
    }
    conf = "/etc/slurm/slurm.conf"
    drop = " ".join(f"-e {shlex.quote(f'/^{key}=/d')}" for key in settings)
    lines = " ".join(shlex.quote(f"{k}={v}") for k, v in settings.items())
    result = ck.ssh(
        f"sed -i {drop} {conf} && printf '%s\\n' {lines} >> {conf} && scontrol reconfigure"
    )
    errors = [] if result.rc == 0 else [f"reconfigure exit {result.rc}: {last_line(result.stderr)}"]
    deadline = time.monotonic() + 60
    while not errors and _seconds(slurm_config(ck).get("MinJobAge", "")) != WHAT_IF_MIN_JOB_AGE:
        if time.monotonic() > deadline:
            errors.append("slurmctld did not take the what-if settings within 60 s")
        time.sleep(1)
    label = "what-if: " + ", ".join(f"{k}={v}" for k, v in settings.items())
    return label, errors


@dataclass
class ArrayPart:
    baseline: list[BaselineRun] = field(default_factory=list)
    runs: list[ArrayRun] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)
    findings_after: list[str] = field(default_factory=list)  # of the what-if run


def measure_array(ck: Clusterkit, computes: int, what_if: bool) -> ArrayPart:
    """On the live cluster: baseline, the array, a diagnosis, then maybe the what-if run."""
    part = ArrayPart()
    part.baseline.append(run_baseline(ck))
    b = part.baseline[-1]
    inner = f"{b.inner_seconds:.2f} s in the loop" if b.inner_seconds is not None else "?"
    print(f"  baseline: {ARRAY_TASKS} x /bin/true over one ssh: {b.seconds:.2f} s ({inner})",
          flush=True)  # fmt: skip
    stock = run_array(ck, "shipped configuration", computes)
    part.runs.append(stock)
    print(describe_array(stock), flush=True)
    if stock.seconds > ARRAY_TARGET_S or stock.rc != 0:
        part.findings = diagnose(stock, computes)
        if what_if and config_causes(part.findings):
            label, errors = apply_what_if(ck, computes)
            run = run_array(ck, label, computes)
            run.errors = errors + run.errors
            part.runs.append(run)
            print(describe_array(run), flush=True)
            if run.seconds > ARRAY_TARGET_S:
                part.findings_after = diagnose(run, computes)
        elif what_if:
            print("  no what-if run: the findings name no setting to change", flush=True)
    return part


# ---------------------------------------------------------------------------------------------
# report


@dataclass(frozen=True)
class Figure:
    name: str
    measured: float | None  # None: could not be measured (counts as missed)
    unit: str
    target: float | None  # measured must be <= target; None: informational
    baseline: float | None = None
    counted: bool = True  # False: shown, not part of the exit code

    @property
    def ratio(self) -> float | None:
        if self.measured is None or not self.baseline:
            return None
        return self.measured / self.baseline

    @property
    def passed(self) -> bool:
        if self.target is None:
            return True
        return self.measured is not None and self.measured <= self.target

    def row(self) -> list[str]:
        def fmt(v: float | None) -> str:
            if v is None:
                return "n/a"
            return f"{v:.2f} {self.unit}" if self.unit else f"{v:g}"

        if not self.counted:
            result = "info" if self.target is None else f"info ({self.verdict})"
        else:
            result = self.verdict
        return [
            self.name,
            fmt(self.measured),
            f"<= {fmt(self.target)}" if self.target is not None else "-",
            fmt(self.baseline) if self.baseline is not None else "-",
            f"{self.ratio:.2f}x" if self.ratio is not None else "-",
            result,
        ]

    @property
    def verdict(self) -> str:
        return "PASS" if self.passed else "FAIL"


@dataclass
class Results:
    ups: list[UpRun] = field(default_factory=list)
    array: ArrayPart | None = None


def up_figures(results: Results, sizes: list[int]) -> list[Figure]:
    figs = []
    for n in sizes:
        real = next((r for r in results.ups if r.computes == n and r.configure), None)
        base = next((r for r in results.ups if r.computes == n and not r.configure), None)
        how = {"in up": "incl. verification", "verify command": "+ clusterkit verify",
               "none": "UNVERIFIED", "up failed": "up FAILED"}.get(
            real.verification, "?") if real else "?"  # fmt: skip
        ok = real is not None and real.rc == 0 and real.verify_rc in (None, 0)
        figs.append(
            Figure(
                f"up, head + {n} ({how}) vs --no-configure",
                real.seconds if ok and real else None,
                "s",
                UP_TARGETS_S[n],
                base.seconds if base and base.rc == 0 else None,
            )
        )
    return figs


def array_figures(part: ArrayPart | None, computes: int) -> list[Figure]:
    name = f"sbatch --array=0-{ARRAY_TASKS - 1} --wait, {computes} computes"
    if part is None or not part.runs:
        return [Figure(name, None, "s", ARRAY_TARGET_S)]
    done = [b.seconds for b in part.baseline if b.rc == 0]
    base = statistics.median(done) if done else None
    stock = part.runs[0]
    measured = stock.seconds if stock.rc == 0 and not stock.errors else None
    overhead = None
    if measured is not None and base is not None:
        overhead = (measured - base) / ARRAY_TASKS * 1000
    figs = [
        Figure(f"{name} vs {ARRAY_TASKS} x /bin/true", measured, "s", ARRAY_TARGET_S, base),
        Figure("  per-task scheduling overhead", overhead, "ms", None, counted=False),
    ]
    if stock.log and stock.log.span_s is not None:
        figs.append(info_span("  same job, slurmctld log: submit to last task end", stock, base))
    for run in part.runs[1:]:
        ok = run.rc == 0 and not run.errors
        what_if = "  what-if (live slurm.conf only, see findings), sbatch --wait"
        figs.append(
            Figure(what_if, run.seconds if ok else None, "s", ARRAY_TARGET_S, base, counted=False)
        )
        if ok and run.log and run.log.span_s is not None:
            figs.append(info_span("  what-if, slurmctld log: submit to last task end", run, base))
    return figs


def info_span(name: str, run: ArrayRun, base: float | None) -> Figure:
    span = run.log.span_s if run.log else None
    return Figure(name, span, "s", ARRAY_TARGET_S, base, counted=False)


def error_count(results: Results) -> int:
    count = sum(len(r.errors) + len(r.residue) for r in results.ups)
    if results.array:
        count += sum(b.rc != 0 for b in results.array.baseline)
        count += len(results.array.runs[0].errors) if results.array.runs else 1
    return count


def figures(results: Results, sizes: list[int]) -> list[Figure]:
    return [
        *up_figures(results, sizes),
        *array_figures(results.array, SMALL),
        Figure("errors and residue (failed runs, verify, downs)", error_count(results), "", 0),
    ]


def step_table(ups: list[UpRun]) -> str:
    """Per-step seconds of every ``up``, one column per run."""
    labels: list[str] = []
    for run in ups:
        labels += [label for label in run.steps if label not in labels]
    header = ["step"] + [
        f"+{r.computes} {'configured' if r.configure else 'no-configure'}" for r in ups
    ]
    rows = [[label] + [f"{r.steps[label]:.1f} s" if label in r.steps else "-" for r in ups]
            for label in labels]  # fmt: skip
    rows.append(["total (wall clock of `up`)"] + [f"{r.up_seconds:.1f} s" for r in ups])
    return table([header, *rows])


def measured_commit(start: str, end: str) -> str:
    """The commit measured; clusterkit is installed editable, so a change mid-run is mixed."""
    return start if start == end else f"{start} -> {end} (HEAD or clusterkit/ changed mid-run)"


def git_commit() -> str:
    """HEAD, with ``-dirty`` when clusterkit/ has uncommitted changes (they were measured)."""
    head = sh(["git", "-C", str(REPO), "rev-parse", "HEAD"])
    dirty = sh(["git", "-C", str(REPO), "status", "--porcelain", "--", "clusterkit"])
    if head.rc != 0:
        return "unknown"
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def write_json(path: Path, quick: bool, figs: list[Figure], results: Results, commit: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "benchmark": "slurm",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "quick": quick,
        "commit": commit,
        "machine": {"kernel": platform.release(), "cpus": os.cpu_count()},
        "spec": {"name": NAME, "cpus": CPUS, "memory_mb": MEMORY_MB},
        "figures": [{**asdict(f), "ratio": f.ratio, "pass": f.passed} for f in figs],
        "up": [asdict(r) for r in results.ups],
        "array": asdict(results.array) if results.array else None,
        "passed": all(f.passed for f in figs if f.counted),
    }
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def report(results: Results, sizes: list[int], quick: bool, json_path: Path, commit: str) -> bool:
    """Print the step table, findings and the figures; write the JSON; True when all pass."""
    figs = figures(results, sizes)
    print("\nSteps of `up` (from its `✓ <step> (<seconds>s)` lines):")
    print(step_table(results.ups))
    configured = [r for r in results.ups if r.configure]
    for run in configured:
        print(f"up head + {run.computes} measured: {verification_of(run)}")
    for run in results.ups:
        for problem in run.errors + [f"residue: {r}" for r in run.residue]:
            print(f"  up head + {run.computes}: {short(problem)}")
    failed = up_findings(results.ups)
    if failed:
        print("\nWhy `up` failed (the nodes' logs, read before `down`):")
        for i, finding in enumerate(failed, 1):
            print(f"  {i}. {finding}")
    if results.array and results.array.findings:
        print("\nWhy the array is slow (slurmctld log and `scontrol show config` on the head):")
        for i, finding in enumerate(results.array.findings, 1):
            print(f"  {i}. {finding}")
    if results.array and results.array.findings_after:
        print("\nWith the candidate fix on the live cluster (the what-if run), still:")
        for i, finding in enumerate(results.array.findings_after, 1):
            print(f"  {i}. {finding}")
    header = ["figure", "measured", "target", "baseline", "ratio", "result"]
    print("\n" + table([header] + [f.row() for f in figs]))
    print("(info rows are diagnostics, not targets)")
    write_json(json_path, quick, figs, results, commit)
    print(f"\nmeasured: {commit}\nresults: {json_path}")
    return all(f.passed for f in figs if f.counted)


# ---------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="head + 4 only (no head + 16)")
    parser.add_argument(
        "--no-what-if", dest="what_if", action="store_false",
        help="do not re-run a slow array with the candidate fix applied to the live cluster",
    )  # fmt: skip
    parser.add_argument(
        "--home", type=Path, default=Path("/tmp/ck-bench-slurm"), help="CLUSTERKIT_HOME to use"
    )
    parser.add_argument("--json", type=Path, default=RESULTS, help="where to write results")
    return parser.parse_args()


def measure(ck: Clusterkit, sizes: list[int], what_if: bool) -> Results:
    """Everything, baseline first at each size; the cluster is destroyed however this ends."""
    results = Results()
    has_verify = ck.has_verify()
    try:
        for n in sizes:
            print(f"head + {n}: up --no-configure (baseline), then up", flush=True)
            results.ups.append(measure_up(ck, n, configure=False, has_verify=has_verify))
            print(describe_up(results.ups[-1]), flush=True)
            keep = n == SMALL
            run = measure_up(ck, n, configure=True, has_verify=has_verify, keep=keep)
            results.ups.append(run)
            print(describe_up(run), flush=True)
            if keep and run.rc == 0:
                print(f"head + {n}: {ARRAY_TASKS}-task array as {USER}", flush=True)
                try:
                    results.array = measure_array(ck, n, what_if)
                finally:
                    finish_up(ck, run)
        return results
    finally:
        if ck.residue():
            ck.down()


def main() -> int:
    args = parse_args()
    if os.geteuid() != 0:
        print("slurm: needs root (namespaces, bridges)", file=sys.stderr)
        return 2
    # A SIGTERM unwinds like Ctrl-C does, through the clean-up of ``measure``.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    sizes = [SMALL] if args.quick else [SMALL, BIG]
    args.home.mkdir(parents=True, exist_ok=True)
    start = git_commit()
    with tempfile.TemporaryDirectory(prefix="ck-bench-slurm-") as tmp:
        ck = Clusterkit(args.home, Path(tmp))
        try:
            results = measure(ck, sizes, args.what_if)
        except (OSError, subprocess.SubprocessError) as exc:
            print(f"slurm: cannot measure: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print(f"slurm: interrupted; cluster {NAME} removed", file=sys.stderr)
            return 130
    commit = measured_commit(start, git_commit())
    return 0 if report(results, sizes, args.quick, args.json, commit) else 1


if __name__ == "__main__":
    sys.exit(main())
