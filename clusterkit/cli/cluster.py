"""The commands that build, show, reach and remove clusters: ``up``, ``down``, ``list``,
``status``, ``ssh``, ``verify``, ``inventory``, ``env``, ``validate`` and ``init``."""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from clusterkit import cluster as lib
from clusterkit import clusterinfo, why
from clusterkit import interrupt as signals
from clusterkit.cli import console
from clusterkit.cli.console import StepProgress, output_option
from clusterkit.errors import ClusterkitError, SpecError
from clusterkit.plan import plan_nodes
from clusterkit.providers import provider_class
from clusterkit.providers.base import DryRun
from clusterkit.resources import playbook_dir
from clusterkit.slurm import SlurmJob
from clusterkit.spec import (
    DEFAULT_PROVIDER,
    ClusterSpec,
    example_spec_text,
    load_spec,
    parse_spec_text,
)
from clusterkit.verify import failures, verify

DEFAULT_SPEC = "cluster.yaml"
MAX_WAITING_SHOWN = 10  # pending jobs whose reason status spells out


class RichProgress(StepProgress):
    """``up`` and ``down``'s steps, labelled for the provider."""

    def __init__(self, provider: str = DEFAULT_PROVIDER) -> None:
        labels = provider_class(provider).step_labels
        super().__init__({**STEP_LABELS, **labels})


# The steps of `up`; a provider names those whose work is its own (network, nodes).
STEP_LABELS = {
    "network": "Network",
    "keys": "Keys (SSH, munge) and known_hosts",
    "render": "Slurm configuration and boot script",
    "nodes": "Nodes",
    "ssh": "SSH reachable on every node",
    "configure": "Head configured (Ansible: munge, users, storage, slurmctld)",
    "boot": "Compute nodes booted (munge, shared storage, slurmd)",
    "verify": "Verified on every node",
}


@click.command()
@click.option(
    "-f", "--file", "path", type=click.Path(path_type=Path), default=None,
    help=f"The cluster spec (default: ./{DEFAULT_SPEC}).",
)  # fmt: skip
@click.option(
    "--no-configure", is_flag=True,
    help="Bare nodes (SSH only): configure them yourself, e.g. with `clusterkit inventory`. "
    "On aws, returns once every resource exists, without waiting for SSH.",
)  # fmt: skip
@click.option(
    "--dry-run", is_flag=True,
    help="Print what would be created and its hourly cost range; change nothing.",
)  # fmt: skip
def up(path: Path | None, no_configure: bool, dry_run: bool) -> None:
    """Build the cluster a spec describes, or reconcile a live one towards it.

    The result is a working Slurm cluster: the head configured through Ansible, compute
    nodes booted from their boot script, every node verified. Running `up` again on a live
    cluster keeps healthy nodes and replaces missing or broken ones; it never duplicates
    anything.
    """
    spec = _load(path)
    if dry_run:
        _print_dry_run(spec, lib.dry_run(spec))
        return
    lib.check_prerequisites(spec)
    static = [n for n in plan_nodes(spec) if n.static]
    console.err.print(
        f"Cluster [bold]{spec.name}[/] on {spec.provider}: head + {len(static) - 1} "
        f"static compute node(s)"
    )
    start = time.monotonic()
    progress = RichProgress(spec.provider)
    try:
        lib.up(spec, progress, configure=not no_configure)
    except signals.Interrupted as exc:
        console.stop(_interrupted_up(spec.name, exc, progress), exc.exit_code)
    console.err.print(f"[green]Cluster {spec.name} is ready[/] in {time.monotonic() - start:.1f}s.")
    _print_status(clusterinfo.status(spec.name, with_slurm=not no_configure))
    user = spec.users[0].name if spec.users else "root"
    console.out.print(
        f"\nNext: [bold]clusterkit ssh {spec.name} -u {user}[/] (submit jobs there)   ·   "
        f"[bold]clusterkit down {spec.name}[/]"
    )


def _interrupted_up(name: str, exc: signals.Interrupted, progress: RichProgress) -> str:
    """One line: where ``up`` stopped, what it left, and how to remove that."""
    if exc.step:
        where = f" during {progress.labels.get(exc.step, exc.step)!r}"
    else:  # between two steps, or before the first (its state was saved already)
        where = f" after {progress.done[-1]!r}" if progress.done else " before its first step"
    left = lib.left_behind(name)
    if not left:
        return f"up interrupted by {exc.signal_name}{where}; nothing was created"
    return (
        f"up interrupted by {exc.signal_name}{where}; left of cluster {name}: "
        f"{', '.join(left)}; `clusterkit down {name}` removes it"
    )


def _print_dry_run(spec: ClusterSpec, plan: DryRun) -> None:
    console.out.print(
        f"Dry run: cluster [bold]{spec.name}[/] on {spec.provider}; nothing is changed."
    )
    for resource in plan.resources:
        console.out.print(f"  would create: {resource}")
    if plan.cost is not None:
        c = plan.cost
        console.out.print(
            f"hourly cost: {c.low:.6f} to {c.high:.6f} {c.currency} "
            f"(static nodes at their cheapest .. every node at its dearest; {c.basis})"
        )
    for note in plan.notes:
        console.out.print(f"  note: {note}")


def _load(path: Path | None) -> ClusterSpec:
    if path is None:
        path = Path(DEFAULT_SPEC)
        if not path.exists():
            raise SpecError(
                str(path), ["no spec here: pass -f FILE or write one with `clusterkit init`"]
            )
    return load_spec(path)


@click.command()
@click.argument("name", required=False)
@click.option("--all", "everything", is_flag=True, help="Destroy every cluster on this machine.")
def down(name: str | None, everything: bool) -> None:
    """Destroy cluster NAME and everything it owns (works after a crashed `up` too)."""
    if bool(name) == everything:
        raise click.UsageError("give a cluster NAME or --all (not both)")
    results = (
        lib.down_all(RichProgress()) if everything else {name: lib.down(name or "", RichProgress())}
    )
    for cluster_name, removed in results.items():
        console.err.print(f"[green]✓[/] {cluster_name}: removed {len(removed)} resource(s)")
    if everything and not results:
        console.err.print("no clusters")


@click.command("list")
@output_option
def list_(output: str) -> None:
    """List clusters with their provider, status and nodes."""
    clusters = clusterinfo.list_clusters()
    if output == "json":
        click.echo(json.dumps([dataclasses.asdict(c) for c in clusters], indent=2))
        return
    table = Table("NAME", "PROVIDER", "STATUS", "NODES", "SUBNET", "CREATED", box=None)
    for c in clusters:
        running = sum(n.state == "running" for n in c.nodes)
        table.add_row(
            c.name, c.provider, c.status, f"{running}/{len(c.nodes)}", c.subnet or "-",
            c.created_at,
        )  # fmt: skip
    console.out.print(table if clusters else "no clusters")
    for name in lib.orphans():
        console.out.print(
            f"[yellow]also on this machine:[/] {name} (no state in this CLUSTERKIT_HOME: "
            f"another home's cluster, or lost state; `clusterkit down {name}` removes it)"
        )


@click.command()
@click.argument("name")
@output_option
def status(name: str, output: str) -> None:
    """Show a cluster's nodes (role, group, address, instance, state, Slurm state) and queue."""
    st = clusterinfo.status(name, with_slurm=True)
    if output == "json":
        click.echo(json.dumps(dataclasses.asdict(st), indent=2))
        return
    _print_status(st)


def _print_status(st: clusterinfo.ClusterStatus) -> None:
    colour = {"ready": "green", "degraded": "yellow", "failed": "red"}.get(st.status, "default")
    console.out.print(
        f"[bold]{st.name}[/]  provider={st.provider}  status=[{colour}]{st.status}[/]  "
        f"subnet={st.subnet}"
    )
    for problem in st.problems:
        console.out.print(f"  [yellow]![/] {escape(problem)}")
    slurm = st.slurm.nodes if st.slurm else {}
    table = Table(
        "NODE", "ROLE", "GROUP", "KIND", "ADDRESS", "INSTANCE", "STATE", "POWER", "SLURM",
        box=None,
    )  # fmt: skip
    for n in st.nodes:
        colour = {"running": "green", "off": "dim"}.get(n.state, "red")
        slurm_state = slurm.get(n.name, "-" if n.role == "head" else "?")
        table.add_row(
            n.name, n.role, n.group or "-", n.kind, n.address or "-", n.instance_id or "-",
            f"[{colour}]{n.state}[/]", n.power, escape(slurm_state),
        )  # fmt: skip
    console.out.print(table)
    if st.slurm is None:
        return
    if st.slurm.error:
        console.out.print(f"[yellow]Slurm:[/] {escape(st.slurm.error)}")
        return
    _print_queue(st.slurm.jobs, st.name)
    _print_actions(st.actions)


def _print_actions(actions: list[dict[str, Any]]) -> None:
    """The newest actions of power saving and the reconciler, one line each."""
    if not actions:
        return
    console.out.print("recent power actions:")
    for a in actions:
        nodes = ",".join(a.get("nodes", [])) or "-"
        detail = a.get("reason") or a.get("error") or a.get("detail") or ""
        took = f" ({a['seconds']}s)" if "seconds" in a else ""
        console.out.print(
            f"  {a.get('time', '?')}  {a.get('source', '?')} {a.get('action', '?')} "
            f"{escape(nodes)}{took} {escape(str(detail))}".rstrip()
        )


def _print_queue(jobs: list[SlurmJob], name: str) -> None:
    active = [j for j in jobs if not j.is_finished]
    if not active:
        console.out.print("queue: empty")
        return
    table = Table("JOBID", "USER", "STATE", "PARTITION", "NODES", "REASON", "NAME", box=None)
    for j in active:
        table.add_row(
            j.display_id, j.user, j.state, j.partition, j.nodes or "-", j.reason or "-",
            escape(j.name),
        )  # fmt: skip
    console.out.print(table)
    waiting = [(j, words) for j in active if j.state == "PENDING"
               if (words := why.in_words(j.reason, j.display_id))]  # fmt: skip
    for j, words in waiting[:MAX_WAITING_SHOWN]:
        console.out.print(f"  {j.display_id} waits: {escape(words)}")
    if waiting:
        console.out.print(f"  (clusterkit why {name} JOBID: what it waits for, with numbers)")


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("name")
@click.argument("node", required=False)
@click.option("-u", "--user", default="root", show_default=True, help="Log in as this user.")
@click.pass_context
def ssh(ctx: click.Context, name: str, node: str | None, user: str) -> None:
    """Open a shell on NODE (default: the head) of cluster NAME, or run `-- CMD` there.

    \b
    Host keys are checked against the cluster's own known_hosts:
      clusterkit ssh demo                          shell on demo-head
      clusterkit ssh demo compute-st-1 -- hostname
      clusterkit ssh demo -u ckuser -- sbatch --wrap hostname
    """
    command = (ctx.obj or {}).get("remote")
    argv = clusterinfo.ssh_argv(name, node, command, user=user)
    sys.stdout.flush()
    os.execvp(argv[0], argv)  # noqa: S606 - ssh replaces this process, as a shell would


@click.command("verify")
@click.argument("name")
@output_option
def verify_(name: str, output: str) -> None:
    """Check a live cluster on every node over SSH and print the results.

    Daemons running, munge credentials across nodes, the same Slurm configuration
    everywhere, shared storage mounted and writable, cgroup limits applied, nodes IDLE.
    Exits 1 when any check fails.
    """
    checks = verify(name)
    failed = failures(checks)
    if output == "json":
        click.echo(json.dumps([dataclasses.asdict(c) for c in checks], indent=2))
    else:
        table = Table("NODE", "CHECK", "RESULT", "DETAIL", box=None)
        for c in checks:
            mark = "[green]ok[/]" if c.ok else "[red]FAIL[/]"
            table.add_row(c.node, c.name, mark, escape(c.detail))
        console.out.print(table)
        console.out.print(f"{len(checks) - len(failed)}/{len(checks)} checks passed")
    if failed:
        raise ClusterkitError(
            f"{len(failed)} check(s) failed: " + ", ".join(f"{c.node} {c.name}" for c in failed)
        )


@click.command()
@click.argument("name")
@click.option(
    "-o", "--output", "directory", type=click.Path(path_type=Path), default=Path("."),
    show_default=True, help="Directory to write inventory.yml into.",
)  # fmt: skip
def inventory(name: str, directory: Path) -> None:
    """Write an Ansible inventory of cluster NAME, with every variable the playbooks use.

    \b
    Apply clusterkit's playbooks to the nodes with plain Ansible:
      clusterkit up -f cluster.yaml --no-configure
      clusterkit inventory demo -o ops/
      ansible-playbook -i ops/inventory.yml PLAYBOOKS/site.yml
    """
    path = clusterinfo.write_inventory_dir(name, directory)
    console.out.print(f"wrote {path}")
    console.out.print(f"run: ansible-playbook -i {path} {playbook_dir() / 'site.yml'}")


@click.command("env")
@click.argument("name")
def env_(name: str) -> None:
    """Print the environment for Slurm commands on this machine to use cluster NAME.

    \b
      eval "$(clusterkit env demo)"
      sinfo; sbatch --wrap hostname; squeue
    """
    for key, value in clusterinfo.client_env(name).items():
        click.echo(f"export {key}={shlex.quote(value)}")


@click.command()
@click.argument("path", type=click.Path(path_type=Path))
def validate(path: Path) -> None:
    """Check a cluster spec and report every problem with its path."""
    spec = load_spec(path)
    nodes = plan_nodes(spec)
    static = sum(n.static for n in nodes) - 1
    console.out.print(
        f"{path}: valid: cluster [bold]{spec.name}[/] on {spec.provider}, head + {static} "
        f"static + {len(nodes) - 1 - static} dynamic compute node(s) "
        f"in {len(spec.groups)} group(s)"
    )


@click.command()
@click.argument("path", type=click.Path(path_type=Path), default=DEFAULT_SPEC)
@click.option("--name", default="demo", show_default=True, help="Name of the cluster.")
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
def init(path: Path, name: str, force: bool) -> None:
    """Write an annotated example spec to PATH (default: ./cluster.yaml)."""
    if path.exists() and not force:
        raise SpecError(str(path), ["exists already; pass --force to overwrite it"])
    text = example_spec_text(name)
    parse_spec_text(text, source=f"--name {name}")  # a bad --name fails here, before writing
    path.write_text(text, encoding="utf-8")
    console.out.print(f"wrote {path}; next: clusterkit validate {path} && clusterkit up -f {path}")
