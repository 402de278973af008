"""``ck-pack-run``: one array element of a pack runs tasks one after another: block after
block taken from the run's queue (``packdir``), or its fixed chunk in an older run.

The job script of a pack (``runs/R.sh``) is ``exec ck-pack-run DIR R``; Slurm starts one
element per ``--array`` index, each with the CPUs and memory of ONE task, so ``cons_tres``
packs as many elements on a node as fit and the element's own cgroup is the task's limit:
a task that leaks memory is killed by its element's OOM killer and nothing else is. Each
task is a child process (its program, or ``bash -c COMMAND``) in its own process group
with the highest ``oom_score_adj``, so the OOM killer picks it, never the runner.

With ``--container`` (``RunSpec.container``) each task runs in an OCI container of the
pack's image instead, started by ``crun`` (``packcontainer``); a command with shell syntax
runs in the image's ``/bin/sh``.

A task whose command is a plain program and its arguments (no quotes, variables, globs,
redirections or other shell syntax, and not a shell builtin) is started directly, as bash
itself would exec it, which saves a shell's start per task; any other runs in ``bash -c``.

For every attempt the runner appends one JSON record to ``manifest/R-E.jsonl``: task, run,
element, job, attempt, restart, state (``done``, ``failed``, ``timeout``, ``oom``; or
``skipped``, not run, when a task it needs did not end done), exit, signal, reason, node,
start, runtime, out, err. Records reach the file system at most 0.25 s and the disk at most
a second after their task ended, and both at once whenever the runner stops, so a node
that dies loses at most the last second's records (those tasks run again). A requeued
element (``SLURM_RESTART_COUNT`` > 0, e.g. a Spot interruption) first runs again the
unfinished tasks of the blocks it had taken, skipping what its file says it finished; a
task interrupted half-way has no record and runs again. On SIGTERM (``scancel``,
``scontrol requeue``) the runner stops its current task and writes nothing for it.

Standard library only: it runs with the node's ``/usr/bin/python3``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import FrameType
from typing import IO, TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    import argparse

    from clusterkit.nodetools.packcontainer import Container

from clusterkit.nodetools.packdir import PackDir, PackError, Record, RunSpec, is_finished
from clusterkit.nodetools.packdir import latest as latest_records
from clusterkit.nodetools.packdir import read_records as read_manifest

PROG = "ck-pack-run"
KILL_GRACE_S = 5.0  # between SIGTERM and SIGKILL of a task over its time limit
SETTLE_S = 1.0  # how long a task killed from outside waits for the runner's own SIGTERM
CLAIM_RETRY_S = 0.05  # before a second try at a claim the storage refused, as it was made
FLUSH_EVERY_S = 0.25  # the manifest's records reach the file system at most this late
SYNC_EVERY_S = 1.0  # ... and the disk
CGROUP_ROOT = Path("/sys/fs/cgroup")
_OOM_LINE = re.compile(r"^oom_kill (\d+)$", re.MULTILINE)


# ---------------------------------------------------------------------------------------------
# the cgroup's OOM counter


def oom_counter_files(proc_cgroup: str, root: Path = CGROUP_ROOT) -> list[Path]:
    """The files whose ``oom_kill`` counters count OOM kills in this process's memory cgroup
    and its ancestors (v1: ``memory.oom_control``; v2: ``memory.events``).

    ``proc_cgroup`` is ``/proc/self/cgroup``. Its paths are relative to the hierarchy's root,
    which may not be the root of the mount seen here (a container, or a local cluster node,
    mounts a subtree), so the longest suffix that exists under the mount is the directory.
    """
    for line in proc_cgroup.splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            base, name = root / "memory", "memory.oom_control"
            break
    else:
        if not (root / "cgroup.controllers").exists():
            return []
        path = next((ln.split(":", 2)[2] for ln in proc_cgroup.splitlines() if ln[:3] == "0::"), "")
        base, name = root, "memory.events"
    parts = [p for p in path.split("/") if p]
    for i in range(len(parts) + 1):
        leaf = base.joinpath(*parts[i:])
        if (leaf / name).exists():
            files = []
            while True:
                if (leaf / name).exists():
                    files.append(leaf / name)
                if leaf == base:
                    return files
                leaf = leaf.parent
    return []


def oom_kills(files: list[Path]) -> int:
    """The sum of the ``oom_kill`` counters in ``files`` (0 where the kernel has none)."""
    with OomCounter(files) as counter:
        return counter.count()


class OomCounter:
    """The counter files, kept open: the runner reads them before and after every task, and
    a cgroup file reads afresh from offset 0 (``pread``), with no open and close each time."""

    def __init__(self, files: list[Path]) -> None:
        self.fds = []
        for path in files:
            with contextlib.suppress(OSError):
                self.fds.append(os.open(path, os.O_RDONLY))

    def __enter__(self) -> OomCounter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def count(self) -> int:
        total = 0
        for fd in self.fds:
            try:
                m = _OOM_LINE.search(os.pread(fd, 4096, 0).decode("ascii", "replace"))
            except OSError:
                continue
            total += int(m.group(1)) if m else 0
        return total

    def close(self) -> None:
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds = []


# ---------------------------------------------------------------------------------------------
# one task


class Outcome(NamedTuple):
    """How a task's process ended."""

    returncode: int
    runtime: float
    timed_out: bool
    oom: bool

    def state(self) -> str:
        if self.timed_out:
            return "timeout"
        if self.returncode == 0:
            return "done"
        return "oom" if self.oom else "failed"

    def exit_and_signal(self) -> tuple[int | None, int | None]:
        if self.returncode < 0:
            return None, -self.returncode
        return self.returncode, None

    def reason(self, time_s: float | None) -> str:
        exit_code, sig = self.exit_and_signal()
        if self.timed_out:
            return f"over its time limit of {time_s:g} s"
        what = f"killed by signal {sig}" if sig else f"exit {exit_code}"
        if self.oom:
            return f"{what}: over its memory limit (the cgroup's OOM killer)"
        return what


def _be_first_to_go(pid: int) -> None:
    """Make the task the OOM killer's first choice, before the runner (raising one's own
    processes' ``oom_score_adj`` needs no privilege). Done from the runner just after the
    spawn, not in a ``preexec_fn``, which would make Python fork instead of vfork."""
    with contextlib.suppress(OSError), open(f"/proc/{pid}/oom_score_adj", "w") as fh:
        fh.write("1000")


class Runner:
    """Runs one element's chunk; ``stop`` is set by SIGTERM and ends it between tasks."""

    def __init__(self, pack: PackDir, spec: RunSpec, element: int, env: Mapping[str, str]):
        self.pack = pack
        self.spec = spec
        self.element = element
        self.env = dict(env)
        self.job = f"{env.get('SLURM_ARRAY_JOB_ID', '?')}_{env.get('SLURM_ARRAY_TASK_ID', '?')}"
        self.restart = int(env.get("SLURM_RESTART_COUNT") or 0)
        self.node = env.get("SLURMD_NODENAME") or os.uname().nodename
        self.scratch = Path(env.get("TMPDIR") or "/tmp") / f"ck-pack-{self.job}-{os.getpid()}"
        self.cwd = spec.chdir or env.get("HOME") or str(Path.home())
        self.stop = False
        self.child: subprocess.Popen[bytes] | None = None
        self._programs: dict[str, str] = {}  # a plain command's program, from PATH ("": none)
        self._ran_before = False  # its manifest file existed when it started
        self._earlier: dict[int, Record] | None = None  # earlier runs' latest records
        self._scratch_files: tuple[IO[bytes], IO[bytes]] | None = None
        self.container: Container | None = None
        if spec.container:  # imported only then: every element of a pack starts at once
            from clusterkit.nodetools.packcontainer import Container  # noqa: PLC0415

            self.container = Container(pack.root, spec.container, spec.chdir, self.scratch, env)
        try:
            self.oom = OomCounter(oom_counter_files(Path("/proc/self/cgroup").read_text()))
        except OSError:
            self.oom = OomCounter([])

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stop = True
        if self.child is not None and self.child.returncode is None:
            _killpg(self.child.pid, signal.SIGTERM)
            if self.container is not None and not self.container.handles_sigterm():
                self.container.kill(signal.SIGKILL)  # it would ignore the SIGTERM

    def run(self) -> int:
        """Run the element's blocks (its own first, after a requeue); the attempts run."""
        path = self.pack.manifest(self.spec.run, self.element)
        previous = latest_records(read_manifest(path))
        self._ran_before = path.exists()
        self.scratch.mkdir(parents=True, exist_ok=True)
        ran = 0
        try:
            with open(path, "a", encoding="utf-8") as fh:
                manifest = Manifest(fh)
                try:
                    for block in self._blocks():
                        ran += self._run_block(block, previous, manifest)
                        if self.stop:
                            break
                finally:
                    manifest.sync()
        finally:
            for scratch in self._scratch_files or ():
                scratch.close()
            self.oom.close()
            shutil.rmtree(self.scratch, ignore_errors=True)
        return ran

    def _blocks(self) -> Iterator[int]:
        """The blocks this element runs: its fixed chunk; or the ones it took before a
        requeue, then each block it manages to take from the queue, until none is left."""
        if not self.spec.queued:
            yield self.element
            return
        claims = Claims(self.pack, self.spec, self.element, self.job)
        if self.restart or self._ran_before:  # only then can it own blocks already
            yield from claims.mine()
        while not self.stop and (block := claims.take()) is not None:
            yield block

    def _run_block(self, block: int, previous: dict[int, Record], manifest: Manifest) -> int:
        todo = [
            t
            for t in self.spec.block_tasks(block)
            if not is_finished(previous.get(t), self.spec.attempts)
        ]
        commands = self.pack.commands(todo)
        ran = 0
        for task in todo:
            needs = self.spec.after.get(task) if self.spec.after else None
            if needs and (why := self._unmet(needs)):
                manifest.append(self._skipped(task, why))
                ran += 1
                continue
            before = previous.get(task)
            attempt = int(before["attempt"]) + 1 if before else 1
            while attempt <= self.spec.attempts and not self.stop:
                record = self.run_task(task, commands[task], attempt)
                if record is None:  # stopped from outside: no record, runs again
                    break
                manifest.append(record)
                ran += 1
                if record["state"] == "done":
                    break
                attempt += 1
            if self.stop:
                break
        return ran

    def _unmet(self, needs: tuple[int, ...]) -> str | None:
        """Why a task that needs ``needs`` cannot run (one of them did not end done), or
        ``None``. Their runs ended before this one started (``--dependency=afterany``),
        so their records are final; they are read once, at the first task that asks."""
        if self._earlier is None:
            self._earlier = {}
            for run in range(self.spec.run):  # in order: a later run's record is the last
                self._earlier.update(self.pack.run_records(run))
        for dep in needs:
            rec = self._earlier.get(dep)
            if rec is None:
                return f"needs task {dep}, which did not run"
            if rec.get("state") != "done":
                return f"needs task {dep}, which ended {rec.get('state')} ({rec.get('reason')})"
        return None

    def _skipped(self, task: int, why: str) -> Record:
        record = self._record(task, self.spec.attempts, time.time())
        record.update(state="skipped", exit=None, signal=None, reason=why, runtime=0.0,
                      out=None, err=None)  # fmt: skip
        return record

    def _record(self, task: int, attempt: int, start: float) -> Record:
        """What every record of this element says first: which attempt, where, when."""
        return {
            "task": task, "run": self.spec.run, "element": self.element, "job": self.job,
            "attempt": attempt, "restart": self.restart, "node": self.node,
            "start": round(start, 3),
        }  # fmt: skip

    def run_task(self, task: int, command: str, attempt: int) -> Record | None:
        """Run one attempt; its record, or ``None`` when the runner was told to stop."""
        start = time.time()
        out, err = self._outputs()
        try:
            outcome = self._execute(task, command, attempt, out, err)
        except OSError as exc:
            outcome = None
            failure = f"cannot start: {exc.strerror or exc}"
        if outcome is not None and self._stopped_from_outside(outcome):
            return None
        files = self._keep_outputs(task, attempt, {"out": out, "err": err})
        record = self._record(task, attempt, start)
        if outcome is None:
            record.update(
                state="failed", exit=None, signal=None, reason=failure, runtime=0.0, **files
            )
            return record
        exit_code, sig = outcome.exit_and_signal()
        record.update(
            state=outcome.state(),
            exit=exit_code,
            signal=sig,
            reason=outcome.reason(self.spec.time_s),
            runtime=round(outcome.runtime, 3),
            **files,
        )
        return record

    def _execute(
        self, task: int, command: str, attempt: int, out: IO[bytes], err: IO[bytes]
    ) -> Outcome:
        env = {
            **self.env,
            "CK_PACK_DIR": str(self.pack.root),
            "CK_PACK_TASK": str(task),
            "CK_PACK_RUN": str(self.spec.run),
            "CK_PACK_ATTEMPT": str(attempt),
        }
        ooms = self.oom.count()
        t0 = time.monotonic()
        if self.container is not None:
            argv = self.container.argv(plain_argv(command) or ["/bin/sh", "-c", command], env)
            program = argv[0]
        else:
            argv, program = self._program(command, env)
        self.child = subprocess.Popen(
            argv,
            executable=program,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            cwd=self.cwd,
            env=env,
            start_new_session=True,
        )
        _be_first_to_go(self.child.pid)
        timed_out = False
        try:
            returncode = self.child.wait(timeout=self.spec.time_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            returncode = self._kill(self.child)
        runtime = time.monotonic() - t0
        _killpg(self.child.pid, signal.SIGKILL)  # whatever it left running in its group
        if self.container is not None:
            returncode = self.container.returncode(returncode)
        self.child = None
        return Outcome(returncode, runtime, timed_out, self.oom.count() > ooms)

    def _program(self, command: str, env: Mapping[str, str]) -> tuple[list[str], str]:
        """The argv and executable of ``command``: the program itself when the command is
        plain and its program is found on the task's PATH (or an absolute path); otherwise
        bash, which also says "command not found" as users expect."""
        argv = plain_argv(command)
        if argv is not None:
            program = self._programs.get(argv[0])
            if program is None:
                program = shutil.which(argv[0], path=env.get("PATH")) or ""
                self._programs[argv[0]] = program
            if program:
                return argv, program  # argv[0] as typed, as bash passes it
        return ["/bin/bash", "-c", command], "/bin/bash"

    def _kill(self, child: subprocess.Popen[bytes]) -> int:
        # crun passes SIGTERM on to its container's PID 1, which ignores it unless it has a
        # handler: without one, the grace would only be waited out.
        grace = KILL_GRACE_S if self.container is None or self.container.handles_sigterm() else 0
        _killpg(child.pid, signal.SIGTERM)
        try:
            return child.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            if self.container is not None:  # PID 1 of a PID namespace: crun's group is not its
                self.container.kill(signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    return child.wait(timeout=SETTLE_S)
            _killpg(child.pid, signal.SIGKILL)
            return child.wait()

    def _stopped_from_outside(self, outcome: Outcome) -> bool:
        """Whether the task died because the element is being stopped (requeue, scancel):
        Slurm signals every process of the step, so the task may die before the runner's
        own SIGTERM handler has run; give it a moment."""
        if self.stop:
            return True
        killed = outcome.returncode in (-signal.SIGTERM, -signal.SIGKILL, 143, 137)
        if killed and not outcome.oom and not outcome.timed_out:
            time.sleep(SETTLE_S)
        return self.stop

    def _outputs(self) -> tuple[IO[bytes], IO[bytes]]:
        """The scratch files a task writes its stdout and stderr to: one pair for all the
        element's tasks, emptied before each (cheaper than a pair of files per task)."""
        if self._scratch_files is None:
            self._scratch_files = (open(self.scratch / "out", "w+b"),  # noqa: SIM115
                                   open(self.scratch / "err", "w+b"))  # noqa: SIM115  # fmt: skip
        for fh in self._scratch_files:
            fh.seek(0)
            fh.truncate()
        return self._scratch_files

    def _keep_outputs(self, task: int, attempt: int, local: dict[str, IO[bytes]]) -> dict[str, Any]:
        """Copy non-empty outputs to ``out/``; the record's ``out``/``err`` (relative or None)."""
        fresh = attempt == 1 and self.spec.run == 0 and self.restart == 0
        files: dict[str, Any] = {}
        for stream, fh in local.items():
            target = self.pack.out(task, stream)
            if os.fstat(fh.fileno()).st_size > 0:
                shutil.copyfile(fh.name, target)
                files[stream] = str(target.relative_to(self.pack.root))
            else:
                if not fresh:  # an earlier attempt's output must not pass for this one's
                    target.unlink(missing_ok=True)
                files[stream] = None
        return files


class Manifest:
    """An element's manifest file, open for appending: records reach the file system within
    ``FLUSH_EVERY_S`` and the disk within ``SYNC_EVERY_S``, and both at once when the
    runner stops. A write per record cost more than a short task: on sshfs each is a round
    trip through the FUSE daemon, ssh and the head's sftp-server."""

    def __init__(self, fh: IO[str]) -> None:
        self.fh = fh
        self.synced = self.flushed = time.monotonic()
        if fh.tell() > 0:  # end a last line cut short (the element died mid-write)
            with open(fh.name, "rb") as raw:
                raw.seek(-1, os.SEEK_END)
                if raw.read(1) != b"\n":
                    fh.write("\n")

    def append(self, record: Record) -> None:
        self.fh.write(json.dumps(record, separators=(",", ":")) + "\n")
        now = time.monotonic()
        if now - self.synced >= SYNC_EVERY_S:
            self.sync()
        elif now - self.flushed >= FLUSH_EVERY_S:
            self.fh.flush()
            self.flushed = now

    def sync(self) -> None:
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.synced = self.flushed = time.monotonic()


class Claims:
    """The blocks of a queued run's shared queue as one element takes them: a block is
    taken by creating its claim file (``O_CREAT | O_EXCL``: exactly one element succeeds),
    holding the element's index and job."""

    def __init__(self, pack: PackDir, spec: RunSpec, element: int, job: str) -> None:
        self.pack = pack
        self.spec = spec
        self.element = element
        self.job = job
        self.next = element  # element E tries block E first: the first wave never collides
        pack.claims_dir.mkdir(exist_ok=True)

    def mine(self) -> list[int]:
        """The blocks this element took before (it was requeued, or ran before by hand)."""
        return sorted(b for b, e in self.pack.claims(self.spec.run).items() if e == self.element)

    def take(self) -> int | None:
        """The next block this element took, or ``None`` when every block is taken."""
        taken: set[int] | None = None
        while self.next < self.spec.block_count:
            block = self.next
            if taken is not None and block in taken:
                self.next += 1
                continue
            if not self._create(block):
                # Skip what others took since, in one listing rather than one open each.
                taken = self.pack.taken(self.spec.run)
                self.next += 1
                continue
            self.next = block + 1
            return block
        return None

    def _create(self, block: int) -> bool:
        """Create ``block``'s claim file; ``False`` when another element has it."""
        path = self.pack.claim(self.spec.run, block)
        for attempt in (1, 2):
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            except PermissionError:
                # SFTP has no "exists" status: sshfs reports a claim made a moment before
                # ours as EPERM. It is taken if it is there; a real refusal stays one.
                if os.path.lexists(path):
                    return False
                if attempt == 2:
                    raise
                time.sleep(CLAIM_RETRY_S)
                continue
            try:
                os.write(fd, f"{self.element} {self.job}\n".encode("ascii"))
            finally:
                os.close(fd)
            return True
        return False  # not reached: the second refusal raised


# The characters of a command that bash would run as it stands: words of these, separated
# by single spaces, hold nothing a shell would expand, quote, redirect or join.
_PLAIN = re.compile(r"^[A-Za-z0-9_./:,@%+=-]+(?: [A-Za-z0-9_./:,@%+=-]+)*$")
_BUILTINS = frozenset((
    ".", ":", "[", "alias", "bg", "bind", "break", "builtin", "caller", "cd", "command",
    "compgen", "complete", "compopt", "continue", "declare", "dirs", "disown", "echo",
    "enable", "eval", "exec", "exit", "export", "false", "fc", "fg", "getopts", "hash",
    "help", "history", "jobs", "kill", "let", "local", "logout", "mapfile", "popd",
    "printf", "pushd", "pwd", "read", "readarray", "readonly", "return", "set", "shift",
    "shopt", "source", "suspend", "test", "time", "times", "trap", "true", "type",
    "typeset", "ulimit", "umask", "unalias", "unset", "wait",
    # and the keywords
    "if", "then", "else", "elif", "fi", "case", "esac", "for", "select", "while", "until",
    "do", "done", "function", "coproc",
))  # fmt: skip


def plain_argv(command: str) -> list[str] | None:
    """The argv of a command that is a program and its arguments and nothing else; ``None``
    when a shell must run it (any shell syntax, an assignment first, or a builtin)."""
    if not _PLAIN.match(command):
        return None
    argv = command.split(" ")
    if "=" in argv[0] or argv[0] in _BUILTINS or ("/" in argv[0] and argv[0][0] != "/"):
        return None
    return argv


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


# ---------------------------------------------------------------------------------------------
# the command


def parser() -> argparse.ArgumentParser:
    import argparse  # noqa: PLC0415 - only for --help and mistakes: see parse

    p = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Run one Slurm array element of a pack (the job script of\n"
            "`clusterkit pack submit` calls it; it is not meant to be run by hand)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("pack_dir", type=Path, help="the pack's directory on shared storage")
    p.add_argument("run", type=int, help="the run (0: the submission, 1.. retries)")
    p.add_argument("--element", type=int, help="the element to run (default: $SLURM_ARRAY_TASK_ID)")
    return p


def parse(argv: list[str]) -> tuple[Path, int, int | None]:
    """``DIR RUN [--element N]``. The job script's own form is read by hand: argparse costs
    a tenth of the runner's start, paid by every element of a pack at once."""
    if len(argv) in (2, 4) and argv[1].isdigit() and not argv[0].startswith("-"):
        if len(argv) == 2:
            return Path(argv[0]), int(argv[1]), None
        if argv[2] == "--element" and argv[3].isdigit():
            return Path(argv[0]), int(argv[1]), int(argv[3])
    args = parser().parse_args(argv)  # --help, or a mistake to explain
    return args.pack_dir, args.run, args.element


def main(argv: list[str] | None = None) -> int:
    pack_dir, run, element = parse(sys.argv[1:] if argv is None else argv)
    env = os.environ
    if element is None:
        if not env.get("SLURM_ARRAY_TASK_ID", "").isdigit():
            return _fail("not inside a Slurm array element (SLURM_ARRAY_TASK_ID is not set)", 2)
        element = int(env["SLURM_ARRAY_TASK_ID"])
    try:
        pack = PackDir(pack_dir.resolve())
        spec = pack.load_run(run)
        if not 0 <= element < spec.elements:
            return _fail(f"run {run} has elements 0-{spec.elements - 1}, not {element}", 2)
        runner = Runner(pack, spec, element, env)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, runner.on_signal)
        runner.run()
    except (PackError, OSError) as exc:
        return _fail(str(exc), 1)
    return 143 if runner.stop else 0


def _fail(message: str, status: int) -> int:
    print(f"{PROG}: {message}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
