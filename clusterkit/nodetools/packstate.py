"""``ck-pack``: where a pack's tasks stand (status), its results (collect) and its tasks'
durations, read from the pack's directory (``packdir``) and ``squeue``.

It runs on the head, through ``ck-pack`` over SSH from the host or by users there; stdlib
only, as it runs with the nodes' python3.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clusterkit.errors import SlurmError
from clusterkit.nodetools.packdir import (
    ROOT_NAME,
    PackDir,
    PackError,
    Record,
    RunSpec,
    is_finished,
    latest,
    load_json,
    read_records,
)
from clusterkit.slurm import SQUEUE_ARGV, WAITING_STATES, SlurmJob, parse_squeue

PROG = "ck-pack"
FINAL_FAILURES = ("failed", "timeout", "oom", "skipped")

_ARRAY_ITEM = re.compile(r"^(\d+)(?:-(\d+)(?::(\d+))?)?$")


# ---------------------------------------------------------------------------------------------
# squeue


def array_indexes(expr: str) -> set[int]:
    """Indexes of an array expression as squeue prints them: ``"0-3,7,9-15:2%4"``."""
    found: set[int] = set()
    body = expr.split("%", maxsplit=1)[0].strip()
    for item in filter(None, body.split(",")):
        m = _ARRAY_ITEM.match(item.strip())
        if m is None:
            raise PackError(f"array expression {expr!r} is not of the form 0-3,7,9-15:2%4")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) else lo
        step = int(m.group(3)) if m.group(3) else 1
        found.update(range(lo, hi + 1, step))
    return found


def element_states(jobs: Iterable[SlurmJob], job_id: int) -> dict[int, str]:
    """``{element: state}`` of array ``job_id``'s elements that have not ended: each is
    ``RUNNING`` (or another state of a started job, ``COMPLETING`` too) or ``PENDING``
    (waiting, requeued too)."""
    states: dict[int, str] = {}
    for job in jobs:
        # A requeued element is COMPLETING before it is PENDING again, and a completing one may
        # still be writing: neither has written all it ever will.
        if job.array_job_id != job_id or (job.is_finished and job.state != "COMPLETING"):
            continue
        state = "PENDING" if job.state in WAITING_STATES else job.state
        if job.array_task_id is not None:
            states[job.array_task_id] = state
        elif job.array_task_string:  # the array's pending rest, e.g. "4-31%8"
            states.update(dict.fromkeys(array_indexes(job.array_task_string), state))
    return states


def squeue_jobs() -> list[SlurmJob]:
    """Every job ``slurmctld`` holds, from ``squeue --json``."""
    try:
        done = subprocess.run(SQUEUE_ARGV, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PackError(f"squeue failed: {exc}") from None
    if done.returncode != 0:
        raise PackError(f"squeue failed (exit {done.returncode}): {done.stderr.strip()}")
    try:
        return parse_squeue(done.stdout)
    except SlurmError as exc:
        raise PackError(str(exc)) from None


# ---------------------------------------------------------------------------------------------
# status


@dataclass
class TaskView:
    """Where one task stands: its latest run's record and what its element is doing."""

    task: int
    run: int
    element: int | None  # None: in a block of the queue that no element has taken yet
    state: str  # done | running | pending | failed | timeout | oom | lost
    record: Record | None = None


@dataclass
class PackStatus:
    pack: str
    tasks: int
    views: list[TaskView]
    runs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def counts(self) -> Counter[str]:
        return Counter(v.state for v in self.views)

    def summary(self) -> dict[str, Any]:
        counts = self.counts
        failed = sum(counts[s] for s in (*FINAL_FAILURES, "lost"))
        return {
            "pack": self.pack,
            "tasks": self.tasks,
            "done": counts["done"],
            "running": counts["running"],
            "failed": failed,
            "pending": counts["pending"],
            "failures": {s: counts[s] for s in (*FINAL_FAILURES, "lost") if counts[s]},
            "finished": not any(r["live"] for r in self.runs),
            "runs": self.runs,
        }


def pack_status(pack: PackDir, jobs: Sequence[SlurmJob]) -> PackStatus:
    """Every task's state from the manifest and ``jobs`` (squeue, read BEFORE the manifest:
    an element squeue no longer holds had written all it ever will)."""
    info = pack.info()
    views: dict[int, TaskView] = {}
    run_rows = []
    for spec in pack.runs():  # a later run's view of a task replaces an earlier one's
        job_id = pack.job_id(spec.run)
        live = element_states(jobs, job_id) if job_id is not None else {}
        run_rows.append(
            {"run": spec.run, "job_id": job_id, "elements": spec.elements, "live": len(live)}
        )
        records = pack.run_records(spec.run)
        running = {e for e, state in live.items() if state != "PENDING"}
        shown: set[int | None] = set()  # running elements whose current task is shown
        for task, element in assignment(pack, spec):
            rec = records.get(task)
            # A block no element has taken yet waits for any element of the run still alive.
            alive = element in live if element is not None else bool(live)
            view = TaskView(task, spec.run, element, _state(rec, spec, alive), rec)
            # the first task waiting in a running element's blocks is the one it runs
            if view.state == "pending" and element in running and element not in shown:
                view.state = "running"
                shown.add(element)
            views[task] = view
    ordered = [views[t] for t in sorted(views)]
    return PackStatus(str(info.get("pack", pack.root.name)), len(ordered), ordered, run_rows)


def assignment(pack: PackDir, spec: RunSpec) -> Iterator[tuple[int, int | None]]:
    """Every task of run ``spec`` with the element that has it (``None``: its block is not
    taken yet), block by block in queue order."""
    owners = pack.claims(spec.run) if spec.queued else None
    for block in range(spec.block_count):
        element = block if owners is None else owners.get(block)
        for task in spec.block_tasks(block):
            yield task, element


def _state(rec: Record | None, spec: RunSpec, live: bool) -> str:
    if rec is not None and rec.get("state") == "done":
        return "done"
    if live and not is_finished(rec, spec.attempts):
        return "pending"
    if rec is None:
        return "lost"  # its element ended without running it (cancelled, killed, time limit)
    state = str(rec.get("state"))
    return state if state in FINAL_FAILURES else "failed"


def failed_tasks(status: PackStatus) -> list[int]:
    """Tasks that ended without success: what ``pack retry`` runs again."""
    return [v.task for v in status.views if v.state in (*FINAL_FAILURES, "lost")]


def failed_groups(pack: PackDir, status: PackStatus) -> list[dict[str, Any]]:
    """The failed tasks by the shape of the run that last had them (``cpus``, ``memory_mb``,
    ``time_s``, ``gpus``; ``None`` in runs written before shapes) with the tasks each needs
    (``after``), for ``pack retry``."""
    runs = {spec.run: spec for spec in pack.runs()}
    groups: dict[tuple[Any, ...], dict[str, Any]] = {}
    for view in status.views:
        if view.state in (*FINAL_FAILURES, "lost"):
            spec = runs[view.run]
            key = (spec.cpus, spec.memory_mb, spec.time_s, spec.gpus)
            group = groups.setdefault(key, {"cpus": spec.cpus, "memory_mb": spec.memory_mb,
                                            "time_s": spec.time_s, "gpus": spec.gpus,
                                            "tasks": [], "after": {}})  # fmt: skip
            group["tasks"].append(view.task)
            if spec.after and view.task in spec.after:
                group["after"][str(view.task)] = list(spec.after[view.task])
    return list(groups.values())


# ---------------------------------------------------------------------------------------------
# collect

CSV_FIELDS = (
    "task", "state", "exit", "signal", "runtime", "node", "run", "attempt", "restart",
    "start", "out", "err", "command",
)  # fmt: skip


def collect(pack: PackDir, status: PackStatus) -> dict[str, Any]:
    """Write ``results.csv`` (one row per task) and ``summary.json``; return the summary."""
    commands = pack.commands(v.task for v in status.views)
    rows = [_row(v, commands[v.task]) for v in status.views]
    tmp = pack.root / "results.csv.tmp"
    with open(tmp, "w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, pack.root / "results.csv")
    summary = {**status.summary(), **_timing(status.views)}
    tmp = pack.root / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, pack.root / "summary.json")
    return summary


def _row(view: TaskView, command: str) -> dict[str, Any]:
    rec = view.record or {}
    row = {k: rec.get(k, "") for k in CSV_FIELDS}
    row.update(task=view.task, state=view.state, command=command)
    return {k: ("" if v is None else v) for k, v in row.items()}


def _timing(views: Sequence[TaskView]) -> dict[str, Any]:
    recs = [v.record for v in views if v.record is not None and v.state == "done"]
    if not recs:
        return {"task_seconds": 0.0, "makespan_s": None, "nodes": {}}
    starts = [float(r["start"]) for r in recs]
    ends = [float(r["start"]) + float(r["runtime"]) for r in recs]
    return {
        "task_seconds": round(sum(float(r["runtime"]) for r in recs), 3),
        "makespan_s": round(max(ends) - min(starts), 3),
        "nodes": dict(sorted(Counter(str(r.get("node")) for r in recs).items())),
    }


# ---------------------------------------------------------------------------------------------
# the command


def resolve(root: Path, pack: str | None) -> PackDir:
    """Pack ``pack`` under ``root``, or the most recently submitted one."""
    if pack:
        path = root / pack
        if not (path / "pack.json").exists():
            raise PackError(f"no pack {pack!r} in {root}; `ck-pack list` shows them")
        return PackDir(path)
    packs = list_packs(root)
    if not packs:
        raise PackError(f"no pack in {root} yet; submit one with `clusterkit pack submit`")
    return PackDir(root / packs[-1]["pack"])


def list_packs(root: Path) -> list[dict[str, Any]]:
    """Every pack under ``root``, oldest first (by submission time)."""
    found = []
    for info_path in root.glob("*/pack.json"):
        try:
            info = load_json(info_path)
        except PackError:
            continue
        found.append({**info, "pack": info_path.parent.name})
    return sorted(found, key=lambda p: (str(p.get("created", "")), p["pack"]))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Inspect packs of short tasks (see `clusterkit pack --help`); prints JSON.",
        epilog=(
            "commands:\n"
            "  list     every pack under ~/ck-pack\n"
            "  status   done / running / failed / pending counts of a pack\n"
            "  failed   the ids of the tasks that ended without success\n"
            "  collect  write results.csv and summary.json in the pack's directory\n"
            "  durations  every pack's done tasks' run times, in seconds, by pack\n"
            "PACK defaults to the most recently submitted pack."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("command", choices=("list", "status", "failed", "collect", "durations"))
    p.add_argument("pack", nargs="?", help="the pack's name (default: the latest)")
    p.add_argument("--root", type=Path, default=Path.home() / ROOT_NAME, help="where packs live")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        out = _command(args.command, args.root, args.pack)
    except (PackError, OSError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(out))
    return 0


def durations(root: Path) -> dict[str, list[float]]:
    """Every pack's done tasks' run times (the last attempt of each), by pack."""
    found = {}
    for info in list_packs(root):
        pack = PackDir(root / info["pack"])
        recs: list[Record] = []
        for path in (pack.root / "manifest").glob("*.jsonl"):
            recs += read_records(path)
        recs.sort(key=lambda r: int(r.get("run") or 0))  # a retry's records come last
        found[info["pack"]] = [
            round(float(r.get("runtime") or 0.0), 3)
            for r in latest(recs).values()
            if r.get("state") == "done"
        ]
    return found


def _command(command: str, root: Path, name: str | None) -> Any:
    if command == "list":
        return list_packs(root)
    if command == "durations":
        return durations(root)
    pack = resolve(root, name)
    jobs = squeue_jobs()  # before the manifest: see pack_status
    status = pack_status(pack, jobs)
    if command == "status":
        return status.summary()
    if command == "failed":
        return {**status.summary(), "failed_tasks": failed_tasks(status),
                "failed_groups": failed_groups(pack, status)}  # fmt: skip
    return collect(pack, status)


if __name__ == "__main__":
    sys.exit(main())
