"""``clusterkit cost``: what a cluster's work cost, what Spot saved, what interruptions took."""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from clusterkit import costs as lib
from clusterkit import report as pages
from clusterkit.cli import console
from clusterkit.cli.console import output_option
from clusterkit.errors import ClusterkitError
from clusterkit.ledger import BY
from clusterkit.packplan import parse_duration


def _since(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    """``2h`` (that long ago) or an ISO time (``2026-12-02T09:00``, local unless it says)."""
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        pass
    try:
        return time.time() - parse_duration(value, "--since")
    except ClusterkitError:
        raise click.BadParameter(
            f"{value!r}: a time ago (90s, 30m, 2h, 1d) or an ISO time such as 2026-12-02T09:00"
        ) from None


@click.command("cost")
@click.argument("name")
@click.option("--by", type=click.Choice(BY), default="tenant", show_default=True,
              help="One row per job, user, tenant (Slurm account), pack or partition.")  # fmt: skip
@click.option("--since", callback=_since, default=None, metavar="WHEN",
              help="Only what ran since WHEN: a time ago (2h, 30m) or an ISO time.")  # fmt: skip
@output_option
def cost(name: str, by: str, since: float | None, output: str) -> None:
    """What cluster NAME cost, and who it cost for.

    \b
    Every instance is costed at its hourly price for every second it lived; each job
    attempt gets its dominant share (CPUs, memory or GPUs) of the nodes it ran on, and the
    boot and idle time of the dynamic nodes it started. Shown per row:
      spent          what it cost
      on-demand      the same instance-seconds at on-demand prices
      spot savings   on-demand, less the work interruptions made Spot do twice, less spent
      interruption   what the attempts that an interruption ended cost
    Prices come with their source and date. After `clusterkit down NAME` the ledger it kept
    answers (the cluster's accounting is gone with it).
      clusterkit cost demo
      clusterkit cost demo --by user --since 2h
      clusterkit cost demo --by job -o json
    """
    found = lib.report(lib.inputs_of(name), by=by, since=since)
    if output == "json":
        click.echo(json.dumps(found, indent=2))
        return
    _print(found)


def _money(value: float, currency: str) -> str:
    return f"{value:,.4f} {currency}" if abs(value) < 1 else f"{value:,.2f} {currency}"


def _print(found: dict[str, Any]) -> None:
    s, cur = found["summary"], found["summary"]["currency"]
    when = f"kept at down, {found['saved_at']}" if found["saved_at"] else f"as of {found['as_of']}"
    console.out.print(f"[bold]{found['cluster']}[/]  provider={found['provider']}  ({when})")
    for label, key in (
        ("spent", "spent"), ("on-demand equivalent", "on_demand"), ("spot savings", "spot_savings"),
        ("interruptions", "interruption"), ("jobs", "jobs"), ("idle", "idle"), ("head", "head"),
        ("cheapest first saved", "cheapest_first_savings"),
    ):  # fmt: skip
        console.out.print(f"  {label:<22}{_money(float(s[key]), cur)}")
    table = Table(
        found["by"].upper(), "ATTEMPTS", "SPENT", "ON-DEMAND", "SPOT SAVINGS", "INTERRUPTION",
        box=None,
    )  # fmt: skip
    for row in found["rows"]:
        table.add_row(
            escape(row["key"] or "-"), str(row["attempts"]), _money(row["spent"], cur),
            _money(row["on_demand"], cur), _money(row["spot_savings"], cur),
            _money(row["interruption"], cur),
        )  # fmt: skip
    if found["rows"]:
        console.out.print(table)
    else:
        console.out.print("no job has run")
    console.out.print("[dim]prices (per hour):[/]")
    for p in found["prices"]:
        date = f", {p['as_of']}" if p["as_of"] else ""
        console.out.print(
            f"  [dim]{p['instance_type']} {p['capacity']}: {p['hourly']:g} {cur} "
            f"({escape(p['source'])}{date})[/]"
        )
    for note in found["notes"]:
        console.out.print(f"[yellow]![/] {escape(note)}")


@click.command("report")
@click.argument("name")
@click.argument("path", required=False, type=click.Path(dir_okay=False, path_type=Path))
def report(name: str, path: Path | None) -> None:
    """Write one HTML page of what cluster NAME cost and went through (default PATH:
    NAME-report.html here).

    \b
    The page holds everything it shows (it fetches nothing: open it offline, mail it):
      cost over time by tenant, Spot savings and the cost of interruptions,
      interruptions and recoveries over time (rate, recovery success),
      node utilisation, and for packs their elements' durations and throughput.
    After `clusterkit down NAME` it is made from the ledger down kept.
      clusterkit report demo
      clusterkit report demo /tmp/demo.html
    """
    written = pages.write(name, path)
    console.err.print(f"[green]✓[/] report of {name}: {written}")
