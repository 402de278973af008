"""``ck-pack``: a pack's layout on shared storage, its manifest, its status and its summary.

A *pack* is many short tasks run by Slurm job arrays (``clusterkit pack submit``). It lives
in one directory on shared storage, ``~/ck-pack/PACK/``::

    pack.json          what was submitted (task count, options)
    tasks.txt          one shell command per line; task N is line N (from 0)
    tasks.idx          N+1 little-endian uint64 byte offsets into tasks.txt (seek, not scan)
    runs/R.json        run R: 0 is the submission, 1, 2 ... are ``pack retry``; its blocks
    runs/R.ids         the task ids run R covers, one per line (retries only)
    runs/R.sh          the job script of run R;  runs/R.job  its array job id
    claims/R-B         block B of run R is taken: the element that took it, and its job
    manifest/R-E.jsonl one JSON record per task attempt of array element E of run R
    out/N.out, N.err   what task N printed (only when it printed something)
    logs/R-E.log       the element's own Slurm output (the runner's messages)

A run's tasks are cut into *blocks*, largest first (``guided_blocks``), and its elements
take blocks from that shared queue: an element takes a block by creating its claim file
(``O_EXCL``, atomic on a local file system and over NFS and SFTP), so each block has one
element, and an element that finishes early takes more instead of idling while another
works through a fixed chunk. Runs written before the queue (no ``blocks`` in R.json) keep
fixed chunks: element E runs tasks E*chunk .. (E+1)*chunk-1.

A manifest file has one writer (its element), so nothing appends concurrently over a
network file system; a requeued element reads what it already finished. This module reads
them (host side through ``ck-pack`` over SSH, or users on the head) and is stdlib only: it
runs on the nodes' python3.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import struct
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clusterkit.errors import ClusterkitError, SlurmError
from clusterkit.slurm import SQUEUE_ARGV, WAITING_STATES, SlurmJob, parse_squeue

PROG = "ck-pack"
FORMAT = 1
ROOT_NAME = "ck-pack"  # under the user's home
FINAL_FAILURES = ("failed", "timeout", "oom")

_ARRAY_ITEM = re.compile(r"^(\d+)(?:-(\d+)(?::(\d+))?)?$")

Record = dict[str, Any]


class PackError(ClusterkitError):
    """A pack's tasks, options or directory are invalid or unreadable, or a pack command
    failed; one line says which file or option and why. One class for the host's side
    (``clusterkit.pack``) and the nodes'."""


# ---------------------------------------------------------------------------------------------
# layout


@dataclass(frozen=True)
class RunSpec:
    """One job array of a pack: which tasks it covers and how they are chunked."""

    run: int
    chunk: int
    elements: int
    count: int  # tasks covered
    retries: int = 0  # extra attempts of a failed task inside its element
    time_s: float | None = None  # per-task time limit
    chdir: str | None = None  # tasks' working directory (None: the user's home)
    ids: tuple[int, ...] | None = None  # None: tasks 0 .. count-1
    blocks: tuple[int, ...] | None = None  # sizes of the queue's blocks; None: fixed chunks

    @property
    def attempts(self) -> int:
        return self.retries + 1

    @property
    def queued(self) -> bool:
        """Whether elements take blocks from the run's queue (else: fixed chunks)."""
        return self.blocks is not None

    @property
    def block_count(self) -> int:
        return len(self.blocks) if self.blocks is not None else self.elements

    def block_tasks(self, block: int) -> list[int]:
        """The task ids of block ``block``, in order (fixed chunks: block E is element E's)."""
        if self.blocks is None:
            lo, hi = block * self.chunk, min((block + 1) * self.chunk, self.count)
        else:
            lo = _offsets(self.blocks)[block]
            hi = lo + self.blocks[block]
        if self.ids is None:
            return list(range(lo, hi))
        return list(self.ids[lo:hi])

    def element_tasks(self, element: int) -> list[int]:
        """The task ids a fixed-chunk run's element ``element`` runs, in order."""
        return self.block_tasks(element)

    def to_json(self) -> dict[str, Any]:
        data = {k: v for k, v in vars(self).items() if k not in ("ids", "blocks")}
        data["ids"] = None if self.ids is None else f"runs/{self.run}.ids"
        if self.blocks is not None:
            data["blocks"] = list(self.blocks)
        return data


_OFFSETS: dict[tuple[int, ...], list[int]] = {}


def _offsets(blocks: tuple[int, ...]) -> list[int]:
    """Where each block starts, cached per run (an element asks once per block)."""
    found = _OFFSETS.get(blocks)
    if found is None:
        found = [0]
        for size in blocks:
            found.append(found[-1] + size)
        _OFFSETS[blocks] = found
    return found


def guided_blocks(count: int, elements: int, size: int | None = None) -> tuple[int, ...]:
    """Block sizes for ``count`` tasks and ``elements`` elements: each block a share of what
    is left, ``ceil(left / (2 * elements))``, down to one task (guided self-scheduling), so
    the first blocks are large (few claims) and the last ones single tasks (the elements
    end together). ``size`` fixes every block's size instead (``--chunk``)."""
    sizes = []
    left = count
    while left > 0:
        take = size or max(1, -(-left // (2 * max(1, elements))))
        take = min(take, left)
        sizes.append(take)
        left -= take
    return tuple(sizes)


@dataclass(frozen=True)
class PackDir:
    """The files of one pack directory."""

    root: Path

    def run_path(self, run: int, suffix: str) -> Path:
        return self.root / "runs" / f"{run}.{suffix}"

    def manifest(self, run: int, element: int) -> Path:
        return self.root / "manifest" / f"{run}-{element}.jsonl"

    @property
    def claims_dir(self) -> Path:
        return self.root / "claims"

    def claim(self, run: int, block: int) -> Path:
        return self.claims_dir / f"{run}-{block}"

    def taken(self, run: int) -> set[int]:
        """The blocks of run ``run`` some element has taken: one directory listing (on a
        node, one round trip to the shared storage)."""
        prefix = f"{run}-"
        try:
            names = os.listdir(self.claims_dir)
        except FileNotFoundError:
            return set()
        return {
            int(name[len(prefix) :])
            for name in names
            if name.startswith(prefix) and name[len(prefix) :].isdigit()
        }

    def claims(self, run: int) -> dict[int, int | None]:
        """``{block: element}`` of run ``run``'s taken blocks (``None``: being written);
        reads every claim file, so it is for the head's side and for restarts."""
        found: dict[int, int | None] = {}
        for block in self.taken(run):
            try:
                text = self.claim(run, block).read_text(encoding="ascii").split()
            except (OSError, UnicodeDecodeError):
                text = []
            found[block] = int(text[0]) if text and text[0].isdigit() else None
        return found

    def out(self, task: int, stream: str) -> Path:
        return self.root / "out" / f"{task}.{stream}"

    def info(self) -> dict[str, Any]:
        return _load_json(self.root / "pack.json")

    def runs(self) -> list[RunSpec]:
        """Every run, in order (``runs/0.json``, ``runs/1.json``, ...)."""
        found = []
        run = 0
        while self.run_path(run, "json").exists():
            found.append(self.load_run(run))
            run += 1
        if not found:
            raise PackError(f"{self.root}: not a pack directory (no runs/0.json)")
        return found

    def load_run(self, run: int) -> RunSpec:
        path = self.run_path(run, "json")
        data = _load_json(path)
        ids: tuple[int, ...] | None = None
        if data.get("ids"):
            ids = tuple(int(line) for line in (self.root / data["ids"]).read_text().split())
        try:
            return RunSpec(
                run=int(data["run"]),
                chunk=int(data["chunk"]),
                elements=int(data["elements"]),
                count=int(data["count"]),
                retries=int(data.get("retries", 0)),
                time_s=data.get("time_s"),
                chdir=data.get("chdir"),
                ids=ids,
                blocks=None if data.get("blocks") is None else tuple(map(int, data["blocks"])),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise PackError(f"{path}: not a run description ({exc})") from None

    def job_id(self, run: int) -> int | None:
        """The array job id of ``run`` (``None`` if its submission never returned one)."""
        try:
            text = self.run_path(run, "job").read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        head = text.split(";")[0]
        return int(head) if head.isdigit() else None

    def commands(self, ids: Iterable[int]) -> dict[int, str]:
        """The commands of tasks ``ids``, read by offset (a chunk never reads the whole file)."""
        found: dict[int, str] = {}
        with open(self.root / "tasks.idx", "rb") as idx, open(self.root / "tasks.txt", "rb") as txt:
            for task in ids:
                idx.seek(8 * task)
                raw = idx.read(16)
                if len(raw) != 16:
                    raise PackError(f"{self.root / 'tasks.idx'}: no task {task}")
                start, end = struct.unpack("<QQ", raw)
                txt.seek(start)
                found[task] = txt.read(end - start).decode("utf-8").rstrip("\n")
        return found


def task_files(commands: Sequence[str]) -> tuple[bytes, bytes]:
    """``tasks.txt`` and ``tasks.idx`` for ``commands`` (each one line, no newline inside)."""
    lines = [c.encode("utf-8") + b"\n" for c in commands]
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line))
    return b"".join(lines), struct.pack(f"<{len(offsets)}Q", *offsets)


def _load_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PackError(f"{path}: missing; is this a pack directory?") from None
    except (OSError, ValueError) as exc:
        raise PackError(f"{path}: unreadable: {exc}") from None
    if not isinstance(data, dict):
        raise PackError(f"{path}: not a JSON object")
    return data


# ---------------------------------------------------------------------------------------------
# manifest


def read_records(path: Path) -> list[Record]:
    """The records of one manifest file; a line cut short by a crash is skipped."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    records = []
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("task"), int):
            records.append(rec)
    return records


def latest(records: Iterable[Record]) -> dict[int, Record]:
    """The last record of every task (records are in the order they were written)."""
    return {rec["task"]: rec for rec in records}


def is_finished(rec: Record | None, attempts: int) -> bool:
    """Whether a task whose latest record is ``rec`` needs no further attempt in its run."""
    if rec is None:
        return False
    return rec.get("state") == "done" or int(rec.get("attempt", 1)) >= attempts


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
    ``RUNNING`` (or another state of a started job) or ``PENDING`` (waiting, requeued too)."""
    states: dict[int, str] = {}
    for job in jobs:
        if job.array_job_id != job_id or job.is_finished:
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
        records = run_records(pack, spec)
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


def run_records(pack: PackDir, spec: RunSpec) -> dict[int, Record]:
    """The latest record of every task of run ``spec`` (all its elements' manifests)."""
    found: dict[int, Record] = {}
    for path in sorted(pack.manifest(spec.run, 0).parent.glob(f"{spec.run}-*.jsonl")):
        found.update(latest(read_records(path)))
    return found


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
            info = _load_json(info_path)
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
        return {**status.summary(), "failed_tasks": failed_tasks(status)}
    return collect(pack, status)


if __name__ == "__main__":
    sys.exit(main())
