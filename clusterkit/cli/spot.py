"""``clusterkit events`` and ``clusterkit spot-report``: what interruptions did to a cluster."""

from __future__ import annotations

import json
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from clusterkit import spot as lib
from clusterkit.cli import console
from clusterkit.cli.console import output_option

# Fields every event has, or that the table shows in their own columns.
SHOWN = {"time", "source", "action", "node", "nodes", "instance", "instance_id", "job", "jobs"}


@click.command("events")
@click.argument("name")
@click.option("--spot", "spot_only", is_flag=True,
              help="Only interruption events (agents, notices, requeued jobs' ends).")  # fmt: skip
@click.option("-n", "--last", type=click.IntRange(min=1), default=None, metavar="N",
              help="Only the newest N events.")  # fmt: skip
@output_option
def events(name: str, spot_only: bool, last: int | None, output: str) -> None:
    """List the events of cluster NAME, oldest first.

    Power saving (resume, suspend, resume-fail), the reconciler, the Spot agents on the nodes
    and (local clusters) the cloud service each record what they did, with the nodes,
    instances and jobs concerned and how long it took. --spot keeps the interruption path:
    notices, drains, checkpoint signals, requeues, and what became of the requeued jobs.
    """
    found = lib.cluster_events(name)
    if spot_only:
        found = [e for e in found if _is_spot(e)]
    if last is not None:
        found = found[-last:]
    if output == "json":
        for event in found:
            click.echo(json.dumps(event))
        return
    table = Table("TIME", "SOURCE", "ACTION", "NODE", "INSTANCE", "JOB", "DETAIL", box=None)
    for e in found:
        table.add_row(
            str(e.get("time", "?")), str(e.get("source", "?")), str(e.get("action", "?")),
            escape(_nodes(e)), str(e.get("instance") or e.get("instance_id") or "-"),
            escape(_jobs(e)), escape(_detail(e)),
        )  # fmt: skip
    console.out.print(table)


def _is_spot(e: dict[str, Any]) -> bool:
    if e.get("source") in ("spot-agent", "cloud"):
        return True
    return e.get("source") == "reconciler" and e.get("action") in (
        "restarted", "completed", "failed", "vanished",
    )  # fmt: skip


def _nodes(e: dict[str, Any]) -> str:
    return str(e.get("node") or ",".join(e.get("nodes") or []) or "-")


def _jobs(e: dict[str, Any]) -> str:
    return str(e.get("job") or ",".join(map(str, e.get("jobs") or [])) or "-")


def _detail(e: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in e.items() if k not in SHOWN and v not in (None, ""))


@click.command("spot-report")
@click.argument("name")
@output_option
def spot_report(name: str, output: str) -> None:
    """Sum up the Spot interruptions of cluster NAME.

    Interruptions and rebalance recommendations, how fast nodes were drained, whether every
    job was requeued before its instance ended, jobs recovered (ended COMPLETED after a
    requeue) and failed, restarts, and the work lost: per requeue, the seconds since the
    job's newest checkpoint (or since its run started, without one).
    """
    rep = lib.spot_report(name)
    if output == "json":
        click.echo(json.dumps(rep.as_dict(), indent=2))
        return
    rate = "-" if rep.recovery_rate is None else f"{rep.recovery_rate:.0%}"
    median = rep.drain_seconds_median
    rows = [
        ("interruption notices", str(rep.interruptions)),
        ("rebalance recommendations", str(rep.rebalances)),
        ("notice -> node drained", "-" if median is None
         else f"median {median:.2f}s, worst {max(rep.drain_seconds):.2f}s"),
        ("notices with every job requeued in time",
         f"{rep.notices_requeued_in_time} of {rep.notices_handled}"),
        ("jobs requeued (requeues)", f"{rep.jobs_requeued} ({rep.requeues})"),
        ("restarts", str(rep.restarts)),
        ("jobs recovered / failed / not ended yet",
         f"{rep.jobs_recovered} / {rep.jobs_failed} / {rep.jobs_unfinished}"),
        ("jobs stopped at their restart limit", str(rep.jobs_given_up)),
        ("recovery success rate", rate),
        ("work lost", f"{rep.lost_seconds:.1f}s in all, worst {rep.lost_seconds_max:.1f}s"),
    ]  # fmt: skip
    table = Table("", "", box=None, show_header=False)
    for label, value in rows:
        table.add_row(label, value)
    console.out.print(f"[bold]{name}[/]: Spot interruptions")
    console.out.print(table)
