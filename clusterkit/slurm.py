"""Slurm's view of a cluster, its nodes and jobs, as typed frozen dataclasses parsed from
the JSON of ``sinfo --json`` and ``squeue --json``.

Slurm here is Debian's 22.05.8, whose ``sinfo --json`` and ``squeue --json`` print the
OpenAPI ``v0.0.38`` shapes. This module only parses what they printed; ``slurmreader`` runs
them (or pyslurm) against a live Slurm, and ``hostlist`` handles hostlist expressions.

Facts about the 22.05 output that this module relies on (seen in ``tests/unit/data/``):

- ``sinfo --json`` and ``squeue --json`` ignore every filtering option (man pages) and exit 0
  even when ``slurmctld`` cannot be reached: the failure is only in the ``errors`` array (e.g.
  ``"Unspecified error"``, errno -1). A non-empty ``errors`` array is a ``SlurmError`` here.
- A node's ``state`` is its lower-case base state (``idle``, ``mixed``, ``allocated``, ``down``,
  ...) and ``state_flags`` the upper-case flags (``CLOUD``, ``DRAIN``, ``POWERED_DOWN``,
  ``NOT_RESPONDING``, ...), in Slurm's own order.
- ``squeue --json`` lists every job ``slurmctld`` still holds: pending, running and completing
  jobs, and finished ones until ``MinJobAge`` (300 s by default) purges them. A job that has
  gone from the list is in the accounting database only (``sacct``), not here.
- A job's ``exit_code`` is Slurm's raw ``job_ptr->exit_code``, see ``decode_exit_code``.
- Times are epoch seconds, ``0`` when unset. For a running job ``end_time`` is the *expected*
  end (start plus time limit) and for a pending one ``start_time`` may be the backfill
  scheduler's *estimate*; ``SlurmJob`` keeps only times that have happened (see its docstring).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from clusterkit.errors import SlurmError

SINFO_ARGV: tuple[str, ...] = ("sinfo", "--json")
# 22.05 ignores --states with --json (it always dumps every job slurmctld holds); it is passed
# so that a Slurm whose --json honours filters still returns finished jobs, not only the
# default pending/running/completing ones. 22.05 accepts it (checked: a bad state is refused).
SQUEUE_ARGV: tuple[str, ...] = ("squeue", "--json", "--states=all")

SIG_OOM = 253
"""Slurm's dummy "signal" in the low byte of an exit status: the step was OOM-killed."""

NO_VAL = 0xFFFFFFFE
"""Slurm's "no value" for a 32-bit field."""

# States after which a job has really ended: its end time and exit status are facts.
ENDED_STATES = frozenset(
    {
        "BOOT_FAIL",
        "CANCELLED",
        "COMPLETED",
        "COMPLETING",
        "DEADLINE",
        "FAILED",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "SPECIAL_EXIT",
        "STAGE_OUT",
        "TIMEOUT",
    }
)
# States of a job waiting to (re)start: a start time is an estimate, not a fact.
WAITING_STATES = frozenset({"PENDING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESV_DEL_HOLD"})


def wait_past_revocation(
    requeued_at: float,
    *,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Wait until the second after ``requeued_at``, before a requeued job is made eligible at
    once (``scontrol update starttime=now``).

    A requeue revokes the job's credential on its nodes, and slurmd refuses every credential
    of that job made in the same second or before (``cred->ctime <= revoked``, whole
    seconds): a job started again within that second, on one of its old nodes, is killed
    for good ("Job credential revoked"), not requeued. Slurm's own hold of a requeued job
    (BeginTime, 121 s) avoids it; releasing the job early must too.
    """
    wait = math.floor(requeued_at) + 1 + 0.05 - clock()  # 50 ms for the nodes' clocks
    if wait > 0:
        sleep(wait)


@dataclass(frozen=True, kw_only=True)
class SlurmNode:
    """One Slurm node as ``sinfo`` sees it."""

    name: str
    state: str
    """Upper-case base state: ``IDLE``, ``MIXED``, ``ALLOCATED``, ``DOWN``, ``UNKNOWN``, ..."""
    flags: tuple[str, ...]
    """Upper-case state flags in Slurm's order: ``CLOUD``, ``DRAIN``, ``POWERED_DOWN``, ..."""
    cpus: int
    alloc_cpus: int
    memory_mb: int
    alloc_memory_mb: int
    partitions: tuple[str, ...]
    reason: str
    """Why the node is drained or down (``""`` when it is not)."""
    address: str
    hostname: str

    @property
    def display_state(self) -> str:
        """The state as ``scontrol show node`` prints it: ``IDLE+CLOUD+DRAIN+POWERED_DOWN``."""
        return "+".join((self.state, *self.flags))

    @property
    def is_draining(self) -> bool:
        """Told to drain, but jobs still run on it (``sinfo`` says ``drng``)."""
        return "DRAIN" in self.flags and self._busy

    @property
    def is_drained(self) -> bool:
        """Told to drain and no job is left on it (``sinfo`` says ``drain``)."""
        return "DRAIN" in self.flags and not self._busy

    @property
    def is_powered_down(self) -> bool:
        """Released by power saving (a cloud node with no instance behind it)."""
        return "POWERED_DOWN" in self.flags

    @property
    def _busy(self) -> bool:
        return self.state in {"ALLOCATED", "MIXED"} or "COMPLETING" in self.flags


@dataclass(frozen=True, kw_only=True)
class SlurmJob:
    """One job (or the pending rest of a job array) as ``squeue`` sees it.

    ``start_time`` is ``None`` until the job has started (Slurm's estimate for a waiting job is
    dropped); ``end_time`` and ``exit_code``/``signal`` are ``None`` until it has ended (Slurm
    reports the time limit as the end of a running job, and 0 as its exit code).
    """

    job_id: int
    array_job_id: int | None
    """The array's job id for an array task or the array's pending rest; else ``None``."""
    array_task_id: int | None
    """The task index of one array task; ``None`` for the pending rest and for plain jobs."""
    array_task_string: str
    """The pending task indexes of an array's rest, e.g. ``"2-3"``; else ``""``."""
    name: str
    user: str
    state: str
    """Upper-case: ``PENDING``, ``RUNNING``, ``COMPLETED``, ``OUT_OF_MEMORY``, ..."""
    partition: str
    nodes: str
    """The nodes as a hostlist expression (``compute-st-[1-2]``); ``""`` while pending."""
    reason: str
    """Why it waits or why it ended (``Resources``, ``OutOfMemory``); ``""`` for none."""
    restart_count: int
    exit_code: int | None
    """The exit status of a job that exited; ``None`` if killed by a signal or not ended."""
    signal: int | None
    """The signal that ended it (125 is Slurm's mark for an OOM kill); else ``None``."""
    raw_exit_code: int | None
    """Slurm's undecoded ``exit_code`` field, for what ``decode_exit_code`` cannot decode."""
    submit_time: int | None
    start_time: int | None
    end_time: int | None

    @property
    def display_id(self) -> str:
        """The id as ``squeue`` prints it: ``123``, ``123_4`` or ``123_[2-3]``."""
        if self.array_job_id is not None and self.array_task_id is not None:
            return f"{self.array_job_id}_{self.array_task_id}"
        if self.array_job_id is not None and self.array_task_string:
            return f"{self.array_job_id}_[{self.array_task_string}]"
        return str(self.job_id)

    @property
    def is_finished(self) -> bool:
        """The job has ended (completed, failed, cancelled, ... or completing)."""
        return self.state in ENDED_STATES


def decode_exit_code(raw: int | None) -> tuple[int | None, int | None]:
    """Decode Slurm's ``exit_code`` field into ``(exit status, signal)``.

    Slurm stores what ``waitpid()`` returned (22.05's ``squeue --json`` prints it undecoded):
    ``status << 8`` for a job that exited, the signal number (plus 0x80 for a core dump) for
    one killed by a signal; ``scontrol``/``sacct`` print it as ``ExitCode=status:signal``.
    Two Slurm quirks, both in the captured 22.05 output:

    - OOM: slurmstepd puts ``SIG_OOM`` (253) in the low byte, which decodes as signal 125,
      exactly the ``0:125`` that ``sacct`` shows for an ``OUT_OF_MEMORY`` job.
    - Launch failure: when ``srun`` cannot launch its tasks it records its *Slurm error code*
      as the job's exit code, e.g. 1001 (``SLURM_COMMUNICATIONS_CONNECTION_ERROR``, state
      reason ``JobLaunchFailure``). That is not a wait status (``scontrol`` would print a
      meaningless ``3:105``), so it decodes to ``(None, None)`` and stays in ``raw_exit_code``.

    Anything that is not a wait status (both bytes set, above 16 bits, negative, ``NO_VAL``)
    decodes to ``(None, None)`` the same way.
    """
    if raw is None or not 0 <= raw <= 0xFFFF:
        return None, None
    if raw & 0xFF == 0:
        return raw >> 8, None
    signal = raw & 0x7F  # 0x80 is the core-dump bit
    if raw > 0xFF or signal in (0, 0x7F):  # both bytes set, or no/"stopped" signal: no end
        return None, None
    return None, signal


# --- parsing ------------------------------------------------------------------------------


def parse_sinfo(text: str) -> list[SlurmNode]:
    """The nodes in ``sinfo --json`` output; ``SlurmError`` if it is not usable output."""
    command = " ".join(SINFO_ARGV)
    return [node_from_entry(entry, command) for entry in _entries(text, command, "nodes")]


def parse_squeue(text: str) -> list[SlurmJob]:
    """The jobs in ``squeue --json`` output; ``SlurmError`` if it is not usable output."""
    command = " ".join(SQUEUE_ARGV[:2])
    return [job_from_entry(entry, command) for entry in _entries(text, command, "jobs")]


def _excerpt(text: str, limit: int = 80) -> str:
    flat = " ".join(text.split())
    return repr(flat if len(flat) <= limit else flat[:limit] + "...")


def _entries(text: str, command: str, key: str) -> list[Mapping[str, Any]]:
    """The list under ``key`` after checking the JSON and its ``errors`` array."""
    if not text.strip():
        raise SlurmError(f"{command} printed nothing; is Slurm installed and configured there?")
    try:
        data = json.loads(text)
    except ValueError as exc:  # JSONDecodeError, or a number too long to convert
        raise SlurmError(f"{command} did not print JSON ({exc}): {_excerpt(text)}") from exc
    except RecursionError as exc:
        raise SlurmError(f"{command} printed JSON nested too deeply: {_excerpt(text)}") from exc
    if not isinstance(data, dict):
        raise SlurmError(f"{command} printed JSON that is not an object: {_excerpt(text)}")
    errors = data.get("errors")
    if errors:
        raise SlurmError(_errors_message(command, errors))
    entries = data.get(key)
    if not isinstance(entries, list):
        raise SlurmError(f"{command} printed no {key!r} list: {_excerpt(text)}")
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise SlurmError(f"{command}: {key}[{i}] is not an object: {_excerpt(repr(entry))}")
    return entries


def _errors_message(command: str, errors: object) -> str:
    """One line from Slurm's ``errors`` array (22.05 uses two shapes, both handled)."""
    if not isinstance(errors, list):
        errors = [errors]
    texts = []
    for err in errors:
        if isinstance(err, dict):
            parts = [
                str(err[k])
                for k in ("source", "description", "error")
                if err.get(k) not in ("", None)
            ]
            number = err.get("error_number", err.get("errno"))
            text = ": ".join(dict.fromkeys(parts)) or "no message"
            if number is not None:
                text += f" (errno {number})"
        else:
            text = str(err)
        texts.append(" ".join(text.split())[:300])
    what = "an error" if len(texts) == 1 else f"{len(texts)} errors"
    return (
        f"{command} reported {what}: " + "; ".join(texts) + "; is slurmctld running and "
        "reachable from where the command ran (`scontrol ping`)?"
    )


def _type_error(where: str, key: str, value: object, expected: str) -> SlurmError:
    return SlurmError(f"{where}: {key} should be {expected}, not {_excerpt(repr(value), 40)}")


def _str(entry: Mapping[str, Any], key: str, where: str) -> str:
    value = entry.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _type_error(where, key, value, "a string")
    return value


def _opt_int(entry: Mapping[str, Any], key: str, where: str) -> int | None:
    value = entry.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise _type_error(where, key, value, "an integer")
    return value


def _int(entry: Mapping[str, Any], key: str, where: str) -> int:
    value = _opt_int(entry, key, where)
    return 0 if value is None else value


def _strings(entry: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
    value = entry.get(key)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _type_error(where, key, value, "a list of strings")
    return tuple(value)


def _time(entry: Mapping[str, Any], key: str, where: str) -> int | None:
    value = _opt_int(entry, key, where)
    return value if value is not None and value > 0 else None


def node_from_entry(entry: Mapping[str, Any], command: str) -> SlurmNode:
    """One ``sinfo --json`` node entry (or one mapped onto its keys); ``command`` names it."""
    name = _str(entry, "name", f"{command}: a node")
    if not name:
        raise SlurmError(f"{command}: a node has no name: {_excerpt(repr(dict(entry)))}")
    where = f"{command}: node {name!r}"
    return SlurmNode(
        name=name,
        state=_str(entry, "state", where).upper() or "UNKNOWN",
        flags=tuple(f.upper() for f in _strings(entry, "state_flags", where)),
        cpus=_int(entry, "cpus", where),
        alloc_cpus=_int(entry, "alloc_cpus", where),
        memory_mb=_int(entry, "real_memory", where),
        alloc_memory_mb=_int(entry, "alloc_memory", where),
        partitions=_strings(entry, "partitions", where),
        reason=_str(entry, "reason", where),
        address=_str(entry, "address", where),
        hostname=_str(entry, "hostname", where),
    )


def job_from_entry(entry: Mapping[str, Any], command: str) -> SlurmJob:
    """One ``squeue --json`` job entry (or one mapped onto its keys); ``command`` names it."""
    job_id = _opt_int(entry, "job_id", f"{command}: a job")
    if job_id is None:
        raise SlurmError(f"{command}: a job has no job_id: {_excerpt(repr(dict(entry)))}")
    where = f"{command}: job {job_id}"
    state = _str(entry, "job_state", where).upper() or "UNKNOWN"
    ended = state in ENDED_STATES
    raw_exit = _opt_int(entry, "exit_code", where)
    exit_code, signal = decode_exit_code(raw_exit) if ended else (None, None)
    user = _str(entry, "user_name", where)
    if not user:
        uid = _opt_int(entry, "user_id", where)
        user = "" if uid is None else str(uid)
    reason = _str(entry, "state_reason", where)
    return SlurmJob(
        job_id=job_id,
        array_job_id=_int(entry, "array_job_id", where) or None,  # 0: not an array
        array_task_id=_opt_int(entry, "array_task_id", where),
        array_task_string=_str(entry, "array_task_string", where),
        name=_str(entry, "name", where),
        user=user,
        state=state,
        partition=_str(entry, "partition", where),
        nodes=_str(entry, "nodes", where),
        reason="" if reason == "None" else reason,
        restart_count=_int(entry, "restart_cnt", where),
        exit_code=exit_code,
        signal=signal,
        raw_exit_code=raw_exit,
        submit_time=_time(entry, "submit_time", where),
        start_time=None if state in WAITING_STATES else _time(entry, "start_time", where),
        end_time=_time(entry, "end_time", where) if ended else None,
    )
