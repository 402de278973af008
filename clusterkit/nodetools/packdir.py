"""A pack's directory on shared storage: its layout, its runs and their queue of blocks, and
its manifest records. Every element of a pack imports it when it starts (often dozens at
once on one node), so it is lean: the standard library's cheapest modules, no dataclasses.

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
    image/rootfs/      the root file system tasks run in (``--container``; packcontainer)
    logs/R-E.log       the element's own Slurm output (the runner's messages)

A run's tasks are cut into *blocks*, largest first (``guided_blocks``), and its elements
take blocks from that shared queue: an element takes a block by creating its claim file
(``O_EXCL``, atomic on a local file system and over NFS and SFTP), so each block has one
element, and an element that finishes early takes more instead of idling while another
works through a fixed chunk. Runs written before the queue (no ``blocks`` in R.json) keep
fixed chunks: element E runs tasks E*chunk .. (E+1)*chunk-1.

A manifest file has one writer (its element), so nothing appends concurrently over a
network file system; a requeued element reads what it already finished.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from clusterkit.errors import ClusterkitError

FORMAT = 1
ROOT_NAME = "ck-pack"  # under the user's home

Record = dict[str, Any]


class PackError(ClusterkitError):
    """A pack's tasks, options or directory are invalid or unreadable, or a pack command
    failed; one line says which file or option and why. One class for the host's side
    (``clusterkit.pack``) and the nodes'."""


# ---------------------------------------------------------------------------------------------
# layout


class RunSpec(NamedTuple):
    """One job array of a pack: which tasks it covers and how they are chunked."""

    run: int
    chunk: int
    elements: int
    count: int  # type: ignore[assignment]  # tasks covered (tuple.count is never used)
    retries: int = 0  # extra attempts of a failed task inside its element
    time_s: float | None = None  # per-task time limit
    chdir: str | None = None  # tasks' working directory (None: the user's home)
    ids: tuple[int, ...] | None = None  # None: tasks 0 .. count-1
    blocks: tuple[int, ...] | None = None  # sizes of the queue's blocks; None: fixed chunks
    cpus: int | None = None  # each task's shape (None in runs written before shapes)
    memory_mb: int | None = None
    gpus: int | None = None
    after: dict[int, tuple[int, ...]] | None = None  # the tasks each of its tasks needs done
    container: str | None = None  # the image's root file system in the pack; None: none

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
        data = {k: v for k, v in self._asdict().items() if k not in ("ids", "blocks", "after")}
        data["ids"] = None if self.ids is None else f"runs/{self.run}.ids"
        if self.blocks is not None:
            data["blocks"] = list(self.blocks)
        if self.after:
            data["after"] = {str(t): list(deps) for t, deps in self.after.items()}
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


class PackDir(NamedTuple):
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

    def run_records(self, run: int) -> dict[int, Record]:
        """The latest record of every task of run ``run`` (all its elements' manifests)."""
        found: dict[int, Record] = {}
        for path in sorted((self.root / "manifest").glob(f"{run}-*.jsonl")):
            found.update(latest(read_records(path)))
        return found

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
        return load_json(self.root / "pack.json")

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
        data = load_json(path)
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
                cpus=data.get("cpus"),
                memory_mb=data.get("memory_mb"),
                gpus=data.get("gpus"),
                after={int(t): tuple(d) for t, d in data["after"].items()}
                if data.get("after")
                else None,
                container=data.get("container"),
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


def load_json(path: Path) -> dict[str, Any]:
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
