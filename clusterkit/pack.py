"""High-throughput packing on a live cluster: submit a pack of many short tasks as one Slurm
job array, and read, retry and collect it.

``submit`` takes the tasks (``packtasks``) and the chunking (``packplan``), writes the pack
onto shared storage and submits ONE ``sbatch --array`` as the cluster user, both in a single
SSH session to the head. Its elements run ``ck-pack-run`` (``nodetools/packrun.py``), which
takes blocks of tasks from the run's queue and writes the manifest; ``status``, ``retry``
and ``collect`` read it on the head through ``ck-pack`` (``nodetools/packstate.py``), one
SSH session each. Nothing here prints.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import secrets
import shlex
import tarfile
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import IO, Any, NamedTuple

from clusterkit import packimage, proc
from clusterkit.errors import CommandError, StateError
from clusterkit.nodetools.packcontainer import ROOTFS
from clusterkit.nodetools.packdir import FORMAT, ROOT_NAME, PackError, RunSpec, task_files
from clusterkit.packplan import (
    Chunking,
    PackOptions,
    Shape,
    auto_chunk,
    cluster_slots,
    element_time_limit,
    fixed_chunk,
    partition_nodes,
    too_big,
)
from clusterkit.packtasks import Tasks, levels
from clusterkit.plan import cluster_users, head_name, plan_nodes
from clusterkit.render import render
from clusterkit.slurm import SlurmNode
from clusterkit.slurmconf import tools_dir
from clusterkit.slurmreader import SlurmReader
from clusterkit.spec import ClusterSpec
from clusterkit.state import ClusterState, check_name, load_state, spec_of
from clusterkit.trust import ClusterTrust

SUBMIT_TIMEOUT_S = 120.0
IMAGE_TIMEOUT_S = 3600.0  # an image of gigabytes, streamed to the head
QUERY_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Target:
    """Where a pack lives: the cluster, its user, and how to reach the head as that user."""

    name: str
    spec: ClusterSpec
    state: ClusterState
    user: str

    @property
    def trust(self) -> ClusterTrust:
        return ClusterTrust(self.name, self.state.dir)

    @property
    def bin_dir(self) -> str:
        return tools_dir(self.spec)

    def remote(
        self,
        script: str,
        stdin: str | None = None,
        timeout: float | None = QUERY_TIMEOUT_S,
        stream: IO[bytes] | None = None,
    ) -> str:
        """Run ``script`` (bash) on the head as the user, fed ``stdin`` (text) or ``stream``
        (a binary file); its stdout. A failure's last stderr line becomes a ``PackError``
        naming the cluster."""
        argv = self.trust.ssh_argv(head_name(self.name), [script], user=self.user, reuse=True)
        try:
            return proc.run(argv, input=stdin, stdin=stream, timeout=timeout).stdout
        except CommandError as exc:
            lines = [ln for ln in exc.stderr.strip().splitlines() if ln.strip()]
            raise PackError(
                f"cluster {self.name}: {lines[-1] if lines else f'exit {exc.returncode}'}"
            ) from None

    def reader(self) -> SlurmReader:
        head = head_name(self.name)
        return SlurmReader.create(
            # as the user: the same shared connection as the submission's after it
            lambda argv: (
                proc.run(
                    self.trust.ssh_argv(head, argv, user=self.user, reuse=True), timeout=30
                ).stdout
            )
        )

    def tool(self, *args: str) -> Any:
        """``ck-pack ARGS`` on the head, as the user; its JSON output."""
        command = " ".join(shlex.quote(a) for a in (f"{self.bin_dir}/ck-pack", *args))
        return json.loads(self.remote(command))


def target(name: str, user: str | None = None) -> Target:
    """Cluster ``name`` ready for packs: configured, with the user (default: the first)."""
    check_name(name)
    state = load_state(name)
    if "configure" not in state.steps:
        raise StateError(f"cluster {name!r} has no Slurm (made with --no-configure)")
    spec = spec_of(state)
    users = [u.name for u in cluster_users(spec)]
    if not users and user is None:
        raise PackError(f"cluster {name!r} has no users; packs run as a cluster user (spec: users)")
    chosen = user or users[0]
    if chosen not in users:
        raise PackError(f"--user {chosen!r} is not a user of cluster {name}: {', '.join(users)}")
    return Target(name, spec, state, chosen)


# ---------------------------------------------------------------------------------------------
# submit


@dataclass(frozen=True)
class Array:
    """One job array of a pack's run: the tasks of one shape."""

    run: int
    job_id: int
    tasks: int
    cpus: int
    memory_mb: int | None
    time_s: float | None
    gpus: int
    chunking: Chunking
    level: int = 0  # it starts once the arrays of the level before have ended


@dataclass(frozen=True)
class Submitted:
    """The job arrays submitted for a pack (one per shape of task, largest first);
    ``run``, ``job_id`` and ``chunking`` are the first one's."""

    cluster: str
    pack: str
    run: int
    job_id: int
    tasks: int
    chunking: Chunking
    directory: str  # on the cluster, relative to the user's home
    arrays: list[Array] = field(default_factory=list)


def submit(
    name: str, tasks: Tasks, options: PackOptions, on_image: Callable[[str], None] | None = None
) -> Submitted:
    """Write the pack onto shared storage and submit its job arrays; one SSH session (two
    with ``--container``: the image is unpacked on the head first, and ``on_image`` is told
    before that starts)."""
    options.check()
    image = packimage.find(options.container) if options.container else None
    where = target(name, options.user)
    pack = options.name or f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
    after = tasks.after
    groups = task_groups(range(len(tasks.commands)), options, tasks.shapes.__getitem__,
                         (lambda t: after[t]) if after else (lambda t: ()))  # fmt: skip
    planned = plan_runs(where, 0, groups, len(tasks.commands))
    txt, idx = task_files(tasks.commands)
    info = {
        "format": FORMAT,
        "pack": pack,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "tasks": len(tasks.commands),
        "options": asdict(options),
    }
    files = {"pack.json": json.dumps(info, indent=2).encode(), "tasks.txt": txt, "tasks.idx": idx}
    if image is None:
        job_ids = _submit_planned(where, pack, planned, files, fresh=True)
        return _submitted(name, pack, planned, job_ids)
    if on_image:
        on_image(image.image)
    stage_image(where, pack, image, options.chdir)
    try:
        job_ids = _submit_planned(where, pack, planned, files, fresh=True, image=True)
    except PackError:
        with contextlib.suppress(PackError):  # the submit script left the image staged
            where.remote(f"rm -rf {packimage.staging_dir(pack)}")
        raise
    return _submitted(name, pack, planned, job_ids)


def stage_image(where: Target, pack: str, image: packimage.ImageSource, chdir: str | None) -> None:
    """Unpack the pack's image into its staging directory on the head (one SSH session)."""
    script = packimage.stage_script(pack, image, chdir)
    with packimage.stream(image) as stream:
        where.remote(script, stdin=None if stream else "", stream=stream, timeout=IMAGE_TIMEOUT_S)


Planned = tuple[RunSpec, PackOptions, Chunking, int]  # the run, its options, blocks, level


class Group(NamedTuple):
    """Tasks that run in one array: one shape, one level of dependencies."""

    options: PackOptions  # the pack's options with the shape's resources
    ids: list[int]
    level: int = 0  # 0: needs nothing; n: needs tasks of levels below n
    after: dict[int, tuple[int, ...]] | None = None  # what its tasks need, where they do


def task_groups(
    ids: Sequence[int],
    options: PackOptions,
    shape_of: Callable[[int], Shape | None],
    after_of: Callable[[int], tuple[int, ...]] = lambda task: (),
) -> list[Group]:
    """Tasks ``ids`` by level and shape: the levels in order (a level's arrays start when
    the level before has ended), and in each the largest shapes first, so that Slurm
    places them before the small ones fill the gaps. Only the tasks needed among ``ids``
    make levels: any other a task needs has run before (a retry)."""
    index = {task: n for n, task in enumerate(ids)}
    needs = [tuple(index[d] for d in after_of(task) if d in index) for task in ids]
    level = levels(needs) if any(needs) else [0] * len(ids)
    groups: dict[tuple[int, Shape], list[int]] = {}
    for n, task in enumerate(ids):
        shape = options.shaped(shape_of(task)).shape
        groups.setdefault((level[n], shape), []).append(task)

    def order(key: tuple[int, Shape]) -> tuple[int, int, int, int]:
        lv, shape = key
        return (lv, -(shape.gpus or 0), -(shape.cpus or 1), -(shape.memory_mb or 0))

    found = []
    for key in sorted(groups, key=order):
        members = groups[key]
        after = {t: deps for t in members if (deps := after_of(t))}
        found.append(Group(options.shaped(key[1]), members, key[0], after or None))
    return found


def plan_runs(where: Target, first_run: int, groups: list[Group], total: int) -> list[Planned]:
    """Runs ``first_run``, ``first_run + 1``, ... for ``groups``; a group of every task in
    order (a pack of one shape) needs no list of ids. Refuses a shape no node holds,
    naming its first task."""
    nodes = where.reader().nodes()
    gpus_of = node_gpus(where.spec)
    planned = []
    for run, group in enumerate(groups, first_run):
        opts, ids = group.options, group.ids
        opts.check()
        every = len(groups) == 1 and len(ids) == total and first_run == 0
        first = "a task" if every else f"task {ids[0]}"
        chunking = plan_chunks(where, nodes, len(ids), opts, task=first, gpus_of=gpus_of)
        spec = run_spec(run, chunking, len(ids), opts, None if every else ids)
        planned.append((spec._replace(after=group.after), opts, chunking, group.level))
    return planned


def waits_for(planned: list[Planned]) -> dict[int, list[int]]:
    """For each run of a level above 0, the runs of the level before it (Slurm's
    ``--dependency=afterany`` on their arrays)."""
    by_level: dict[int, list[int]] = {}
    for spec, _, _, level in planned:
        by_level.setdefault(level, []).append(spec.run)
    return {spec.run: by_level[level - 1] for spec, _, _, level in planned if level > 0}


def node_gpus(spec: ClusterSpec) -> Callable[[str], int]:
    """A node's GPUs, from its group in the spec (0 for the head or a name of no group)."""
    by_group = {g.name: g.gpus for g in spec.groups}
    found = {n.name: by_group.get(n.group or "", 0) for n in plan_nodes(spec)}
    return lambda name: found.get(name, 0)


def plan_chunks(
    where: Target,
    nodes: Sequence[SlurmNode],
    tasks: int,
    options: PackOptions,
    *,
    task: str = "a task",
    gpus_of: Callable[[str], int] = lambda name: 0,
) -> Chunking:
    slots = cluster_slots(nodes, options.partition, options.cpus, options.memory_mb,
                          gpus=options.gpus, gpus_of=gpus_of)  # fmt: skip
    if slots == 0:
        raise too_big(task, options, partition_nodes(nodes, options.partition), gpus_of)
    if options.max_concurrent:
        slots = min(slots, options.max_concurrent)
    max_elements = where.spec.slurm.max_array_size
    if options.chunk:
        return fixed_chunk(tasks, options.chunk, slots, max_elements)
    return auto_chunk(tasks, slots, options.estimate_s, max_elements)


def _submitted(name: str, pack: str, planned: list[Planned], job_ids: list[int]) -> Submitted:
    arrays = [
        Array(
            spec.run, job, spec.count, opts.cpus, opts.memory_mb, opts.time_s, opts.gpus, c, level
        )
        for (spec, opts, c, level), job in zip(planned, job_ids, strict=True)
    ]
    first = arrays[0]
    total = sum(a.tasks for a in arrays)
    return Submitted(name, pack, first.run, first.job_id, total, first.chunking,
                     f"{ROOT_NAME}/{pack}", arrays)  # fmt: skip


def run_spec(
    run: int, chunking: Chunking, count: int, options: PackOptions, ids: Sequence[int] | None
) -> RunSpec:
    return RunSpec(
        run=run,
        chunk=chunking.chunk,
        elements=chunking.elements,
        count=count,
        retries=options.retries,
        time_s=options.time_s,
        chdir=options.chdir,
        ids=None if ids is None else tuple(ids),
        blocks=chunking.sizes(count),
        cpus=options.cpus,
        memory_mb=options.memory_mb,
        gpus=options.gpus,
        container=ROOTFS if options.container else None,
    )


def job_script(bin_dir: str, pack: str, spec: RunSpec, options: PackOptions) -> str:
    """The job script of run ``spec.run`` (values computed here; the template places them)."""
    array = f"0-{spec.elements - 1}"
    if options.max_concurrent:
        array += f"%{options.max_concurrent}"
    return render(
        "pack/job.sh.j2",
        pack=pack,
        run=spec.run,
        count=spec.count,
        chunk=spec.chunk,
        blocks=spec.block_count,
        elements=spec.elements,
        job_name=f"pack-{pack}"[:64],
        array=array,
        cpus=options.cpus,
        memory_mb=options.memory_mb,
        gpus=options.gpus,
        time_minutes=element_time_limit(_most_tasks(spec), options),
        partition=options.partition,
        hold=options.hold,
        runner=shlex.quote(f"{bin_dir}/ck-pack-run"),
    )


def _most_tasks(spec: RunSpec) -> int:
    """The most tasks one element of ``spec`` may run, for its time limit: its share, and a
    largest block beyond it (it took one just before the others ran out of blocks)."""
    if spec.blocks is None:
        return spec.chunk
    return min(spec.count, -(-spec.count // spec.elements) + spec.chunk)


def run_files(where: Target, pack: str, spec: RunSpec, options: PackOptions) -> dict[str, bytes]:
    files = {
        f"runs/{spec.run}.json": json.dumps(spec.to_json(), indent=2).encode(),
        f"runs/{spec.run}.sh": job_script(where.bin_dir, pack, spec, options).encode(),
    }
    if spec.ids is not None:
        files[f"runs/{spec.run}.ids"] = "".join(f"{t}\n" for t in spec.ids).encode()
    return files


def submit_script(
    pack: str,
    runs: Sequence[int],
    *,
    fresh: bool,
    waits: dict[int, list[int]] | None = None,
    image: bool = False,
) -> str:
    """The head's script of a submission: unpack the tarball on stdin into the pack's
    directory (and move the staged ``image`` into it), then ``sbatch`` each of ``runs`` in
    order (those of ``waits`` after the arrays they wait for) and print their job ids. A
    failure at any step leaves nothing behind: the arrays already submitted are cancelled
    and the pack (or the retry's runs) removed."""
    directory = f'"$HOME"/{ROOT_NAME}/{shlex.quote(pack)}'
    guard = (
        f'if [ -e {directory} ]; then echo "pack {pack} already exists; choose another '
        f'--name" >&2; exit 3; fi'
        if fresh
        else f'[ ! -e {directory}/runs/{runs[0]}.json ] || {{ echo "run {runs[0]} of pack '
        f'{pack} already exists (a retry at the same time?)" >&2; exit 3; }}'
    )
    remove = (
        f"cd; rm -rf {directory}"
        if fresh
        else "rm -f " + " ".join(f"{directory}/runs/{r}.*" for r in runs)
    )
    undo = (
        f'undo() {{ for j in {directory}/runs/*.job.new; do [ ! -s "$j" ] || '
        f'scancel "$(cut -d\';\' -f1 "$j")"; done 2>/dev/null; {remove}; }}; trap undo EXIT'
    )

    def after(run: int) -> str:
        ids = ":".join(f"$(cut -d';' -f1 runs/{w}.job.new)" for w in (waits or {}).get(run, []))
        return f"--dependency=afterany:{ids} " if ids else ""

    submits = "; ".join(f"sbatch --parsable {after(r)}runs/{r}.sh > runs/{r}.job.new" for r in runs)
    keep = "; ".join(f"mv runs/{r}.job.new runs/{r}.job" for r in runs)
    show = "; ".join(f"cat runs/{r}.job" for r in runs)
    adopt = f"{packimage.adopt_script(pack)}; " if image else ""
    return (
        f"set -e -o pipefail; umask 022; {guard}; {undo}; mkdir -p {directory}; cd {directory}; "
        f"base64 -d | tar -xzf -; {adopt}{submits}; {keep}; trap - EXIT; {show}"
    )


def upload(files: dict[str, bytes], *, fresh: bool) -> str:
    """What ``submit_script`` reads on stdin: ``files`` (and a new pack's empty
    directories) as a base64 text of a gzip'ed tar."""
    return _tarball(files, ["manifest", "out", "logs", "claims"] if fresh else [])


def _tarball(files: dict[str, bytes], dirs: Sequence[str]) -> str:
    """``files`` (and empty ``dirs``) as a base64 text of a gzip'ed tar."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=3) as tar:
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, int(time.time())
            tar.addfile(info)
        for path, data in files.items():
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
            tar.addfile(info, io.BytesIO(data))
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _submit_planned(
    where: Target,
    pack: str,
    planned: list[Planned],
    files: dict[str, bytes],
    *,
    fresh: bool,
    image: bool = False,
) -> list[int]:
    """Upload ``files`` with the planned runs' own files, and submit their arrays."""
    for spec, opts, _, _ in planned:
        files.update(run_files(where, pack, spec, opts))
    runs = [spec.run for spec, _, _, _ in planned]
    waits = waits_for(planned)
    return _upload_and_submit(where, pack, runs, files, fresh=fresh, waits=waits, image=image)


def _upload_and_submit(
    where: Target,
    pack: str,
    runs: Sequence[int],
    files: dict[str, bytes],
    *,
    fresh: bool,
    waits: dict[int, list[int]] | None = None,
    image: bool = False,
) -> list[int]:
    """Unpack ``files`` into the pack's directory and ``sbatch`` each of ``runs``; their job
    ids (see ``submit_script``)."""
    script = submit_script(pack, runs, fresh=fresh, waits=waits, image=image)
    out = where.remote(script, stdin=upload(files, fresh=fresh), timeout=SUBMIT_TIMEOUT_S)
    ids = [line.split(";")[0] for line in out.split()]
    if len(ids) != len(runs) or not all(i.isdigit() for i in ids):
        raise PackError(f"cluster {where.name}: sbatch printed {out.strip()!r}, not job ids")
    return [int(i) for i in ids]


# ---------------------------------------------------------------------------------------------
# status, retry, collect


@dataclass(frozen=True)
class PackStatus:
    """Where a pack's tasks stand; ``failures`` splits ``failed`` by kind."""

    pack: str
    tasks: int
    done: int
    running: int
    failed: int
    pending: int
    failures: dict[str, int] = field(default_factory=dict)
    finished: bool = False  # no element of any run is queued or running any more
    runs: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PackStatus:
        keys = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in keys})


@dataclass
class Throughput:
    """Tasks finished per second over the last ``window_s`` of polls, and the time left at
    that rate: what ``pack status --wait`` shows beside its bar."""

    window_s: float = 30.0
    samples: deque[tuple[float, int]] = field(default_factory=deque)

    def add(self, when: float, finished: int) -> None:
        """One poll: at ``when`` (monotonic seconds), ``finished`` tasks had ended."""
        self.samples.append((when, finished))
        while len(self.samples) > 2 and when - self.samples[1][0] >= self.window_s:
            self.samples.popleft()

    @property
    def rate(self) -> float | None:
        """Tasks per second, ``None`` until two polls apart saw a task end."""
        if len(self.samples) < 2:
            return None
        (t0, n0), (t1, n1) = self.samples[0], self.samples[-1]
        if t1 <= t0 or n1 <= n0:
            return None
        return (n1 - n0) / (t1 - t0)

    def eta(self, left: int) -> float | None:
        """Seconds until ``left`` more tasks end at the current rate."""
        rate = self.rate
        return None if rate is None else left / rate


def status(name: str, pack: str | None = None, user: str | None = None) -> PackStatus:
    """The status of ``pack`` (default: the latest) on cluster ``name``."""
    where = target(name, user)
    return PackStatus.from_json(where.tool("status", *([pack] if pack else [])))


def list_packs(name: str, user: str | None = None) -> list[dict[str, Any]]:
    """Every pack of the user on cluster ``name``, oldest first."""
    packs: list[dict[str, Any]] = target(name, user).tool("list")
    return packs


@dataclass(frozen=True)
class Retried:
    status: PackStatus  # before the retry
    submitted: Submitted | None  # None: nothing had failed


def retry(
    name: str,
    pack: str | None = None,
    user: str | None = None,
    changes: dict[str, Any] | None = None,
) -> Retried:
    """Submit a new array of only the tasks of ``pack`` that ended without success.

    ``changes`` overrides the pack's options for the new run (``memory_mb``, ``time_s``,
    ``retries``, ``partition``, ``cpus``, ``estimate_s``, ``chunk``, ``max_concurrent``).
    """
    where = target(name, user)
    found = where.tool("failed", *([pack] if pack else []))
    before = PackStatus.from_json(found)
    if not before.finished:
        live = sum(r["live"] for r in before.runs)
        raise PackError(
            f"pack {before.pack} still has {live} element(s) queued or running; wait for "
            f"them (`clusterkit pack status {name} {before.pack} --wait`), then retry"
        )
    if not found["failed_tasks"]:
        return Retried(before, None)
    info = json.loads(where.remote(f"cat {ROOT_NAME}/{shlex.quote(before.pack)}/pack.json"))
    known = PackOptions.__dataclass_fields__
    saved = {k: v for k, v in info.get("options", {}).items() if k in known}
    options = PackOptions(**{**saved, "user": where.user, "hold": False})
    # Each task keeps its own shape (unless the retry changes it for all of them) and what
    # it needs: a failed task and the ones skipped for it run again, in that order.
    shapes: dict[int, Shape] = {}
    after: dict[int, tuple[int, ...]] = {}
    for group in found.get("failed_groups") or [{"tasks": found["failed_tasks"]}]:
        shape = Shape(*(group.get(k) for k in Shape._fields))
        for task in group["tasks"]:
            shapes[task] = shape
        after.update({int(t): tuple(d) for t, d in (group.get("after") or {}).items()})
    groups = [
        g._replace(options=replace(g.options, **(changes or {})))
        for g in task_groups(sorted(shapes), options, shapes.get, lambda t: after.get(t, ()))
    ]
    planned = plan_runs(where, len(before.runs), groups, -1)
    job_ids = _submit_planned(where, before.pack, planned, {}, fresh=False)
    return Retried(before, _submitted(name, before.pack, planned, job_ids))


@dataclass(frozen=True)
class Collected:
    summary: dict[str, Any]
    directory: Path  # where the results were written on this machine


def collect(name: str, dest: Path, pack: str | None = None, user: str | None = None) -> Collected:
    """Write ``results.csv`` and ``summary.json`` in the pack's directory on the cluster, and
    fetch them with every task's output into ``dest/PACK/``."""
    where = target(name, user)
    summary: dict[str, Any] = where.tool("collect", *([pack] if pack else []))
    directory = f"{ROOT_NAME}/{shlex.quote(summary['pack'])}"
    encoded = where.remote(
        f"set -e -o pipefail; cd {directory}; tar -czf - results.csv summary.json out | base64",
        timeout=SUBMIT_TIMEOUT_S,
    )
    local = dest / summary["pack"]
    local.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(base64.b64decode(encoded)), mode="r:gz") as tar:
        tar.extractall(local, filter="data")
    return Collected(summary, local)
