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
import io
import json
import secrets
import shlex
import tarfile
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from clusterkit import proc
from clusterkit.errors import CommandError, StateError
from clusterkit.nodetools.packdir import FORMAT, ROOT_NAME, PackError, RunSpec, task_files
from clusterkit.packplan import (
    Chunking,
    PackOptions,
    auto_chunk,
    cluster_slots,
    element_time_limit,
    fixed_chunk,
)
from clusterkit.plan import cluster_users, head_name
from clusterkit.render import render
from clusterkit.slurmconf import tools_dir
from clusterkit.slurmreader import SlurmReader
from clusterkit.spec import ClusterSpec
from clusterkit.state import ClusterState, check_name, load_state, spec_of
from clusterkit.trust import ClusterTrust

SUBMIT_TIMEOUT_S = 120.0
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
        self, script: str, stdin: str | None = None, timeout: float = QUERY_TIMEOUT_S
    ) -> str:
        """Run ``script`` (bash) on the head as the user; its stdout. A failure's last
        stderr line becomes a ``PackError`` naming the cluster."""
        argv = self.trust.ssh_argv(head_name(self.name), [script], user=self.user)
        try:
            return proc.run(argv, input=stdin, timeout=timeout).stdout
        except CommandError as exc:
            lines = [ln for ln in exc.stderr.strip().splitlines() if ln.strip()]
            raise PackError(
                f"cluster {self.name}: {lines[-1] if lines else f'exit {exc.returncode}'}"
            ) from None

    def reader(self) -> SlurmReader:
        head = head_name(self.name)
        return SlurmReader.create(
            lambda argv: proc.run(self.trust.ssh_argv(head, argv), timeout=30).stdout
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
class Submitted:
    """A job array submitted for a pack."""

    cluster: str
    pack: str
    run: int
    job_id: int
    tasks: int
    chunking: Chunking
    directory: str  # on the cluster, relative to the user's home


def submit(name: str, commands: Sequence[str], options: PackOptions) -> Submitted:
    """Write the pack onto shared storage and submit its job array; one SSH session."""
    options.check()
    where = target(name, options.user)
    chunking = plan_chunks(where, len(commands), options)
    pack = options.name or f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
    spec = run_spec(0, chunking, len(commands), options, None)
    txt, idx = task_files(commands)
    info = {
        "format": FORMAT,
        "pack": pack,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "tasks": len(commands),
        "options": asdict(options),
    }
    files = {
        "pack.json": json.dumps(info, indent=2).encode(),
        "tasks.txt": txt,
        "tasks.idx": idx,
        **run_files(where, pack, spec, options),
    }
    job_id = _upload_and_submit(where, pack, 0, files, fresh=True)
    return Submitted(name, pack, 0, job_id, len(commands), chunking, f"{ROOT_NAME}/{pack}")


def plan_chunks(where: Target, tasks: int, options: PackOptions) -> Chunking:
    nodes = where.reader().nodes()
    slots = cluster_slots(nodes, options.partition, options.cpus, options.memory_mb)
    if slots == 0:
        partitions = sorted({p for n in nodes for p in n.partitions})
        what = f"partition {options.partition!r}" if options.partition else "the cluster"
        raise PackError(
            f"{what} has no node with {options.cpus} CPU(s)"
            + (f" and {options.memory_mb} MiB" if options.memory_mb else "")
            + f" for a task; partitions: {', '.join(partitions) or 'none'}"
        )
    if options.max_concurrent:
        slots = min(slots, options.max_concurrent)
    max_elements = where.spec.slurm.max_array_size
    if options.chunk:
        return fixed_chunk(tasks, options.chunk, slots, max_elements)
    return auto_chunk(tasks, slots, options.estimate_s, max_elements)


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


def _upload_and_submit(
    where: Target, pack: str, run: int, files: dict[str, bytes], fresh: bool
) -> int:
    """Unpack ``files`` into the pack's directory and ``sbatch`` run ``run``; the job id."""
    directory = f'"$HOME"/{ROOT_NAME}/{shlex.quote(pack)}'
    guard = (
        f'if [ -e {directory} ]; then echo "pack {pack} already exists; choose another '
        f'--name" >&2; exit 3; fi; mkdir -p {directory}'
        if fresh
        else f'[ ! -e {directory}/runs/{run}.json ] || {{ echo "run {run} of pack {pack} '
        f'already exists (a retry at the same time?)" >&2; exit 3; }}'
    )
    # A refused sbatch leaves nothing behind: the pack (or the run) is removed again.
    undo = f"cd && rm -rf {directory}" if fresh else f"rm -f runs/{run}.*"
    script = (
        f"set -e -o pipefail; umask 022; {guard}; cd {directory}; base64 -d | tar -xzf -; "
        f"sbatch --parsable runs/{run}.sh > runs/{run}.job || {{ {undo}; exit 1; }}; "
        f"cat runs/{run}.job"
    )
    dirs = ["manifest", "out", "logs", "claims"] if fresh else []
    out = where.remote(script, stdin=_tarball(files, dirs), timeout=SUBMIT_TIMEOUT_S)
    first = out.strip().split(";")[0]
    if not first.isdigit():
        raise PackError(f"cluster {where.name}: sbatch printed {out.strip()!r}, not a job id")
    return int(first)


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
    ids: list[int] = found["failed_tasks"]
    if not ids:
        return Retried(before, None)
    info = json.loads(where.remote(f"cat {ROOT_NAME}/{shlex.quote(before.pack)}/pack.json"))
    known = PackOptions.__dataclass_fields__
    saved = {k: v for k, v in info.get("options", {}).items() if k in known}
    options = PackOptions(**{**saved, **(changes or {}), "user": where.user, "hold": False})
    options.check()
    run = len(before.runs)
    chunking = plan_chunks(where, len(ids), options)
    spec = run_spec(run, chunking, len(ids), options, ids)
    files = run_files(where, before.pack, spec, options)
    job_id = _upload_and_submit(where, before.pack, run, files, fresh=False)
    directory = f"{ROOT_NAME}/{before.pack}"
    return Retried(before, Submitted(name, before.pack, run, job_id, len(ids), chunking, directory))


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
