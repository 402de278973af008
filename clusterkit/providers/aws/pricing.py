"""Hourly cost ranges for ``up --dry-run``: Spot prices from the region's price history,
on-demand prices from a table shipped with clusterkit (its date and region are printed).

The low end is the head plus every group's static nodes at their cheapest allowed option; the
high end is the head plus every group's ``max`` nodes at their dearest allowed option.
"""

from __future__ import annotations

from datetime import UTC, datetime

from clusterkit.prices import OnDemandTable, Price, on_demand_table
from clusterkit.providers.aws.errors import aws_call
from clusterkit.providers.aws.session import Aws
from clusterkit.providers.base import CostRange
from clusterkit.spec import ClusterSpec, GroupSpec


def spot_prices(aws: Aws, types: list[str]) -> dict[str, list[float]]:
    """The current Spot price of each type in every zone of the region (type -> prices)."""
    return {t: list(zones.values()) for t, zones in spot_zone_prices(aws, types).items()}


def spot_zone_prices(aws: Aws, types: list[str]) -> dict[str, dict[str, float]]:
    """The current Spot price of each type in each zone of the region (type -> zone -> price)."""
    if not types:
        return {}
    pages = aws.ec2.get_paginator("describe_spot_price_history").paginate(
        InstanceTypes=sorted(set(types)),
        ProductDescriptions=["Linux/UNIX", "Linux/UNIX (Amazon VPC)"],
        StartTime=datetime.now(UTC),  # only the price in force now, per zone
    )
    latest: dict[tuple[str, str], tuple[datetime, float]] = {}
    for page in aws_call("ec2 DescribeSpotPriceHistory", ", ".join(types), list, pages):
        for entry in page["SpotPriceHistory"]:
            key = (entry["InstanceType"], entry["AvailabilityZone"])
            if key not in latest or entry["Timestamp"] > latest[key][0]:
                latest[key] = (entry["Timestamp"], float(entry["SpotPrice"]))
    out: dict[str, dict[str, float]] = {}
    for (itype, zone), (_when, price) in sorted(latest.items()):
        out.setdefault(itype, {})[zone] = price
    return out


def spot_quotes(aws: Aws, types: list[str]) -> dict[str, Price]:
    """Each type's Spot price in force now in each of the region's zones (an instance is
    costed at its own zone's), and their mean (what a plan is priced at: the zone an
    instance lands in is the fleet's choice)."""
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    quotes = {}
    for itype, zones in spot_zone_prices(aws, types).items():
        prices = list(zones.values())
        source = f"Spot price in force, {aws.region}, per zone (mean of {len(prices)})"
        quotes[itype] = Price(round(sum(prices) / len(prices), 6), source, today, zones)
    return quotes


def _group_prices(
    group: GroupSpec, spot: dict[str, list[float]], table: OnDemandTable, unknown: set[str]
) -> list[float]:
    prices: list[float] = []
    for itype in group.instance_types:
        if group.capacity in ("spot", "spot-then-on-demand"):
            if spot.get(itype):
                prices += spot[itype]
            elif itype in table.prices:
                prices.append(table.prices[itype])  # no Spot history: on-demand bounds it
            else:
                unknown.add(itype)
        if group.capacity in ("on-demand", "spot-then-on-demand"):
            if itype in table.prices:
                prices.append(table.prices[itype])
            else:
                unknown.add(itype)
    return prices


def cost_range(aws: Aws, spec: ClusterSpec) -> tuple[CostRange, list[str]]:
    """The hourly cost range of ``spec`` and notes on what the figures leave out."""
    table = on_demand_table()
    types = [t for g in spec.groups for t in g.instance_types]
    if spec.head.capacity == "spot":
        types.append(spec.head.instance_type)
    spot = spot_prices(aws, types)
    unknown: set[str] = set()
    if spec.head.capacity == "spot" and spot.get(spec.head.instance_type):
        head = (min(spot[spec.head.instance_type]), max(spot[spec.head.instance_type]))
    elif spec.head.instance_type in table.prices:
        head = (table.prices[spec.head.instance_type],) * 2
    else:
        unknown.add(spec.head.instance_type)
        head = (0.0, 0.0)
    low, high = head
    for group in spec.groups:
        prices = _group_prices(group, spot, table, unknown)
        if prices:
            low += group.min * min(prices)
            high += group.max * max(prices)
    notes = []
    if unknown:
        notes.append(f"no price known for {', '.join(sorted(unknown))}: left out of the range")
    if aws.region != table.region:
        notes.append(
            f"on-demand prices are {table.region}'s of {table.as_of}; {aws.region} may differ"
        )
    basis = f"Spot: {aws.region} price history now; on-demand: list prices of {table.as_of}"
    return CostRange(round(low, 6), round(high, 6), table.currency, basis), notes
