"""``clusterkit why``: why a job waits, in plain words."""

from __future__ import annotations

import json

import click
from rich.markup import escape

from clusterkit import why as lib
from clusterkit.cli import console
from clusterkit.cli.console import output_option


@click.command("why")
@click.argument("name")
@click.argument("job_id", metavar="JOBID")
@output_option
def why(name: str, job_id: str, output: str) -> None:
    """Say why job JOBID of cluster NAME waits (or what it does), in plain words.

    \b
    Slurm gives a pending job one word of reason; this adds what it means:
      QOSGrpCpuLimit   its tenant holds its CPU limit: how many, in use, asked for,
                       and what lets it run (jobs ending, or a higher limit and `up`)
      Resources        no node has room now (a node runs one tenant's jobs at a time)
      Priority, Dependency, BeginTime, held, ... and nodes powering up.
    An array job explains each of its tasks still in the queue (JOBID or JOBID_TASK).
      clusterkit why demo 42
      clusterkit why demo 42 -o json
    """
    found = lib.why(name, job_id)
    if output == "json":
        click.echo(json.dumps([e.as_dict() for e in found], indent=2))
        return
    for e in found:
        who = f" ({e.user}, tenant {e.account})" if e.user and e.account else ""
        console.out.print(f"job {e.job}{who}: {e.state.lower()}, {escape(e.reason)}")
        console.out.print(f"  {escape(e.text)}")
