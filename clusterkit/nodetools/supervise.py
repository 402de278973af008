"""``ck-supervise``: keeps a node's daemons and mounts alive where no systemd does (local nodes).

A service is a file ``/etc/clusterkit/services/NAME.json``: how to start it and how to tell it
is alive (a process of that name in this node's PID namespace, or a mount point that answers).
``ck-supervise add`` writes one, starts the service unless it is alive, waits until it is,
and makes sure the supervisor itself runs. The supervisor (``ck-supervise run``) checks every
service each second and restarts what died, in place: a daemon restarted this way keeps the
node's running jobs (their ``slurmstepd`` and processes live on). A service that keeps
failing is retried less often (backoff), never given up on. Each restart is an event.

On a local node the node's init restarts the supervisor itself when it dies (the command it
runs is left in ``ARGV_FILE`` beside the services). On systemd hosts the units' ``Restart=``
does all this and the tool is not used.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from clusterkit.nodetools import events
from clusterkit.slurm import wait_past_revocation

SERVICES_DIR = Path("/etc/clusterkit/services")
ARGV_FILE = "supervisor.argv"  # in the services' directory: the command a node's init reruns
SUPERVISOR_NAME = "ck-supervise"  # its process name (the command's file name)
INTERVAL_SECONDS = 1.0
START_WAIT_SECONDS = 15.0  # how long a start may take to give a live service
START_TRIES = 3  # starts `add` tries before it gives up
STAT_TIMEOUT_SECONDS = 2.0  # a FUSE mount whose server hangs answers nothing
MAX_BACKOFF_SECONDS = 30.0


@dataclass(frozen=True)
class Service:
    name: str
    start: list[str]  # the command that starts it
    process: str = ""  # alive while a process of this name runs,
    mount: str = ""  # or while this path is a mount point that answers,
    listen: int = 0  # or while something listens on this TCP port
    background: bool = False  # the command stays in the foreground: run it detached
    log: str = ""  # where a background command's output goes
    # A restart means the node's running jobs lost their files (a mount died under them):
    # they are requeued, to run again from their start or their last checkpoint.
    requeue: bool = False

    def __post_init__(self) -> None:
        if sum(map(bool, (self.process, self.mount, self.listen))) != 1:
            raise ValueError(f"service {self.name}: give exactly one of process, mount, listen")

    @classmethod
    def load(cls, path: Path) -> Service:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        return cls(**data)

    def save(self, directory: Path = SERVICES_DIR) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{self.name}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1) + "\n", encoding="utf-8")
        os.chmod(tmp, 0o600)  # root's: what it names runs as root
        tmp.replace(path)
        return path


def load_services(directory: Path = SERVICES_DIR) -> list[Service]:
    """Every service of this node; a file that does not parse is skipped. Mounts come first,
    outer ones before those beneath them (a home under /shared), then daemons by name."""
    found = []
    for path in sorted(directory.glob("*.json")):
        with contextlib.suppress(OSError, ValueError, TypeError):
            found.append(Service.load(path))
    return sorted(found, key=lambda s: (not s.mount, s.mount.count("/"), s.name))


# ---------------------------------------------------------------------------------------------
# Alive or not


def process_running(name: str, proc_dir: Path = Path("/proc")) -> bool:
    """Whether a process named ``name`` (its ``comm``) other than this one runs in this PID
    namespace (``ck-supervise add`` is named like the supervisor)."""
    me = str(os.getpid())
    for entry in proc_dir.iterdir():
        if not entry.name.isdigit() or entry.name == me:
            continue
        try:
            comm = (entry / "comm").read_text().strip()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if comm == name[:15] and state != "Z":  # comm holds 15 characters
            return True
    return False


def mount_answers(path: str, timeout: float = STAT_TIMEOUT_SECONDS) -> bool:
    """Whether ``path`` is a mount point whose file system answers a ``stat`` in time (a dead
    sshfs answers ENOTCONN; a hung one, nothing)."""
    result: list[bool] = []

    def probe() -> None:
        try:
            os.stat(path)
            result.append(os.path.ismount(path))
        except OSError:
            result.append(False)

    worker = threading.Thread(target=probe, daemon=True)
    worker.start()
    worker.join(timeout)
    return bool(result and result[0])


def listening(port: int, net_dir: Path = Path("/proc/net")) -> bool:
    """Whether a TCP socket of this network namespace listens on ``port``."""
    for name in ("tcp", "tcp6"):
        try:
            lines = (net_dir / name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if (
                len(fields) > 3
                and fields[3] == "0A"
                and int(fields[1].rsplit(":", 1)[1], 16) == port
            ):
                return True
    return False


def alive(service: Service) -> bool:
    if service.process:
        return process_running(service.process)
    if service.mount:
        return mount_answers(service.mount)
    return listening(service.listen)


# ---------------------------------------------------------------------------------------------
# Starting


def start(service: Service) -> str:
    """Run the service's start command once; ``""`` on success, else what went wrong."""
    if service.mount:
        # A dead FUSE mount stays mounted ("transport endpoint is not connected"): lazily
        # unmount it first, or the new sshfs cannot mount over it.
        subprocess.run(["fusermount", "-uz", service.mount], capture_output=True, check=False)
    if service.background:
        log = service.log or os.devnull
        Path(log).parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            subprocess.Popen(
                service.start, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                start_new_session=True, close_fds=True,
            )  # fmt: skip
        return ""
    try:
        done = subprocess.run(
            service.start, stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=START_WAIT_SECONDS, check=False, start_new_session=True,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{type(exc).__name__}: {exc}"
    if done.returncode != 0:
        return f"exit {done.returncode}: {(done.stderr or done.stdout).strip()[-300:]}"
    return ""


def wait_alive(service: Service, timeout: float, check: Callable[[Service], bool] = alive) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if check(service):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


# ---------------------------------------------------------------------------------------------
# The supervisor


@dataclass
class Tracker:
    """When each service may be tried again: at once the first time it dies, then after a
    doubling wait while it keeps dying within a minute of its last restart."""

    failures: dict[str, int] = field(default_factory=dict)
    next_try: dict[str, float] = field(default_factory=dict)
    restarted_at: dict[str, float] = field(default_factory=dict)

    def due(self, name: str, now: float) -> bool:
        return now >= self.next_try.get(name, 0.0)

    def restarted(self, name: str, ok: bool, now: float) -> float:
        """Record a restart; returns the wait before the next one may happen."""
        recent = now - self.restarted_at.get(name, -1e9) < 60.0
        count = self.failures.get(name, 0) + 1 if (recent or not ok) else 0
        self.failures[name] = count
        self.restarted_at[name] = now
        wait = min(MAX_BACKOFF_SECONDS, 0.5 * 2**count) if count else 0.0
        self.next_try[name] = now + wait
        return wait


Record = Callable[..., Any]


def one_pass(
    services: list[Service], tracker: Tracker, record: Record, now: float, *,
    check: Callable[[Service], bool] = alive,
    launch: Callable[[Service], str] = start,
) -> list[str]:  # fmt: skip
    """Check every service and restart the dead ones that are due; their names."""
    restarted = []
    for service in services:
        if check(service) or not tracker.due(service.name, now):
            continue
        began = time.monotonic()
        error = launch(service)
        ok = not error and wait_alive(service, START_WAIT_SECONDS, check)
        wait = tracker.restarted(service.name, ok, now)
        fields: dict[str, Any] = {"service": service.name, "ok": ok}
        fields["seconds"] = round(time.monotonic() - began, 3)
        if error:
            fields["error"] = error
        if wait:
            fields["next_try_in"] = wait
        record("supervisor", "restarted" if ok else "restart failed", **fields)
        if ok and service.requeue:
            requeue_jobs(service.name, record)
        restarted.append(service.name)
    return restarted


def requeue_jobs(cause: str, record: Record) -> list[str]:
    """Requeue the jobs running on this node, eligible at once; their ids."""
    node = os.uname().nodename
    try:
        listed = subprocess.run(
            ["squeue", "-h", "-w", node, "-t", "RUNNING,COMPLETING", "-o", "%A"],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout.split()  # fmt: skip
    except (OSError, subprocess.SubprocessError) as exc:
        record("supervisor", "requeue failed", service=cause, error=str(exc)[-300:])
        return []
    for job in listed:
        done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True,
                              timeout=30, check=False)  # fmt: skip
        # Eligible now, not after Slurm's 121 s (but not in the second of the requeue).
        wait_past_revocation(time.time())
        subprocess.run(["scontrol", "update", f"jobid={job}", "starttime=now"],
                       capture_output=True, timeout=30, check=False)  # fmt: skip
        fields = {"job": job, "reason": f"{cause} was repaired under it", "node": node}
        if "pending" in done.stderr:  # requeued by the repair of another mount just before
            continue
        if done.returncode != 0:
            record("supervisor", "requeue failed", error=done.stderr.strip()[-300:], **fields)
        else:
            record("supervisor", "requeued", **fields)
    return listed


def run(directory: Path, interval: float, record: Record) -> int:
    record("supervisor", "started", services=[s.name for s in load_services(directory)])
    tracker = Tracker()
    while True:
        try:
            one_pass(load_services(directory), tracker, record, time.monotonic())
        except Exception as exc:  # noqa: BLE001 - a supervisor logs and goes on
            record("supervisor", "error", detail=f"{type(exc).__name__}: {exc}"[-300:])
        time.sleep(interval)


def ensure_supervisor(directory: Path, argv: list[str], log: Path) -> None:
    """Start the supervisor unless it runs, and leave its command for the node's init."""
    (directory / ARGV_FILE).write_text(json.dumps(argv) + "\n", encoding="utf-8")
    if process_running(SUPERVISOR_NAME):
        return
    start(Service(SUPERVISOR_NAME, argv, process=SUPERVISOR_NAME, background=True, log=str(log)))


def _recorder(events_path: str | None) -> Record:
    path = Path(events_path.format(node=os.uname().nodename)) if events_path else None

    def record(source: str, action: str, **fields: Any) -> None:
        fields.setdefault("node", os.uname().nodename)
        with contextlib.suppress(OSError):  # an events file on a dead mount: the log has it
            events.record(source, action, **({"path": path} if path else {}), **fields)
        print(json.dumps({"action": action, **fields}), file=sys.stderr, flush=True)

    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ck-supervise", description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=SERVICES_DIR, help="the services' files")
    parser.add_argument(
        "--events", help="event log, {node} replaced by this node's name (default: the node's)"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    add = sub.add_parser(
        "add", help="register a service, start it, wait until it is alive",
        usage="ck-supervise add NAME (--process NAME | --mount PATH) [options] -- COMMAND...",
    )  # fmt: skip
    add.add_argument("name")
    what = add.add_mutually_exclusive_group(required=True)
    what.add_argument("--process", default="", help="alive while a process of this name runs")
    what.add_argument("--mount", default="", help="alive while this mount point answers")
    what.add_argument("--listen", type=int, default=0, help="alive while a TCP port listens")
    add.add_argument("--background", action="store_true", help="the command does not fork")
    add.add_argument("--log", default="", help="output of a --background command")
    add.add_argument("--requeue-jobs", action="store_true",
                     help="after a repair, requeue the node's running jobs")  # fmt: skip
    loop = sub.add_parser("run", help="the supervisor: restart what dies")
    loop.add_argument("--interval", type=float, default=INTERVAL_SECONDS)
    sub.add_parser("status", help="each service and whether it is alive, as JSON lines")
    argv = sys.argv[1:] if argv is None else argv
    # What follows `--` is the service's command, whatever options it has.
    split = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:split])
    args.start = argv[split + 1 :]
    if args.command == "run":
        return run(args.dir, args.interval, _recorder(args.events))
    if args.command == "status":
        for service in load_services(args.dir):
            print(json.dumps({"service": service.name, "alive": alive(service)}))
        return 0
    return _add(args)


def _add(args: argparse.Namespace) -> int:
    command = args.start
    if not command:
        print(f"ck-supervise add {args.name}: no command after --", file=sys.stderr)
        return 2
    service = Service(
        args.name, command, process=args.process, mount=args.mount, listen=args.listen,
        background=args.background, log=args.log, requeue=args.requeue_jobs,
    )  # fmt: skip
    service.save(args.dir)
    # A first start may fail on a node still busy booting: tried again, as the supervisor
    # would, before the boot is failed with what the last try said.
    for attempt in range(START_TRIES):
        if attempt:
            time.sleep(1.0)
        error = "" if alive(service) else start(service)
        if not error and wait_alive(service, START_WAIT_SECONDS):
            break
    if error or not alive(service):
        print(f"ck-supervise: {args.name} did not start: {error or 'not alive'}", file=sys.stderr)
        return 1
    # The command file itself (its #! line runs python3), so the process is named after it.
    supervisor = [os.path.abspath(sys.argv[0]), "--dir", str(args.dir)]
    if args.events:
        supervisor += ["--events", args.events]
    ensure_supervisor(args.dir, [*supervisor, "run"], events.LOG_DIR / "supervisor.log")
    return 0


if __name__ == "__main__":
    sys.exit(main())
