"""``ck-run``: run a job's program so that an interruption costs little and never loops.

    ck-run [--max-restarts N] [--checkpoint-every SECONDS] [--signal USR1] -- PROGRAM ARGS...

- On a restart (``SLURM_RESTART_COUNT`` > 0) it copies the job's newest checkpoint into the
  working directory before the program starts (``--no-restore`` to leave that to the program)
  and tells the program where it came from in ``CK_RESTORED_FROM``.
- A job restarted more than N times (default: the cluster's ``slurm.max_restarts``) ends for
  good: ck-run exits 3 without running the program, says why on stderr and in the job's
  comment, and Slurm records the job FAILED.
- The checkpoint signal (from the Spot agent on a notice, and every ``--checkpoint-every``
  seconds) is passed on to the program's processes that handle it: one still starting, whose
  handler is not in place yet, would be killed by it. SIGTERM and SIGINT go to them all.
- It exits with the program's exit status (128 + N for a program ended by signal N).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import threading
from types import FrameType

from clusterkit import proc
from clusterkit.errors import CommandError
from clusterkit.nodetools.checkpoint import CheckpointError, Checkpoints

GAVE_UP_EXIT = 3
DEFAULT_MAX_RESTARTS = 3


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="ck-run",
        description="Run PROGRAM with checkpoint signals forwarded, its newest checkpoint "
        "restored on restart, and a limit on restarts.",
        epilog="Example (batch script): exec ck-run --max-restarts 3 --checkpoint-every 60 "
        "-- python3 simulate.py. PROGRAM saves a checkpoint when it gets the signal.",
    )
    parser.add_argument(
        "--max-restarts", type=int, default=None,
        help="restarts allowed before the job fails for good "
        "(default: $CK_MAX_RESTARTS, the cluster's slurm.max_restarts)",
    )  # fmt: skip
    parser.add_argument(
        "--checkpoint-every", type=float, default=0.0, metavar="SECONDS",
        help="also send the checkpoint signal every SECONDS (0: never)",
    )  # fmt: skip
    parser.add_argument(
        "--signal", default=os.environ.get("CK_CHECKPOINT_SIGNAL", "USR1"),
        help="the checkpoint signal (default: $CK_CHECKPOINT_SIGNAL, the cluster's "
        "spot.checkpoint_signal; else USR1)",
    )  # fmt: skip
    parser.add_argument(
        "--no-restore", action="store_true",
        help="do not copy the newest checkpoint into the working directory",
    )  # fmt: skip
    parser.add_argument("program", nargs=argparse.REMAINDER, help="-- PROGRAM ARGS...")
    args = parser.parse_args(argv)
    if args.program[:1] == ["--"]:
        args.program = args.program[1:]
    if not args.program:
        parser.error("give the program to run after --")
    if args.max_restarts is None:
        args.max_restarts = int(os.environ.get("CK_MAX_RESTARTS", DEFAULT_MAX_RESTARTS))
    if args.max_restarts < 0 or args.checkpoint_every < 0:
        parser.error("--max-restarts and --checkpoint-every must not be negative")
    try:
        args.signum = signal.Signals[f"SIG{args.signal.upper().removeprefix('SIG')}"]
    except KeyError:
        parser.error(f"--signal {args.signal}: not a signal name (for example USR1)")
    return args


def say(message: str) -> None:
    print(f"ck-run: {message}", file=sys.stderr, flush=True)


def give_up(restarts: int, limit: int) -> int:
    job = os.environ.get("SLURM_JOB_ID", "")
    reason = f"ck-run: restarted {restarts} times, more than the limit of {limit}; not run again"
    say(reason.removeprefix("ck-run: "))
    if job:
        # Shown by squeue/scontrol; the head's watcher records it with the job's end.
        with contextlib.suppress(CommandError):
            proc.run(["scontrol", "update", f"jobid={job}", f"comment={reason}"], check=False,
                     timeout=30)  # fmt: skip
    return GAVE_UP_EXIT


def restore(env: dict[str, str]) -> None:
    try:
        found = Checkpoints().restore(".")
    except CheckpointError as exc:
        say(f"no checkpoint restored: {exc}")
        return
    if found is None:
        say("restart with no checkpoint yet: starting from scratch")
        return
    env["CK_RESTORED_FROM"] = found.location
    say(f"restored checkpoint {found.seq} from {found.location}")


def run(args: argparse.Namespace) -> int:
    restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
    if restarts > args.max_restarts:
        return give_up(restarts, args.max_restarts)
    env = dict(os.environ)
    if restarts > 0 and not args.no_restore:
        restore(env)
    try:
        child = subprocess.Popen(args.program, env=env, start_new_session=True)
    except OSError as exc:
        say(f"cannot start {args.program[0]}: {exc.strerror}")
        return 127

    def forward(signum: int, _frame: FrameType | None) -> None:
        if signum == args.signum:
            ask_checkpoint(child.pid, signum)
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signum)

    for signum in {args.signum, signal.SIGTERM, signal.SIGINT}:
        signal.signal(signum, forward)
    stop = threading.Event()
    if args.checkpoint_every > 0:
        threading.Thread(
            target=_every, args=(args.checkpoint_every, child.pid, args.signum, stop), daemon=True
        ).start()
    status = child.wait()
    stop.set()
    return status if status >= 0 else 128 - status


def ask_checkpoint(pgid: int, signum: int) -> int:
    """Send the checkpoint signal to the program's processes that handle it; how many got it.

    A process that neither catches nor ignores it would be killed by it: a program that has
    not installed its handler yet (still starting) is left alone, not ended.
    """
    ready = handlers_of(pgid, signum)
    for pid in ready:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)
    if not ready:
        say(f"{signal.Signals(signum).name} not passed on: the program does not handle it (yet)")
    return len(ready)


def handlers_of(pgid: int, signum: int, proc_root: str = "/proc") -> list[int]:
    """Pids in process group ``pgid`` that catch or ignore ``signum``."""
    bit = 1 << (signum - 1)
    found = []
    for entry in os.scandir(proc_root):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"{entry.path}/stat", encoding="utf-8") as fh:
                # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
                pgrp = int(fh.read().rsplit(")", 1)[1].split()[2])
            if pgrp != pgid:
                continue
            masks = _signal_masks(f"{entry.path}/status")
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
        if (masks.get("SigCgt", 0) | masks.get("SigIgn", 0)) & bit:
            found.append(int(entry.name))
    return found


def _signal_masks(path: str) -> dict[str, int]:
    masks = {}
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("SigCgt", "SigIgn"):
                masks[key] = int(value.strip(), 16)
    return masks


def _every(seconds: float, pgid: int, signum: int, stop: threading.Event) -> None:
    while not stop.wait(seconds):
        try:
            os.getpgid(pgid)
        except ProcessLookupError:
            return
        ask_checkpoint(pgid, signum)


def main(argv: list[str] | None = None) -> int:
    return run(parse(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
