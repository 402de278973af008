"""The cost ledger: what every instance-second cost, and which job attempts it went to.

Inputs are plain records: each instance's life (``Life``: when it ran, its type, capacity and
how it ended), each job attempt from accounting (``JobAttempt``: one per run of a job,
``sacct --duplicates``), the size of each node and a ``PriceBook``. The rules, stated once:

- **An instance costs its hourly price for every second it lived**, launch to end (EC2 bills
  by the second). That sum is what was spent.
- **An attempt's share of a node** is its dominant share: the largest of its CPUs, memory and
  GPUs on that node over the node's (Slurm's ``PriorityFlags=MAX_TRES`` billing, so budgets
  and the ledger agree). A multi-node attempt is taken to hold the same on each of its nodes.
  Its direct cost is its share of each node's price over the seconds it ran there.
- **Idle and boot time of a dynamic node** (the seconds of its life no attempt used: booting,
  idle until suspend) is charged to the attempts that ran on it, in proportion to their
  direct cost there: they caused it to start. A dynamic node no attempt used, and the idle
  time of static nodes and the head, stay as the cluster's idle and head cost.
- **Interruption cost** is the whole cost of every attempt that ended because its node was
  interrupted (the next attempt does that work again, or part of it from a checkpoint).
- **What cheapest first saved**: for each attempt in the partition of every group (where
  Slurm chose the group), its cost on a node of each group it fits, averaged (what placement
  blind to price would cost on the mean), less its direct cost where it ran. Negative where
  Slurm had to use dearer nodes (the cheap ones were busy).
- **On-demand equivalent**: the same instance-seconds at on-demand prices. **Spot savings**
  are net of interruptions: the on-demand equivalent less the interrupted attempts' share of
  it (on-demand capacity would not have done that work twice), minus what was spent.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from clusterkit.prices import ON_DEMAND, PriceBook

INTERRUPTED = "interrupted"
# An attempt ended by an interruption ends at most this long after its node's end (requeue
# before the instance goes, or Slurm noticing the node gone).
INTERRUPTION_SLACK_S = 180.0
# Attempt states that end a run without the job finishing (it runs again, or failed there).
CUT_SHORT = ("REQUEUED", "NODE_FAIL", "PREEMPTED")
BY = ("job", "user", "tenant", "pack", "partition")


@dataclass(frozen=True)
class Life:
    """One instance's life. ``end`` is None while it runs; ``ended_by`` says what ended it
    (``released``, ``interrupted``, ``replaced``, ``failed``, ``down``, or "" while it runs)."""

    instance_id: str
    node: str
    group: str  # "" for the head
    instance_type: str
    capacity: str  # spot | on-demand
    start: float
    end: float | None = None
    ended_by: str = ""
    dynamic: bool = False
    zone: str = ""  # its availability zone, where prices differ by zone

    def seconds(self, now: float) -> float:
        return max(0.0, (self.end if self.end is not None else now) - self.start)

    def overlap(self, start: float, end: float, now: float) -> float:
        life_end = self.end if self.end is not None else now
        return max(0.0, min(end, life_end) - max(start, self.start))


@dataclass(frozen=True)
class JobAttempt:
    """One run of a job, as accounting keeps it: what it held, where, from when to when."""

    job: str  # the job's id as users see it (12, or 12_3 for an array task)
    attempt: int  # 0 for the first run, 1 after one requeue, ...
    user: str
    tenant: str  # the Slurm account
    partition: str
    name: str
    state: str
    start: float
    end: float | None  # None while it runs
    nodes: tuple[str, ...]
    cpus: int
    mem_mb: int
    gpus: int = 0

    @property
    def pack(self) -> str:
        """The pack this attempt ran for (``clusterkit pack`` names its jobs pack-ID)."""
        return self.name.removeprefix("pack-") if self.name.startswith("pack-") else ""


@dataclass(frozen=True)
class NodeSize:
    """A group's node: its size, and what it is priced as (its first type and capacity)."""

    cpus: int
    mem_mb: int
    gpus: int = 0
    instance_type: str = ""
    capacity: str = ""

    def fits(self, attempt: JobAttempt) -> bool:
        per_node = max(1, len(attempt.nodes))
        return (attempt.cpus <= self.cpus * per_node and attempt.mem_mb <= self.mem_mb * per_node
                and attempt.gpus <= self.gpus * per_node)  # fmt: skip


@dataclass
class AttemptCost:
    """What one attempt cost: ``direct`` on the nodes it held, ``idle`` charged to it for the
    dynamic nodes it started, and the same at on-demand prices."""

    attempt: JobAttempt
    direct: float = 0.0
    idle: float = 0.0
    on_demand: float = 0.0
    interrupted: bool = False

    @property
    def total(self) -> float:
        return self.direct + self.idle

    def key(self, by: str) -> str:
        a = self.attempt
        return {
            "job": a.job, "user": a.user, "tenant": a.tenant, "pack": a.pack,
            "partition": a.partition,
        }[by]  # fmt: skip


@dataclass
class Totals:
    """Sums over a set of attempts (a job, a user, a tenant) or over the whole cluster."""

    spent: float = 0.0
    on_demand: float = 0.0
    interruption: float = 0.0
    interruption_on_demand: float = 0.0  # the interrupted attempts' share of on_demand
    attempts: int = 0

    @property
    def spot_savings(self) -> float:
        return self.on_demand - self.interruption_on_demand - self.spent

    def add(self, cost: AttemptCost) -> None:
        self.spent += cost.total
        self.on_demand += cost.on_demand
        if cost.interrupted:
            self.interruption += cost.total
            self.interruption_on_demand += cost.on_demand
        self.attempts += 1

    def as_dict(self, digits: int = 6) -> dict[str, Any]:
        return {
            "spent": round(self.spent, digits),
            "on_demand": round(self.on_demand, digits),
            "spot_savings": round(self.spot_savings, digits),
            "interruption": round(self.interruption, digits),
            "attempts": self.attempts,
        }


@dataclass
class Ledger:
    """The whole cluster's costs up to ``now``."""

    now: float
    currency: str
    lives: list[Life]
    costs: list[AttemptCost]
    spent: float = 0.0  # every instance's price over its life
    on_demand: float = 0.0  # the same seconds on on-demand
    head: float = 0.0
    idle: float = 0.0  # static nodes' unused time, dynamic nodes no attempt used
    cheapest_first: float = 0.0  # saved against placement blind to price
    unpriced: list[str] = field(default_factory=list)

    @property
    def jobs(self) -> Totals:
        totals = Totals()
        for cost in self.costs:
            totals.add(cost)
        return totals

    @property
    def interruption(self) -> float:
        return self.jobs.interruption

    @property
    def spot_savings(self) -> float:
        return self.on_demand - self.jobs.interruption_on_demand - self.spent

    def by(self, key: str) -> dict[str, Totals]:
        """Totals per ``key`` (one of ``BY``), in first-seen order."""
        if key not in BY:
            raise ValueError(f"cannot group by {key!r}: one of {', '.join(BY)}")
        groups: dict[str, Totals] = {}
        for cost in self.costs:
            groups.setdefault(cost.key(key), Totals()).add(cost)
        return groups

    def summary(self) -> dict[str, Any]:
        return {
            "currency": self.currency,
            "spent": round(self.spent, 6),
            "on_demand": round(self.on_demand, 6),
            "spot_savings": round(self.spot_savings, 6),
            "interruption": round(self.interruption, 6),
            "idle": round(self.idle, 6),
            "head": round(self.head, 6),
            "jobs": round(self.jobs.spent, 6),
            "cheapest_first_savings": round(self.cheapest_first, 6),
            "unpriced": self.unpriced,
        }


def dominant_share(attempt: JobAttempt, size: NodeSize) -> float:
    """The largest of the attempt's per-node CPUs, memory and GPUs over the node's, at most 1."""
    per_node = max(1, len(attempt.nodes))
    shares = [attempt.cpus / per_node / size.cpus, attempt.mem_mb / per_node / size.mem_mb]
    if size.gpus:
        shares.append(attempt.gpus / per_node / size.gpus)
    return min(1.0, max(shares))


def _per_second(book: PriceBook, life: Life, capacity: str, unpriced: set[str]) -> float:
    hourly = book.hourly(life.instance_type, capacity, life.zone)
    if hourly is None:
        unpriced.add(life.instance_type)
        return 0.0
    return hourly / 3600.0


def life_at(lives: Sequence[Life], node: str, start: float, end: float, now: float) -> list[Life]:
    """The lives of ``node`` that overlap ``start..end`` (a requeue may span two)."""
    return [x for x in lives if x.node == node and x.overlap(start, end, now) > 0]


def blind_cost(attempt: JobAttempt, seconds: float, sizes: Mapping[str, NodeSize],
               book: PriceBook) -> float | None:  # fmt: skip
    """The mean cost of ``attempt`` over ``seconds`` on each priced group it fits."""
    costs = []
    for size in sizes.values():
        hourly = book.hourly(size.instance_type, size.capacity) if size.instance_type else None
        if hourly is not None and size.fits(attempt):
            nodes = max(1, len(attempt.nodes))
            costs.append(nodes * dominant_share(attempt, size) * seconds * hourly / 3600)
    return sum(costs) / len(costs) if costs else None


def build(
    lives: Iterable[Life],
    attempts: Iterable[JobAttempt],
    sizes: Mapping[str, NodeSize],
    book: PriceBook,
    now: float,
    *,
    chosen_in: str = "",
) -> Ledger:
    """The ledger of ``lives`` and ``attempts`` at time ``now``. ``sizes``: by group name;
    ``chosen_in``: the partition where Slurm chose among every group (cheapest first)."""
    lives = list(lives)
    unpriced: set[str] = set()
    ledger = Ledger(now=now, currency=book.currency, lives=lives, costs=[])
    # node-seconds and cost each life gave to attempts, to find its unused rest
    used: dict[str, float] = {x.instance_id: 0.0 for x in lives}
    charged: dict[str, list[tuple[AttemptCost, float]]] = {x.instance_id: [] for x in lives}
    for attempt in attempts:
        cost = AttemptCost(attempt)
        end = attempt.end if attempt.end is not None else now
        for node in attempt.nodes:
            for life in life_at(lives, node, attempt.start, end, now):
                size = sizes.get(life.group)
                if size is None:
                    continue
                seconds = life.overlap(attempt.start, end, now) * dominant_share(attempt, size)
                direct = seconds * _per_second(book, life, life.capacity, unpriced)
                cost.direct += direct
                cost.on_demand += seconds * _per_second(book, life, ON_DEMAND, unpriced)
                used[life.instance_id] += seconds
                charged[life.instance_id].append((cost, direct))
                if _cut_by(attempt, life, end):
                    cost.interrupted = True
        if chosen_in and attempt.partition == chosen_in and cost.direct > 0:
            blind = blind_cost(attempt, max(0.0, end - attempt.start), sizes, book)
            ledger.cheapest_first += blind - cost.direct if blind is not None else 0.0
        ledger.costs.append(cost)
    for life in lives:
        _settle(
            ledger, life, used[life.instance_id], charged[life.instance_id], book=book,
            unpriced=unpriced,
        )  # fmt: skip
    ledger.unpriced = sorted(unpriced)
    return ledger


def _cut_by(attempt: JobAttempt, life: Life, end: float) -> bool:
    """Whether ``life``'s interruption ended ``attempt``."""
    if attempt.state not in CUT_SHORT or life.ended_by != INTERRUPTED or life.end is None:
        return False
    return life.end - INTERRUPTION_SLACK_S <= end <= life.end + INTERRUPTION_SLACK_S


def _settle(
    ledger: Ledger,
    life: Life,
    used: float,
    charged: list[tuple[AttemptCost, float]],
    *,
    book: PriceBook,
    unpriced: set[str],
) -> None:
    """Add ``life``'s whole cost to the cluster's sums, and its unused seconds to the jobs
    that started it (dynamic) or to the cluster's idle (static, or no job used it)."""
    seconds = life.seconds(ledger.now)
    rate = _per_second(book, life, life.capacity, unpriced)
    on_demand_rate = _per_second(book, life, ON_DEMAND, unpriced)
    ledger.spent += seconds * rate
    ledger.on_demand += seconds * on_demand_rate
    if not life.group:
        ledger.head += seconds * rate
        return
    unused = max(0.0, seconds - used)
    direct = sum(d for _, d in charged)
    if life.dynamic and charged and direct > 0:
        for cost, part in charged:
            cost.idle += unused * rate * part / direct
            cost.on_demand += unused * on_demand_rate * part / direct
    else:
        ledger.idle += unused * rate


def ledger_dict(ledger: Ledger) -> dict[str, Any]:
    """The ledger as JSON-ready data: its summary, every life and every attempt's cost."""
    return {
        "now": ledger.now,
        "summary": ledger.summary(),
        "lives": [asdict(x) for x in ledger.lives],
        "attempts": [
            {
                **asdict(c.attempt),
                "direct": round(c.direct, 9),
                "idle": round(c.idle, 9),
                "on_demand": round(c.on_demand, 9),
                "interrupted": c.interrupted,
            }
            for c in ledger.costs
        ],
    }
