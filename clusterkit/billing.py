"""Money in Slurm's own terms: node weights from prices, a billing TRES that is money, and
budgets as billing limits.

- **Cheapest first.** A group without an explicit ``weight`` gets one from its price per CPU
  (its first instance type, on the capacity it is tried on first: Spot for Spot groups), so
  Slurm's best fit, which takes the lowest weight that fits, picks the cheapest nodes.
- **Billing is money.** Each partition's ``TRESBillingWeights`` are its nodes' price per CPU,
  per MiB of memory and per GPU, per minute, in millionths of the currency; with
  ``PriorityFlags=MAX_TRES`` a job's billing is the largest of the three: its dominant share
  of the node's price, the rule the cost ledger uses. A billing-minute is then one millionth
  of the currency, whatever the node. The partition of every node (``all``) takes the
  dearest group's weights per TRES: a budget counts a job there at no less than it costs.
- **Budgets.** A budget of B becomes ``GrpTRESMins=billing=B * 1e6``: a tenant's on its
  account's association, the cluster's on the account every tenant's account is a child of
  (Slurm checks both for every job).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from clusterkit.prices import PriceBook, group_hourly
from clusterkit.spec import ClusterSpec, GroupSpec

MICROS = 1_000_000  # billing-minutes per unit of currency
UNPRICED_WEIGHT = 1_000_000  # after every priced group
WEIGHT_PER_CPU_HOUR = 10_000  # weight points per unit of currency per CPU-hour


def node_weight(group: GroupSpec, book: PriceBook | None) -> int:
    """The group's Slurm Weight: its own, else 1 + its price per CPU-hour in 1/10,000ths."""
    if group.weight is not None:
        return group.weight
    hourly = group_hourly(book, group) if book is not None else None
    if hourly is None:
        return 1 if book is None else UNPRICED_WEIGHT
    return 1 + round(hourly / group.cpus * WEIGHT_PER_CPU_HOUR)


def tres_weights(group: GroupSpec, book: PriceBook) -> dict[str, float] | None:
    """Millionths of the currency per minute for one CPU, one MiB and one GPU of a node of
    ``group``; None where the group has no price."""
    hourly = group_hourly(book, group)
    if hourly is None:
        return None
    per_minute = hourly / 60 * MICROS
    weights = {"CPU": per_minute / group.cpus, "Mem": per_minute / group.memory_mb}
    if group.gpus:
        weights["GRES/gpu"] = per_minute / group.gpus
    return weights


def billing_weights(groups: Sequence[GroupSpec], book: PriceBook) -> str | None:
    """A partition's ``TRESBillingWeights`` over ``groups``: the dearest of each TRES."""
    merged: dict[str, float] = {}
    for group in groups:
        weights = tres_weights(group, book)
        if weights is None:
            continue
        for key, value in weights.items():
            merged[key] = max(merged.get(key, 0.0), value)
    if not merged:
        return None
    # Memory is weighted per MiB (Slurm's unit without a suffix); significant digits, not
    # decimals: a MiB of a small node is a fraction of a millionth.
    return ",".join(f"{key}={_figure(value)}" for key, value in merged.items())


def _figure(value: float) -> str:
    digits = max(0, 5 - math.floor(math.log10(value)) - 1) if value > 0 else 0
    return f"{value:.{digits}f}".rstrip("0").rstrip(".") or "0"


def budget_minutes(budget: float) -> int:
    """``GrpTRESMins`` billing for a budget in currency units."""
    return max(1, round(budget * MICROS))


def money(billing_minutes: float) -> float:
    """Billing-minutes back in currency units."""
    return billing_minutes / MICROS


def has_budgets(spec: ClusterSpec) -> bool:
    """Whether a tenant or the whole cluster has a budget (cost.budget)."""
    return spec.cost.budget is not None or any(t.budget is not None for t in spec.tenants)
