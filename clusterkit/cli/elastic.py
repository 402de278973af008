"""The commands that play a cloud's part on a local cluster: ``cloud`` (capacity, failed
launches, boot delay) and ``interrupt`` (a Spot interruption notice)."""

from __future__ import annotations

import dataclasses
import json

import click

from clusterkit import elastic
from clusterkit.cli import console
from clusterkit.cli.console import output_option
from clusterkit.providers.base import REBALANCE


@click.command("cloud")
@click.argument("name")
@click.option(
    "--capacity", "capacities", multiple=True, metavar="TYPE[:KIND]=N|unlimited",
    help="At most N live instances of TYPE (KIND: spot or on-demand). Repeatable.",
)  # fmt: skip
@click.option("--fail", "fail_count", type=click.IntRange(min=0), default=None, metavar="N",
              help="Fail the next N launch calls (0 stops failing).")  # fmt: skip
@click.option("--code", "fail_code", default="InsufficientInstanceCapacity", show_default=True,
              help="The error code failed launches report.")  # fmt: skip
@click.option("--boot-delay", type=click.FloatRange(min=0), default=None, metavar="SECONDS",
              help="Time each new node waits before its boot script runs.")  # fmt: skip
@output_option
def cloud_(  # noqa: PLR0917 - one parameter per option, as click passes them
    name: str, capacities: tuple[str, ...], fail_count: int | None, fail_code: str,
    boot_delay: float | None, output: str,
) -> None:  # fmt: skip
    """Make the local cloud of cluster NAME refuse or slow launches, as EC2 can.

    \b
    The cluster's power-saving programs launch dynamic nodes through it, so this exercises
    their failure paths for real:
      clusterkit cloud demo --capacity c7i.2xlarge=0     no c7i.2xlarge at all: fall back
      clusterkit cloud demo --capacity c7i.2xlarge:spot=2
      clusterkit cloud demo --fail 1 --code InsufficientInstanceCapacity
      clusterkit cloud demo --boot-delay 3
      clusterkit cloud demo --capacity c7i.2xlarge=unlimited   back to normal
    With no option it prints the current settings.
    """
    capacity = dict(_capacity(c) for c in capacities)
    settings = elastic.simulate(name, capacity, fail_code, fail_count, boot_delay)
    if output == "json":
        click.echo(json.dumps(settings, indent=2))
        return
    limits = ", ".join(f"{k}={v}" for k, v in settings["capacity"].items()) or "unlimited"
    console.out.print(f"capacity: {limits}")
    failing = settings["fail_count"]
    console.out.print(f"failing launches: {failing} more ({settings['fail_code']})" if failing else
              "failing launches: none")  # fmt: skip
    console.out.print(f"boot delay: {settings['boot_delay']:g}s")


def _capacity(text: str) -> tuple[str, int | None]:
    key, sep, value = text.partition("=")
    if not sep or not key or (value != "unlimited" and not value.isdigit()):
        raise click.BadParameter(
            f"{text!r}: expected TYPE[:KIND]=N or TYPE[:KIND]=unlimited", param_hint="--capacity"
        )
    kind = key.partition(":")[2]
    if kind and kind not in ("spot", "on-demand"):
        raise click.BadParameter(f"{text!r}: KIND is spot or on-demand", param_hint="--capacity")
    return key, None if value == "unlimited" else int(value)


@click.command("interrupt")
@click.argument("name")
@click.argument("node")
@click.option(
    "--action", type=click.Choice(["terminate", "stop", "hibernate"]), default=None,
    help="What the notice announces  [default: terminate]. Locally every one ends the "
    "instance: a namespace cannot be stopped.",
)  # fmt: skip
@click.option(
    "--in", "in_seconds", type=click.FloatRange(min=0, max=86400), default=None,
    metavar="SECONDS", help="Lead time before the instance ends (EC2 gives 120 s)  "
    "[default: the spec's local.spot_notice_seconds].",
)  # fmt: skip
@click.option(
    "--rebalance", is_flag=True,
    help="Send a rebalance recommendation instead: a warning only; nothing ends.",
)  # fmt: skip
@output_option
def interrupt(  # noqa: PLR0917 - one parameter per option, as click passes them
    name: str, node: str, action: str | None, in_seconds: float | None, rebalance: bool,
    output: str,
) -> None:  # fmt: skip
    """Simulate a Spot interruption of compute NODE of local cluster NAME.

    \b
    What the node sees: its instance metadata (IMDSv2 at http://169.254.169.254) answers
      /latest/meta-data/spot/instance-action
    with {"action": "terminate", "time": "<when it ends>"} instead of 404, as EC2 warns a
    Spot instance (EC2 gives 2 minutes; here the lead time is yours to choose).
    \b
    At the end of the lead time the instance is terminated, as EC2 reclaims it: its
    processes are killed and its namespaces removed. Slurm then sees the node gone; the
    head's reconciler replaces a static node with a new instance, and fails a dynamic one
    so its jobs are requeued and it powers up again on fresh capacity when needed.
    \b
    With --rebalance the node sees /latest/meta-data/events/recommendations/rebalance
    ({"noticeTime": ...}) instead, and nothing ends. The head cannot be interrupted.
    \b
      clusterkit interrupt demo compute-st-1 --in 5
      clusterkit interrupt demo compute-dy-1 --action stop
      clusterkit interrupt demo compute-st-1 --rebalance
    Each notice is logged in the cluster's cloud/events.jsonl (under $CLUSTERKIT_HOME).
    """
    if rebalance and (action is not None or in_seconds is not None):
        raise click.UsageError("--rebalance takes neither --action nor --in: nothing ends")
    what = REBALANCE if rebalance else action or "terminate"
    sent = elastic.interrupt(name, node, what, in_seconds)
    if output == "json":
        click.echo(json.dumps(dataclasses.asdict(sent), indent=2))
    elif rebalance:
        console.out.print(
            f"{sent.node} ({sent.instance_id}): rebalance recommendation sent at {sent.time}"
        )
    else:
        console.out.print(
            f"{sent.node} ({sent.instance_id}): spot notice '{sent.action}' sent; the instance "
            f"ends at {sent.time} (in {sent.in_seconds:g} s)"
        )


@click.command("unprotect")
@click.argument("name")
@click.argument("groups", nargs=-1, metavar="[GROUP]...")
def unprotect(name: str, groups: tuple[str, ...]) -> None:
    """Lift protected mode from GROUPs of cluster NAME (every protected group when none).

    \b
    The reconciler protects a group whose launches or repairs keep failing (the spec's
    protected_mode: failures within window_seconds): it drains the group's nodes with the
    reason and stops retrying, so a broken launch does not churn. `clusterkit status NAME`
    shows a protected group and why. Once the cause is fixed:
      clusterkit unprotect demo            every protected group
      clusterkit unprotect demo gpu        only group gpu
    The count starts again from zero and the drained nodes return to service.
    `clusterkit up` lifts protected mode too.
    """
    lifted = elastic.unprotect(name, groups)
    if lifted:
        console.out.print(f"protected mode lifted: {', '.join(lifted)}")
    else:
        console.out.print("no group was protected")
