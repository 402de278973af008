"""What an hour of each instance costs, with where each price comes from and its date.

Prices are per instance type and capacity (``spot`` or ``on-demand``), per hour, in the spec's
``cost.currency``. Where one comes from, in order:

1. the spec's ``cost.prices`` (the user knows best: a negotiated rate, another region);
2. on-demand: the list-price table shipped with clusterkit (``ondemand_prices.json``, its
   region and date are named); Spot: the price the provider found (on aws the Spot price in
   force in the region, ``DescribeSpotPriceHistory``);
3. Spot without a known price (every local cluster: no Spot market here): the on-demand price
   times ``cost.assumed_spot_ratio``, named as an assumption.

A type with no price at all is costed at nothing and named in every report. Local clusters
use the same prices for their groups' instance types, so they teach what their AWS twin costs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.resources import files
from typing import Any

from clusterkit.spec import ClusterSpec, GroupSpec

SPOT = "spot"
ON_DEMAND = "on-demand"


@dataclass(frozen=True)
class OnDemandTable:
    as_of: str
    region: str
    currency: str
    prices: dict[str, float]


def on_demand_table() -> OnDemandTable:
    """The list prices shipped with clusterkit."""
    text = (files("clusterkit") / "ondemand_prices.json").read_text(encoding="utf-8")
    data: dict[str, Any] = json.loads(text)
    return OnDemandTable(data["as_of"], data["region"], data["currency"], data["prices"])


@dataclass(frozen=True)
class Price:
    """One hourly price, where it comes from and of when; ``zones``: the price in each zone
    where it differs by zone (a Spot price), ``hourly`` then their mean."""

    hourly: float
    source: str
    as_of: str
    zones: Mapping[str, float] = field(default_factory=dict)

    def in_zone(self, zone: str) -> float:
        return self.zones.get(zone, self.hourly) if zone else self.hourly

    def as_dict(self) -> dict[str, Any]:
        found: dict[str, Any] = {"hourly": self.hourly, "source": self.source, "as_of": self.as_of}
        return {**found, "zones": dict(sorted(self.zones.items()))} if self.zones else found


@dataclass(frozen=True)
class PriceBook:
    """Prices by (instance type, capacity); ``capacity`` is ``spot`` or ``on-demand``."""

    currency: str
    prices: Mapping[tuple[str, str], Price]

    def get(self, instance_type: str, capacity: str) -> Price | None:
        return self.prices.get((instance_type, capacity))

    def hourly(self, instance_type: str, capacity: str, zone: str = "") -> float | None:
        """The price of an hour; in ``zone`` where the price is known per zone."""
        price = self.get(instance_type, capacity)
        return None if price is None else price.in_zone(zone)

    def as_dict(self) -> dict[str, Any]:
        return {
            "currency": self.currency,
            "prices": [
                {"instance_type": t, "capacity": c, **p.as_dict()}
                for (t, c), p in sorted(self.prices.items())
            ],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PriceBook:
        return cls(
            str(data["currency"]),
            {
                (str(p["instance_type"]), str(p["capacity"])): Price(
                    float(p["hourly"]),
                    str(p["source"]),
                    str(p["as_of"]),
                    {str(z): float(v) for z, v in p.get("zones", {}).items()},
                )
                for p in data["prices"]
            },
        )


def spec_types(spec: ClusterSpec) -> list[str]:
    """Every instance type the spec may run: the head's and each group's."""
    types = [spec.head.instance_type, *(t for g in spec.groups for t in g.instance_types)]
    return list(dict.fromkeys(types))


def price_book(
    spec: ClusterSpec,
    spot_found: Mapping[str, Price] | None = None,
    table: OnDemandTable | None = None,
) -> PriceBook:
    """The prices of every type the spec names, on both capacities. ``spot_found``: the
    provider's Spot prices by type (none on local)."""
    table = table or on_demand_table()
    found = spot_found or {}
    ratio = spec.cost.assumed_spot_ratio
    book: dict[tuple[str, str], Price] = {}
    for itype in spec_types(spec):
        given = spec.cost.given(itype)
        on_demand = _on_demand(itype, given.on_demand if given else None, table)
        if on_demand is not None:
            book[(itype, ON_DEMAND)] = on_demand
        if given is not None and given.spot is not None:
            book[(itype, SPOT)] = Price(given.spot, "spec (cost.prices)", "")
        elif itype in found:
            book[(itype, SPOT)] = found[itype]
        elif on_demand is not None:
            book[(itype, SPOT)] = Price(
                round(on_demand.hourly * ratio, 6),
                f"assumed: {ratio:.0%} of the on-demand price (no Spot price known; "
                "set cost.prices)",
                on_demand.as_of,
            )
    return PriceBook(spec.cost.currency, book)


def _on_demand(itype: str, given: float | None, table: OnDemandTable) -> Price | None:
    if given is not None:
        return Price(given, "spec (cost.prices)", "")
    if itype in table.prices:
        return Price(table.prices[itype], f"on-demand list price, {table.region}", table.as_of)
    return None


def group_capacity(group: GroupSpec) -> str:
    """The capacity a group's nodes are first tried on (what it is priced at beforehand)."""
    return SPOT if group.capacity in (SPOT, "spot-then-on-demand") else ON_DEMAND


def group_hourly(book: PriceBook, group: GroupSpec) -> float | None:
    """The hourly price of one of ``group``'s nodes on its first type and capacity."""
    return book.hourly(group.instance_types[0], group_capacity(group))


def unpriced(book: PriceBook, spec: ClusterSpec) -> list[str]:
    """The spec's instance types without an on-demand price (nothing to cost them at)."""
    return [t for t in spec_types(spec) if book.get(t, ON_DEMAND) is None]
