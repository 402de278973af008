"""How a pack runs, before it touches a cluster: its options (``PackOptions``, durations,
memory) and its chunking (how many array elements, from the slots the partition's nodes
hold, and the blocks of tasks they take from the run's queue), with the element's time
limit that follows.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import NamedTuple

from clusterkit.nodetools.packdir import PackError, guided_blocks
from clusterkit.slurm import SlurmNode

MIN_ELEMENT_WORK_S = 2.0  # with --estimate, an element gets at least this much work: its
# start costs ~0.1 s of CPU and Slurm's launch ~1 s
KILL_GRACE_S = 5  # ck-pack-run's SIGTERM-to-SIGKILL grace, counted in an element's time
ELEMENT_SLACK_S = 120  # start-up and manifest writes of an element, in its time limit
PACK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd]?)$")
_MEMORY = re.compile(r"^(\d+)\s*([MGT]?)B?$", re.IGNORECASE)

# ---------------------------------------------------------------------------------------------
# options


def parse_duration(text: str, what: str = "--time") -> float:
    """Seconds from ``90``, ``1.5m``, ``2h``, ``1d`` or ``[[H:]M:]S`` (``1:30`` is 90 s)."""
    s = text.strip().lower()
    if ":" in s:
        parts = s.split(":")
        if len(parts) <= 3 and all(p.isdigit() for p in parts):
            return float(sum(int(p) * 60**i for i, p in enumerate(reversed(parts))))
    elif m := _DURATION.match(s):
        seconds = float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
        if seconds > 0:
            return seconds
    raise PackError(f"{what} {text!r}: give seconds (90), 90s, 1.5m, 2h, 1d or H:MM:SS, above 0")


def parse_memory(text: str, what: str = "--mem") -> int:
    """MiB from ``512``, ``512M``, ``2G``, ``1T`` (a bare number is MiB, as in Slurm)."""
    m = _MEMORY.match(text.strip())
    if m is None or int(m.group(1)) == 0:
        raise PackError(f"{what} {text!r}: give MiB (512), or 512M, 2G, above 0")
    return int(m.group(1)) * {"": 1, "m": 1, "g": 1024, "t": 1024 * 1024}[m.group(2).lower()]


class Shape(NamedTuple):
    """What one task needs; ``None`` fields are the pack's options (or Slurm's defaults)."""

    cpus: int | None = None
    memory_mb: int | None = None
    time_s: float | None = None
    gpus: int | None = None


@dataclass(frozen=True)
class PackOptions:
    """How every task of a pack runs; ``None`` means Slurm's (or clusterkit's) default."""

    cpus: int = 1
    memory_mb: int | None = None  # per task; None: the cluster's DefMemPerCPU
    time_s: float | None = None  # per task; None: no limit
    estimate_s: float | None = None  # expected duration; fewer elements for little work
    chunk: int | None = None  # tasks per block; None: guided sizes
    max_concurrent: int | None = None  # elements running at once (``--array=...%N``)
    retries: int = 0
    partition: str | None = None
    chdir: str | None = None  # the tasks' working directory; None: the user's home
    name: str | None = None  # the pack's name; None: a timestamp
    user: str | None = None  # the cluster user; None: the spec's first user
    hold: bool = False  # submit held (``scontrol release JOBID`` starts it)
    gpus: int = 0  # per task
    container: str | None = None  # the image tasks run in (packimage); None: on the node

    def shaped(self, shape: Shape | None) -> PackOptions:
        """These options with what ``shape`` sets instead."""
        if shape is None:
            return self
        changes = {k: v for k, v in shape._asdict().items() if v is not None}
        return replace(self, **changes) if changes else self

    @property
    def shape(self) -> Shape:
        return Shape(self.cpus, self.memory_mb, self.time_s, self.gpus)

    def check(self) -> None:
        for label, value in (("--cpus", self.cpus), ("--chunk", self.chunk),
                             ("--max-concurrent", self.max_concurrent)):  # fmt: skip
            if value is not None and value < 1:
                raise PackError(f"{label} {value}: must be at least 1")
        if self.retries < 0:
            raise PackError(f"--retries {self.retries}: must be 0 or more")
        if self.gpus < 0:
            raise PackError(f"--gpus {self.gpus}: must be 0 or more")
        if self.name is not None and not PACK_NAME.match(self.name):
            raise PackError(
                f"--name {self.name!r}: letters, digits, '.', '_', '-' (at most 64, "
                "starting with a letter or digit)"
            )


# ---------------------------------------------------------------------------------------------
# chunking


@dataclass(frozen=True)
class Chunking:
    """How a run's tasks are cut into the blocks of its queue, how many array elements take
    them, and why."""

    chunk: int  # tasks in the largest block (the first ones)
    elements: int
    slots: int  # one-task elements the partition's nodes hold at once
    blocks: int  # blocks in the queue
    fixed: bool  # every block has ``chunk`` tasks (--chunk), else guided sizes
    rule: str  # one sentence: how the elements and blocks were chosen

    def sizes(self, tasks: int) -> tuple[int, ...]:
        return guided_blocks(tasks, self.elements, self.chunk if self.fixed else None)


def partition_nodes(nodes: Iterable[SlurmNode], partition: str | None) -> list[SlurmNode]:
    """The nodes of ``partition`` (``None``: of any partition; the head has none)."""
    return [
        n for n in nodes if (partition in n.partitions if partition is not None else n.partitions)
    ]


def cluster_slots(
    nodes: Iterable[SlurmNode],
    partition: str | None,
    cpus: int,
    memory_mb: int | None,
    *,
    gpus: int = 0,
    gpus_of: Callable[[str], int] = lambda name: 0,
) -> int:
    """How many one-task elements the partition's nodes hold at once (CPUs, memory, and
    GPUs as ``gpus_of(node name)`` counts them)."""
    total = 0
    for node in partition_nodes(nodes, partition):
        fit = node.cpus // cpus
        if memory_mb:
            fit = min(fit, node.memory_mb // memory_mb)
        if gpus:
            fit = min(fit, gpus_of(node.name) // gpus)
        total += fit
    return total


def too_big(
    task: str, options: PackOptions, nodes: list[SlurmNode], gpus_of: Callable[[str], int]
) -> PackError:
    """The error for a task no node of its partition can hold: what it needs, and the
    largest node."""
    needs = f"{options.cpus} CPU(s)"
    if options.memory_mb:
        needs += f", {options.memory_mb} MiB"
    if options.gpus:
        needs += f", {options.gpus} GPU(s)"
    where = f"partition {options.partition!r}" if options.partition else "the cluster"
    if not nodes:
        return PackError(f"{task} needs {needs}; {where} has no node")
    big = max(nodes, key=lambda n: (n.cpus, n.memory_mb, gpus_of(n.name)))
    has = f"{big.cpus} CPUs, {big.memory_mb} MiB"
    if options.gpus:
        has += f", {gpus_of(big.name)} GPU(s)"
    return PackError(
        f"{task} needs {needs}: more than any node of {where} holds (the largest, "
        f"{big.name}, has {has}); ask for less, or add a bigger group to the spec"
    )


def auto_chunk(tasks: int, slots: int, estimate_s: float | None, max_elements: int) -> Chunking:
    """One element per slot (the elements share the queue, so one that starts late or
    runs short tasks takes fewer blocks, never holds others back), fewer only when the
    user's estimate says the work would not keep them busy for ``MIN_ELEMENT_WORK_S``
    each; blocks of guided sizes (``packdir.guided_blocks``).

    ``elements = min(slots, tasks, MaxArraySize, max(1, floor(tasks * estimate /
    MIN_ELEMENT_WORK_S)))``, the last term only with ``--estimate``: without one, long
    tasks are as likely as short ones, and too few elements would cost far more time
    than too many.
    """
    elements = min(max(1, slots), tasks, max_elements)
    if estimate_s is not None:
        elements = min(elements, max(1, math.floor(tasks * estimate_s / MIN_ELEMENT_WORK_S)))
    sizes = guided_blocks(tasks, elements)
    rule = (
        f"{tasks} task(s) on {slots} slot(s): {elements} element(s) taking {len(sizes)} "
        f"block(s) of {sizes[0]} task(s) down to {sizes[-1]} from one queue"
    )
    if estimate_s is not None and elements < min(slots, tasks):
        rule += f" (--estimate {estimate_s:g} s: >= {MIN_ELEMENT_WORK_S:g} s of work each)"
    return Chunking(sizes[0], elements, slots, len(sizes), False, rule)


def fixed_chunk(tasks: int, chunk: int, slots: int, max_elements: int) -> Chunking:
    """Blocks of ``chunk`` tasks each, taken by one element per slot (at most one per
    block)."""
    elements = min(max(1, slots), math.ceil(tasks / chunk), max_elements)
    blocks = math.ceil(tasks / chunk)
    rule = f"--chunk {chunk}: {blocks} block(s) of {chunk} task(s) for {elements} element(s)"
    return Chunking(min(chunk, tasks), elements, slots, blocks, True, rule)


def element_time_limit(chunk: int, options: PackOptions) -> int | None:
    """Minutes an element may run: every attempt of every task at its limit, plus slack."""
    if options.time_s is None:
        return None
    worst = chunk * (options.retries + 1) * (options.time_s + KILL_GRACE_S) + ELEMENT_SLACK_S
    return math.ceil(worst / 60)
