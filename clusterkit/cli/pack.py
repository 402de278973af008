"""``clusterkit pack``: the command group for many short tasks (a thin layer over ``pack``,
``packplan`` and ``packtasks``)."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from clusterkit import pack as lib
from clusterkit import packplan, packtasks
from clusterkit.cli import console
from clusterkit.cli.console import output_option
from clusterkit.errors import ClusterkitError

user_option = click.option(
    "-u", "--user", default=None, help="The cluster user (default: the spec's first user)."
)


def _duration(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    return None if value is None else packplan.parse_duration(value, f"--{param.name}")


def _memory(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    return None if value is None else packplan.parse_memory(value)


def _chunk(ctx: click.Context, param: click.Parameter, value: str) -> int | None:
    if value == "auto":
        return None
    if not value.isdigit() or int(value) < 1:
        raise click.BadParameter("a number of tasks per block (1 or more), or auto")
    return int(value)


@click.group("pack")
def pack() -> None:
    """Run many short tasks (thousands to 100,000) as one Slurm job array.

    \b
    Tasks are one command per line, or a template filled from a CSV/JSONL of parameters:
      clusterkit pack submit demo tasks.txt --estimate 30s --time 5m --mem 1G
      clusterkit pack submit demo params.csv --template 'sim --seed {seed} --T {temp}'
      clusterkit pack status demo --wait          a progress bar until it ends
      clusterkit pack retry demo                  run only the tasks that failed, again
      clusterkit pack collect demo -d results/    results.csv, summary.json and outputs

    \b
    Each array element holds ONE task's CPUs and memory and runs tasks one after another,
    taking blocks of them from the pack's queue until none is left (an element that
    starts late or gets short tasks takes fewer); Slurm packs elements onto nodes
    (cons_tres) and each element's cgroup enforces its task's memory, so a task that
    leaks memory is the only one killed. Every attempt is a record in the pack's manifest
    on shared storage (~/ck-pack/PACK/manifest/): exit code, runtime, node, attempt,
    output files. A requeued element runs its blocks' unfinished tasks again, not the rest.
    """


@pack.command()
@click.argument("name")
@click.argument("tasks", type=click.Path(path_type=Path))
@click.option(
    "--template", default=None,
    help="A command with {column} placeholders; TASKS is then a .csv (header row) or .jsonl "
    "of parameters. Values are shell-quoted; {{ and }} are literal braces.",
)  # fmt: skip
@click.option("-c", "--cpus", default=1, show_default=True, help="CPUs per task.")
@click.option("--gpus", default=0, show_default=True, help="GPUs per task (gres gpu).")
@click.option(
    "--mem", "memory_mb", callback=_memory, default=None,
    help="Memory per task, enforced by its cgroup (512M, 2G; default: the cluster's per-CPU "
    "default). A task over it is killed and recorded as oom.",
)  # fmt: skip
@click.option(
    "--time", "time_s", callback=_duration, default=None,
    help="Time limit per task (90, 90s, 5m, 2h, H:MM:SS); a task over it is recorded as "
    "timeout. Default: none.",
)  # fmt: skip
@click.option(
    "--estimate", "estimate_s", callback=_duration, default=None,
    help="Expected duration of a task. With it, a pack of little work starts fewer elements "
    f"(each gets >= {packplan.MIN_ELEMENT_WORK_S:g} s of it); without it, one per slot.",
)  # fmt: skip
@click.option(
    "--chunk", callback=_chunk, default="auto", show_default=True,
    help="Tasks per block of the queue the elements take from. auto: each block a share of "
    "what is left (large first, single tasks last), so the elements end together.",
)  # fmt: skip
@click.option(
    "--max-concurrent", type=int, default=None, help="Elements running at once (--array=%N)."
)
@click.option(
    "--retries", type=int, default=0, show_default=True,
    help="Extra attempts of a failed task, inside its element (each attempt is recorded).",
)  # fmt: skip
@click.option("-p", "--partition", default=None, help="Slurm partition (default: Slurm's).")
@click.option(
    "--chdir", default=None, help="Working directory of the tasks on the cluster (default: home)."
)
@click.option(
    "--name", "pack_name", default=None,
    help="The pack's name, its directory ~/ck-pack/NAME (default: a timestamp).",
)  # fmt: skip
@click.option(
    "--container", "image", default=None, metavar="IMAGE",
    help="Run each task in a container of IMAGE: a root file system, as a directory or a "
    "tar (gz/xz/bz2/zst), on this machine or on the cluster. See below.",
)  # fmt: skip
@click.option("--hold", is_flag=True, help="Submit held; `scontrol release JOBID` starts it.")
@user_option
@output_option
def submit(  # noqa: PLR0917 - click passes every option as an argument
    name: str, tasks: Path, template: str | None, cpus: int, gpus: int, memory_mb: int | None,
    time_s: float | None, estimate_s: float | None, chunk: int | None,
    max_concurrent: int | None, retries: int, partition: str | None, chdir: str | None,
    pack_name: str | None, image: str | None, hold: bool, user: str | None, output: str,
) -> None:  # fmt: skip
    """Submit the tasks of TASKS to cluster NAME as one job array; prints its job id.

    \b
    TASKS is a file of shell commands, one per line (blank lines and # comments skipped),
    or with --template a .csv/.jsonl of parameters. Each task sees CK_PACK_TASK (its id,
    from 0), CK_PACK_ATTEMPT and CK_PACK_DIR (the pack's directory) in its environment.

    \b
    A task that needs more (or less) than the options say gives its own resources:
      @cpus=4,mem=2G,time=5m,gpus=1 sim --big      a line of TASKS
      seed,cpus,mem                                 columns cpus, mem, time, gpus of a .csv
      {"seed": 7, "cpus": 4, "mem": "2G"}           keys of a .jsonl line
    Tasks of each shape run in one array of their own (largest first), side by side on
    the same nodes; a task no node can hold is refused, naming it and the largest node.

    \b
    With --container IMAGE each task runs in its own rootless OCI container (crun), as
    the cluster user, inside its element's cgroup (its CPUs and memory):
      docker export $(docker create debian:12) > debian.tar     any flat root file system
      clusterkit pack submit demo tasks.txt --container debian.tar
    The image is unpacked once into the pack (~/ck-pack/PACK/image) and is read-only; the
    pack's directory is the only writable one (CK_PACK_DIR, the working directory unless
    --chdir, which is bound read-only), with /tmp private to the task. A command with
    shell syntax runs in the image's /bin/sh.
    """
    start = time.monotonic()
    found = packtasks.load_tasks(tasks, template)
    options = packplan.PackOptions(
        cpus=cpus, gpus=gpus, memory_mb=memory_mb, time_s=time_s, estimate_s=estimate_s,
        chunk=chunk, max_concurrent=max_concurrent, retries=retries, partition=partition,
        chdir=chdir, name=pack_name, user=user, hold=hold, container=image,
    )  # fmt: skip
    done = lib.submit(name, found, options, on_image=_unpacking)
    if output == "json":
        click.echo(json.dumps(dataclasses.asdict(done)))
        return
    _print_submitted(done, time.monotonic() - start)


def _unpacking(image: str) -> None:
    console.err.print(f"[dim]Unpacking the image {escape(image)} on the cluster...[/]")


def _print_submitted(done: lib.Submitted, seconds: float) -> None:
    console.err.print(
        f"Pack [bold]{done.pack}[/]: {done.tasks} task(s) in {len(done.arrays)} array(s) "
        f"({seconds:.1f}s)"
    )
    for a in done.arrays:
        c = a.chunking
        shape = f"{a.cpus} CPU(s)" + (f", {a.memory_mb} MiB" if a.memory_mb else "")
        shape += f", {a.gpus} GPU(s)" if a.gpus else ""
        shape += f", up to {a.time_s:g} s" if a.time_s else ""
        console.err.print(
            f"  job {a.job_id}: {a.tasks} task(s) of {shape}, {c.elements} element(s) taking "
            f"{c.blocks} block(s) of up to {c.chunk} task(s), {c.slots} slot(s)"
        )
        console.err.print(f"  [dim]blocks: {escape(c.rule)}[/]")
    console.err.print(f"[dim]files: ~/{done.directory} on the cluster[/]")
    console.err.print(f"Next: [bold]clusterkit pack status {done.cluster} {done.pack} --wait[/]")
    console.out.print(" ".join(str(a.job_id) for a in done.arrays))


@pack.command("status")
@click.argument("name")
@click.argument("pack_name", metavar="[PACK]", required=False)
@click.option("--wait", is_flag=True, help="Show a progress bar until no element is left.")
@click.option(
    "--interval", default=2.0, show_default=True, help="Seconds between polls with --wait."
)
@user_option
@output_option
def status_(  # noqa: PLR0917 - click passes every option as an argument
    name: str, pack_name: str | None, wait: bool, interval: float, user: str | None, output: str
) -> None:
    """Done / running / failed / pending tasks of PACK (default: the latest) on NAME.

    With --wait it polls until every element has ended and exits 1 if any task failed
    (`clusterkit pack retry` runs those again).
    """
    st = lib.status(name, pack_name, user)
    if wait and not st.finished:
        st = _wait(name, st, interval, user)
    if output == "json":
        click.echo(json.dumps(dataclasses.asdict(st)))
    else:
        _print_status(st)
    if wait and st.failed:
        raise ClusterkitError(
            f"{st.failed} task(s) of pack {st.pack} failed: `clusterkit pack retry {name} "
            f"{st.pack}` runs them again"
        )


def _wait(name: str, st: lib.PackStatus, interval: float, user: str | None) -> lib.PackStatus:
    columns = (
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"), TimeElapsedColumn(),
    )  # fmt: skip
    rate = lib.Throughput()
    with Progress(*columns, console=console.err, transient=False) as bar:
        task = bar.add_task(st.pack, total=st.tasks, completed=st.done + st.failed, detail="")
        while True:
            finished = st.done + st.failed
            rate.add(time.monotonic(), finished)
            detail = f"running {st.running}, pending {st.pending}, failed {st.failed}"
            bar.update(task, completed=finished, detail=f"{detail}  {_speed(rate, st)}")
            if st.finished:
                return st
            time.sleep(interval)
            st = lib.status(name, st.pack, user)


def _speed(rate: lib.Throughput, st: lib.PackStatus) -> str:
    """``12.3 tasks/s, ETA 0:01:05`` (``-`` until a task has ended between two polls)."""
    per_s = rate.rate
    if per_s is None:
        return "- tasks/s, ETA -"
    eta = rate.eta(st.tasks - st.done - st.failed) or 0.0
    whole = round(eta)
    return f"{per_s:.1f} tasks/s, ETA {whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


def _print_status(st: lib.PackStatus) -> None:
    table = Table("PACK", "TASKS", "DONE", "RUNNING", "FAILED", "PENDING", box=None)
    failed = f"[red]{st.failed}[/]" if st.failed else "0"
    table.add_row(st.pack, str(st.tasks), f"[green]{st.done}[/]", str(st.running), failed,
                  str(st.pending))  # fmt: skip
    console.out.print(table)
    if st.failures:
        kinds = ", ".join(f"{k} {v}" for k, v in st.failures.items())
        lost = "  (lost: its element ended before running it)" if "lost" in st.failures else ""
        console.out.print(f"failed: {kinds}{lost}")
    for run in st.runs:
        what = "submit" if run["run"] == 0 else f"retry {run['run']}"
        live = f", {run['live']} queued or running" if run["live"] else ""
        console.out.print(
            f"[dim]{what}: job {run['job_id']}, {run['elements']} element(s){live}[/]"
        )


@pack.command("list")
@click.argument("name")
@user_option
@output_option
def list_(name: str, user: str | None, output: str) -> None:
    """Every pack of the user on cluster NAME, oldest first."""
    packs = lib.list_packs(name, user)
    if output == "json":
        click.echo(json.dumps(packs))
        return
    table = Table("PACK", "TASKS", "CREATED", box=None)
    for p in packs:
        table.add_row(p["pack"], str(p.get("tasks", "?")), str(p.get("created", "?")))
    console.out.print(table)


@pack.command()
@click.argument("name")
@click.argument("pack_name", metavar="[PACK]", required=False)
@click.option("--mem", "memory_mb", callback=_memory, default=None, help="New memory per task.")
@click.option("--time", "time_s", callback=_duration, default=None, help="New time limit.")
@click.option("--retries", type=int, default=None, help="New number of in-element retries.")
@click.option("-p", "--partition", default=None, help="Another partition.")
@user_option
@output_option
def retry(  # noqa: PLR0917 - click passes every option as an argument
    name: str, pack_name: str | None, memory_mb: int | None, time_s: float | None,
    retries: int | None, partition: str | None, user: str | None, output: str,
) -> None:  # fmt: skip
    """Submit a new array of only the tasks of PACK that failed (failed, timeout, oom, lost).

    The pack's options are kept unless given here: e.g. `--mem 4G` for tasks that ran out
    of memory. Refused while elements of the pack are still queued or running.
    """
    changes: dict[str, Any] = {
        k: v for k, v in (("memory_mb", memory_mb), ("time_s", time_s), ("retries", retries),
                          ("partition", partition)) if v is not None
    }  # fmt: skip
    done = lib.retry(name, pack_name, user, changes)
    if output == "json":
        click.echo(json.dumps(dataclasses.asdict(done)))
        return
    if done.submitted is None:
        console.err.print(f"Nothing to retry: every task of pack {done.status.pack} is done.")
        return
    _print_submitted(done.submitted, 0.0)


@pack.command()
@click.argument("name")
@click.argument("pack_name", metavar="[PACK]", required=False)
@click.option(
    "-d", "--dest", type=click.Path(path_type=Path), default=Path("."), show_default=True,
    help="Where to write DEST/PACK/: results.csv, summary.json and out/ (every task's output).",
)  # fmt: skip
@user_option
@output_option
def collect(name: str, pack_name: str | None, dest: Path, user: str | None, output: str) -> None:
    """Gather PACK's results: a summary, one CSV row per task, and every task's output."""
    done = lib.collect(name, dest, pack_name, user)
    if output == "json":
        click.echo(json.dumps({**done.summary, "directory": str(done.directory)}))
        return
    s = done.summary
    console.out.print(
        f"Pack [bold]{s['pack']}[/]: {s['done']} done, {s['failed']} failed, "
        f"{s['running'] + s['pending']} not finished, of {s['tasks']}"
    )
    if s.get("makespan_s") is not None:
        console.out.print(f"task time {s['task_seconds']:.1f} s, makespan {s['makespan_s']:.1f} s")
    console.out.print(f"written: {done.directory}/results.csv, summary.json, out/")
