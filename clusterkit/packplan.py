"""How a pack runs, before it touches a cluster: its options (``PackOptions``, durations,
memory) and its chunking (how many tasks each array element runs, from the slots the
partition's nodes hold), with the element's time limit that follows.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

from clusterkit.nodetools.packstate import PackError
from clusterkit.slurm import SlurmNode

TARGET_ELEMENT_S = 60.0  # an element should run at least this long: Slurm's cost is ~1 s
DEFAULT_ESTIMATE_S = 1.0  # assumed task duration without --estimate: errs to fewer elements
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


def parse_memory(text: str) -> int:
    """MiB from ``512``, ``512M``, ``2G``, ``1T`` (a bare number is MiB, as in Slurm)."""
    m = _MEMORY.match(text.strip())
    if m is None or int(m.group(1)) == 0:
        raise PackError(f"--mem {text!r}: give MiB (512), or 512M, 2G, above 0")
    return int(m.group(1)) * {"": 1, "m": 1, "g": 1024, "t": 1024 * 1024}[m.group(2).lower()]


@dataclass(frozen=True)
class PackOptions:
    """How every task of a pack runs; ``None`` means Slurm's (or clusterkit's) default."""

    cpus: int = 1
    memory_mb: int | None = None  # per task; None: the cluster's DefMemPerCPU
    time_s: float | None = None  # per task; None: no limit
    estimate_s: float | None = None  # expected duration, for auto chunking
    chunk: int | None = None  # tasks per element; None: auto
    max_concurrent: int | None = None  # elements running at once (``--array=...%N``)
    retries: int = 0
    partition: str | None = None
    chdir: str | None = None  # the tasks' working directory; None: the user's home
    name: str | None = None  # the pack's name; None: a timestamp
    user: str | None = None  # the cluster user; None: the spec's first user
    hold: bool = False  # submit held (``scontrol release JOBID`` starts it)

    def check(self) -> None:
        for label, value in (("--cpus", self.cpus), ("--chunk", self.chunk),
                             ("--max-concurrent", self.max_concurrent)):  # fmt: skip
            if value is not None and value < 1:
                raise PackError(f"{label} {value}: must be at least 1")
        if self.retries < 0:
            raise PackError(f"--retries {self.retries}: must be 0 or more")
        if self.name is not None and not PACK_NAME.match(self.name):
            raise PackError(
                f"--name {self.name!r}: letters, digits, '.', '_', '-' (at most 64, "
                "starting with a letter or digit)"
            )


# ---------------------------------------------------------------------------------------------
# chunking


@dataclass(frozen=True)
class Chunking:
    """How a run's tasks are cut into array elements, and why."""

    chunk: int  # tasks per element
    elements: int
    slots: int  # elements that can run at once on the partition
    waves: int  # elements per slot
    rule: str  # one sentence: how the chunk was chosen


def cluster_slots(
    nodes: Iterable[SlurmNode], partition: str | None, cpus: int, memory_mb: int | None
) -> int:
    """How many one-task elements the partition's nodes hold at once (CPUs and memory)."""
    total = 0
    for node in nodes:
        if partition is not None and partition not in node.partitions:
            continue
        if partition is None and not node.partitions:
            continue
        fit = node.cpus // cpus
        if memory_mb:
            fit = min(fit, node.memory_mb // memory_mb)
        total += fit
    return total


def auto_chunk(tasks: int, slots: int, estimate_s: float, max_elements: int) -> Chunking:
    """The chunk size: whole *waves* of elements (one element per slot per wave), as many
    waves as keep every element at ``TARGET_ELEMENT_S`` of estimated work or more, and at
    least one wave so that every slot gets an element.

    ``waves = max(1, floor(tasks * estimate / (slots * TARGET_ELEMENT_S)))`` and
    ``chunk = ceil(tasks / (slots * waves))``; the element count never exceeds the array
    limit (``MaxArraySize``).
    """
    slots = max(1, slots)
    work = tasks * estimate_s
    waves = max(1, math.floor(work / (slots * TARGET_ELEMENT_S)))
    chunk = math.ceil(tasks / (slots * waves))
    chunk = max(chunk, math.ceil(tasks / max_elements))
    elements = math.ceil(tasks / chunk)
    rule = (
        f"{tasks} task(s) x {estimate_s:g} s estimated on {slots} slot(s): {waves} wave(s) "
        f"of elements of >= {TARGET_ELEMENT_S:g} s each where the work allows"
    )
    return Chunking(chunk, elements, slots, math.ceil(elements / slots), rule)


def fixed_chunk(tasks: int, chunk: int, slots: int, max_elements: int) -> Chunking:
    if math.ceil(tasks / chunk) > max_elements:
        raise PackError(
            f"--chunk {chunk}: {math.ceil(tasks / chunk)} elements is over the cluster's "
            f"MaxArraySize ({max_elements}); use --chunk {math.ceil(tasks / max_elements)} or more"
        )
    elements = math.ceil(tasks / chunk)
    return Chunking(chunk, elements, slots, math.ceil(elements / max(1, slots)), "--chunk")


def element_time_limit(chunk: int, options: PackOptions) -> int | None:
    """Minutes an element may run: every attempt of every task at its limit, plus slack."""
    if options.time_s is None:
        return None
    worst = chunk * (options.retries + 1) * (options.time_s + KILL_GRACE_S) + ELEMENT_SLACK_S
    return math.ceil(worst / 60)
