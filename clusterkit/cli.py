"""The ``clusterkit`` command: a thin layer over the library.

It parses arguments, draws progress and tables, and maps errors to exit codes: an expected
failure (``ClusterkitError``) is one red line and exit 1; anything else is a bug, written with
its traceback to a file under ``$CLUSTERKIT_HOME/logs`` and reported in one line, exit 70.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import sys
import time
import traceback
from pathlib import Path
from typing import Any, NoReturn

import click
from rich.markup import escape
from rich.table import Table

from clusterkit import __version__, elastic
from clusterkit import cluster as lib
from clusterkit import interrupt as signals
from clusterkit.cli_image import image as image_group
from clusterkit.cli_pack import pack as pack_group
from clusterkit.cli_spot import events as events_command
from clusterkit.cli_spot import spot_report as spot_report_command
from clusterkit.cli_steps import StepProgress, err, out, output_option
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
from clusterkit.state import home
from clusterkit.verify import failures, verify

EXIT_INTERNAL = 70
DEFAULT_SPEC = "cluster.yaml"


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
    "verify": "Verified on every node (testinfra)",
}


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="clusterkit")
def cli() -> None:
    """Ephemeral Slurm clusters on demand.

    \b
    A cluster is a head node plus compute nodes, described by a YAML spec:
      clusterkit init cluster.yaml        write an annotated example spec
      clusterkit up -f cluster.yaml       build it (run again to reconcile)
      clusterkit ssh NAME                 a shell on the head node
      clusterkit ssh NAME NODE -- CMD     run CMD on one node
      clusterkit down NAME                destroy it, leaving nothing behind

    State lives in ~/.clusterkit (or $CLUSTERKIT_HOME).
    """


@cli.command()
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
    err.print(
        f"Cluster [bold]{spec.name}[/] on {spec.provider}: head + {len(static) - 1} "
        f"static compute node(s)"
    )
    start = time.monotonic()
    progress = RichProgress(spec.provider)
    try:
        lib.up(spec, progress, configure=not no_configure)
    except signals.Interrupted as exc:
        _stop(_interrupted_up(spec.name, exc, progress), exc.exit_code)
    err.print(f"[green]Cluster {spec.name} is ready[/] in {time.monotonic() - start:.1f}s.")
    _print_status(lib.status(spec.name, with_slurm=not no_configure))
    user = spec.users[0].name if spec.users else "root"
    out.print(
        f"\nNext: [bold]clusterkit ssh {spec.name} -u {user}[/] (submit jobs there)   ·   "
        f"[bold]clusterkit down {spec.name}[/]"
    )


def _interrupted_up(name: str, exc: signals.Interrupted, progress: RichProgress) -> str:
    """One line: where ``up`` stopped, what it left, and how to remove that."""
    if exc.step:
        where = f" during {progress.labels.get(exc.step, exc.step)!r}"
    else:  # between two steps
        where = f" after {progress.done[-1]!r}" if progress.done else ""
    left = lib.left_behind(name)
    if not left:
        return f"up interrupted by {exc.signal_name}{where}; nothing was created"
    return (
        f"up interrupted by {exc.signal_name}{where}; left of cluster {name}: "
        f"{', '.join(left)}; `clusterkit down {name}` removes it"
    )


def _print_dry_run(spec: ClusterSpec, plan: DryRun) -> None:
    out.print(f"Dry run: cluster [bold]{spec.name}[/] on {spec.provider}; nothing is changed.")
    for resource in plan.resources:
        out.print(f"  would create: {resource}")
    if plan.cost is not None:
        c = plan.cost
        out.print(
            f"hourly cost: {c.low:.6f} to {c.high:.6f} {c.currency} "
            f"(static nodes at their cheapest .. every node at its dearest; {c.basis})"
        )
    for note in plan.notes:
        out.print(f"  note: {note}")


def _load(path: Path | None) -> ClusterSpec:
    if path is None:
        path = Path(DEFAULT_SPEC)
        if not path.exists():
            raise SpecError(
                str(path), ["no spec here: pass -f FILE or write one with `clusterkit init`"]
            )
    return load_spec(path)


@cli.command()
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
        err.print(f"[green]✓[/] {cluster_name}: removed {len(removed)} resource(s)")
    if everything and not results:
        err.print("no clusters")


@cli.command("list")
@output_option
def list_(output: str) -> None:
    """List clusters with their provider, status and nodes."""
    clusters = lib.list_clusters()
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
    out.print(table if clusters else "no clusters")
    for name in lib.orphans():
        out.print(
            f"[yellow]also on this machine:[/] {name} (no state in this CLUSTERKIT_HOME: "
            f"another home's cluster, or lost state; `clusterkit down {name}` removes it)"
        )


@cli.command()
@click.argument("name")
@output_option
def status(name: str, output: str) -> None:
    """Show a cluster's nodes (role, group, address, instance, state, Slurm state) and queue."""
    st = lib.status(name, with_slurm=True)
    if output == "json":
        click.echo(json.dumps(dataclasses.asdict(st), indent=2))
        return
    _print_status(st)


def _print_status(st: lib.ClusterStatus) -> None:
    out.print(f"[bold]{st.name}[/]  provider={st.provider}  status={st.status}  subnet={st.subnet}")
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
    out.print(table)
    if st.slurm is None:
        return
    if st.slurm.error:
        out.print(f"[yellow]Slurm:[/] {escape(st.slurm.error)}")
        return
    _print_queue(st.slurm.jobs)
    _print_actions(st.actions)


def _print_actions(actions: list[dict[str, Any]]) -> None:
    """The newest actions of power saving and the reconciler, one line each."""
    if not actions:
        return
    out.print("recent power actions:")
    for a in actions:
        nodes = ",".join(a.get("nodes", [])) or "-"
        detail = a.get("reason") or a.get("error") or a.get("detail") or ""
        took = f" ({a['seconds']}s)" if "seconds" in a else ""
        out.print(
            f"  {a.get('time', '?')}  {a.get('source', '?')} {a.get('action', '?')} "
            f"{escape(nodes)}{took} {escape(str(detail))}".rstrip()
        )


def _print_queue(jobs: list[SlurmJob]) -> None:
    active = [j for j in jobs if not j.is_finished]
    if not active:
        out.print("queue: empty")
        return
    table = Table("JOBID", "USER", "STATE", "PARTITION", "NODES", "REASON", "NAME", box=None)
    for j in active:
        table.add_row(
            j.display_id, j.user, j.state, j.partition, j.nodes or "-", j.reason or "-",
            escape(j.name),
        )  # fmt: skip
    out.print(table)


@cli.command("cloud")
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
    out.print(f"capacity: {limits}")
    failing = settings["fail_count"]
    out.print(f"failing launches: {failing} more ({settings['fail_code']})" if failing else
              "failing launches: none")  # fmt: skip
    out.print(f"boot delay: {settings['boot_delay']:g}s")


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


@cli.command("interrupt")
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
    what = elastic.REBALANCE if rebalance else action or "terminate"
    sent = elastic.interrupt(name, node, what, in_seconds)
    if output == "json":
        click.echo(json.dumps(dataclasses.asdict(sent), indent=2))
    elif rebalance:
        out.print(f"{sent.node} ({sent.instance_id}): rebalance recommendation sent at {sent.time}")
    else:
        out.print(
            f"{sent.node} ({sent.instance_id}): spot notice '{sent.action}' sent; the instance "
            f"ends at {sent.time} (in {sent.in_seconds:g} s)"
        )


@cli.command(context_settings={"ignore_unknown_options": True})
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
    argv = lib.ssh_argv(name, node, command, user=user)
    sys.stdout.flush()
    os.execvp(argv[0], argv)  # noqa: S606 - ssh replaces this process, as a shell would


@cli.command("verify")
@click.argument("name")
@output_option
def verify_(name: str, output: str) -> None:
    """Check a live cluster on every node over SSH (testinfra) and print the results.

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
        out.print(table)
        out.print(f"{len(checks) - len(failed)}/{len(checks)} checks passed")
    if failed:
        raise ClusterkitError(
            f"{len(failed)} check(s) failed: " + ", ".join(f"{c.node} {c.name}" for c in failed)
        )


@cli.command()
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
    path = lib.write_inventory_dir(name, directory)
    out.print(f"wrote {path}")
    out.print(f"run: ansible-playbook -i {path} {playbook_dir() / 'site.yml'}")


@cli.command("env")
@click.argument("name")
def env_(name: str) -> None:
    """Print the environment for Slurm commands on this machine to use cluster NAME.

    \b
      eval "$(clusterkit env demo)"
      sinfo; sbatch --wrap hostname; squeue
    """
    for key, value in lib.client_env(name).items():
        click.echo(f"export {key}={shlex.quote(value)}")


@cli.command()
@click.argument("path", type=click.Path(path_type=Path))
def validate(path: Path) -> None:
    """Check a cluster spec and report every problem with its path."""
    spec = load_spec(path)
    nodes = plan_nodes(spec)
    static = sum(n.static for n in nodes) - 1
    out.print(
        f"{path}: valid: cluster [bold]{spec.name}[/] on {spec.provider}, head + {static} "
        f"static + {len(nodes) - 1 - static} dynamic compute node(s) "
        f"in {len(spec.groups)} group(s)"
    )


@cli.command()
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
    out.print(f"wrote {path}; next: clusterkit validate {path} && clusterkit up -f {path}")


# ---------------------------------------------------------------------------------------------


cli.add_command(pack_group)
cli.add_command(image_group)
cli.add_command(events_command)
cli.add_command(spot_report_command)


def _split_remote(args: list[str]) -> tuple[list[str], list[str] | None]:
    """``ssh NAME [NODE] -- CMD``: the words after ``--`` are the remote command, verbatim."""
    if "--" in args and "ssh" in args[: args.index("--")]:
        cut = args.index("--")
        return args[:cut], args[cut + 1 :]
    return args, None


def _fail(message: str, code: int) -> NoReturn:
    # Messages quote user input (spec keys, paths): print them verbatim, never as markup.
    err.print(f"[red]error:[/] {escape(message)}", soft_wrap=True)
    sys.exit(code)


def _stop(message: str, code: int) -> NoReturn:
    """Exit at once after an interrupt: worker threads still finishing a wait (an SSH probe)
    are not waited for, as a normal exit would."""
    err.print(f"[red]error:[/] {escape(message)}", soft_wrap=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _report_bug(exc: BaseException) -> NoReturn:
    logs = home() / "logs"
    try:
        logs.mkdir(parents=True, exist_ok=True)
        path: Any = logs / f"crash-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
        path.write_text("".join(traceback.format_exception(exc)), encoding="utf-8")
    except OSError:
        path = "(could not be written)"
    _fail(f"internal error: {type(exc).__name__}: {exc} (traceback in {path})", EXIT_INTERNAL)


def main(argv: list[str] | None = None) -> NoReturn:
    args, remote = _split_remote(list(sys.argv[1:] if argv is None else argv))
    try:
        with signals.installed():
            cli.main(
                args=args, prog_name="clusterkit", obj={"remote": remote}, standalone_mode=False
            )
    except SpecError as exc:
        if len(exc.problems) > 1:
            detail = "".join(f"\n  {exc.source}: {p}" for p in exc.problems)
            _fail(f"{exc.source}: {len(exc.problems)} problems:{detail}", exc.exit_code)
        _fail(str(exc), exc.exit_code)
    except ClusterkitError as exc:
        _fail(str(exc), exc.exit_code)
    except click.exceptions.Abort:
        _fail("aborted", 130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except signals.Interrupted as exc:
        _stop(f"interrupted by {exc.signal_name}", exc.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted; `clusterkit down NAME` cleans up whatever was made", 130)
    except Exception as exc:  # noqa: BLE001 - the one place bugs are caught
        _report_bug(exc)
    sys.exit(0)


if __name__ == "__main__":
    main()
