"""Read Slurm's view of a cluster: its nodes and jobs, as typed, frozen dataclasses.

Slurm here is Debian's 22.05.8, whose ``sinfo --json`` and ``squeue --json`` print the
OpenAPI ``v0.0.38`` shapes; PyPI's pyslurm cannot be built against it. So the default (and the
tested) way to read Slurm is to run those commands through a *runner* — a callable that runs an
argv where Slurm is reachable (over SSH on the head node, or locally with ``SLURM_CONF`` set) and
returns its stdout — and to parse their JSON here. pyslurm is used only when it imports *and* the
caller runs on a machine with Slurm's own configuration (``SlurmReader.create(..., local=True)``).

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

import importlib
import itertools
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, ClassVar, Literal

from clusterkit.errors import SlurmError

Runner = Callable[[list[str]], str]
"""Runs a Slurm command (an argv) where Slurm is reachable and returns its stdout."""

Backend = Literal["cli", "pyslurm"]

SINFO_ARGV: tuple[str, ...] = ("sinfo", "--json")
# 22.05 ignores --states with --json (it always dumps every job slurmctld holds); it is passed
# so that a Slurm whose --json honours filters still returns finished jobs, not only the
# default pending/running/completing ones. 22.05 accepts it (checked: a bad state is refused).
SQUEUE_ARGV: tuple[str, ...] = ("squeue", "--json", "--states=all")

SIG_OOM = 253
"""Slurm's dummy "signal" in the low byte of an exit status: the step was OOM-killed."""

NO_VAL = 0xFFFFFFFE
"""Slurm's "no value" for a 32-bit field."""

MAX_HOSTS = 1 << 20
"""Most names ``hostnames`` expands one expression to (Slurm's own hostlists stop near here)."""

MAX_DIGITS = 30
"""Longest number in a host name that hostlists count with (Python refuses over 4300)."""

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
    return [_node(entry, command) for entry in _entries(text, command, "nodes")]


def parse_squeue(text: str) -> list[SlurmJob]:
    """The jobs in ``squeue --json`` output; ``SlurmError`` if it is not usable output."""
    command = " ".join(SQUEUE_ARGV[:2])
    return [_job(entry, command) for entry in _entries(text, command, "jobs")]


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


def _node(entry: Mapping[str, Any], command: str) -> SlurmNode:
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


def _job(entry: Mapping[str, Any], command: str) -> SlurmJob:
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


# --- reading a live Slurm -----------------------------------------------------------------


class SlurmReader:
    """Reads nodes and jobs from Slurm through a ``Runner`` (``sinfo``/``squeue --json``).

    The runner's own failures (``CommandError``, ``SSHError``) pass through unchanged; output
    that is not usable, or that carries Slurm's ``errors``, raises ``SlurmError``.
    """

    backend: ClassVar[Backend] = "cli"

    def __init__(self, runner: Runner) -> None:
        self._runner = runner

    @classmethod
    def create(cls, runner: Runner, *, local: bool = False) -> SlurmReader:
        """The reader to use: pyslurm if ``local`` and it imports, else the CLI (the default).

        ``local`` says the caller runs where libslurm finds the cluster's configuration; a
        runner over SSH is never replaced by a pyslurm that would talk to another Slurm.
        """
        if local:
            module = _import_pyslurm()
            if module is not None:
                return _PyslurmReader(runner, module)
        return cls(runner)

    def nodes(self) -> list[SlurmNode]:
        """Every node Slurm knows, in Slurm's order."""
        return parse_sinfo(self._runner(list(SINFO_ARGV)))

    def jobs(self) -> list[SlurmJob]:
        """Every job slurmctld holds (finished ones until ``MinJobAge`` purges them)."""
        return parse_squeue(self._runner(list(SQUEUE_ARGV)))

    def node(self, name: str) -> SlurmNode:
        """The node called ``name``; ``SlurmError`` if Slurm has no such node."""
        nodes = self.nodes()
        for node in nodes:
            if node.name == name:
                return node
        try:
            known = compress_hostlist(n.name for n in nodes) or "none"
        except SlurmError:  # a name no hostlist can hold: list them plainly
            known = ",".join(n.name for n in nodes)
        raise SlurmError(f"Slurm has no node named {name!r}; its nodes: {known}")

    def job(self, job_id: int) -> SlurmJob | None:
        """The job with this id, or ``None`` once slurmctld has forgotten it (``MinJobAge``).

        A job that has gone is normal (it finished a while ago), unlike an unknown node, so
        it is not an error; ``sacct`` still knows it.
        """
        return next((job for job in self.jobs() if job.job_id == job_id), None)


def _import_pyslurm() -> ModuleType | None:
    try:
        return importlib.import_module("pyslurm")
    except (ImportError, OSError):  # not installed, or built against another libslurm
        return None


# --- optional pyslurm backend (untested here: PyPI's pyslurm cannot be built on 22.05) ----


class _PyslurmReader(SlurmReader):  # pragma: no cover
    """Reads through pyslurm 22.5's dict API (``node().get()``, ``job().get()``) into the same
    dataclasses, by mapping its keys onto the ``--json`` ones and reusing the parsers."""

    backend: ClassVar[Backend] = "pyslurm"

    def __init__(self, runner: Runner, module: ModuleType) -> None:
        super().__init__(runner)
        self._pyslurm = module

    def _load(self, kind: str) -> list[Mapping[str, Any]]:
        try:
            records = getattr(self._pyslurm, kind)().get()
        except Exception as exc:  # pyslurm raises plain ValueError/RuntimeError
            raise SlurmError(f"pyslurm could not load {kind}s: {exc}") from exc
        if not isinstance(records, dict):
            raise SlurmError(f"pyslurm returned {type(records).__name__} for {kind}s")
        return [r for r in records.values() if isinstance(r, dict)]

    def nodes(self) -> list[SlurmNode]:
        nodes = []
        for rec in self._load("node"):
            base, *flags = str(rec.get("state") or "UNKNOWN").split("+")
            entry = {
                "name": rec.get("name"),
                "state": base,
                "state_flags": flags,
                "cpus": rec.get("cpus"),
                "alloc_cpus": rec.get("alloc_cpus"),
                "real_memory": rec.get("real_memory"),
                "alloc_memory": rec.get("alloc_mem"),
                "partitions": list(rec.get("partitions") or []),
                "reason": rec.get("reason"),
                "address": rec.get("node_addr"),
                "hostname": rec.get("node_hostname"),
            }
            nodes.append(_node(entry, "pyslurm"))
        return nodes

    def jobs(self) -> list[SlurmJob]:
        jobs = []
        for rec in self._load("job"):
            entry = dict(rec)
            entry["array_task_string"] = rec.get("array_task_str")
            entry["user_name"] = None
            status, _, sig = str(rec.get("exit_code") or "").partition(":")  # "exit:signal"
            if sig.isdigit() and int(sig):
                entry["exit_code"] = int(sig)
            else:
                entry["exit_code"] = int(status) << 8 if status.isdigit() else None
            jobs.append(_job(entry, "pyslurm"))
        return jobs


# --- hostlist expressions -----------------------------------------------------------------

_RANGE = re.compile(r"([0-9]+)(?:-([0-9]+))?")
_TRAILING_DIGITS = re.compile(r"(.*?)([0-9]+)")
_FORBIDDEN_IN_NAME = re.compile(r"[\[\],\s]")


def hostnames(nodelist: str) -> list[str]:
    """Expand a Slurm hostlist expression, like ``scontrol show hostnames`` does.

    ``"compute-st-[1-3,5],gpu-dy-[01-02],head"`` gives ``compute-st-1`` ... ``compute-st-5``
    (no 4), ``gpu-dy-01``, ``gpu-dy-02``, ``head``: order and duplicates are kept, a range keeps
    the zero padding of its lower bound, several brackets in one name multiply, and commas or
    whitespace separate names. A malformed expression raises ``SlurmError``.
    """
    names: list[str] = []
    for item in _split_hostlist(nodelist):
        names.extend(_expand_item(item, nodelist, MAX_HOSTS - len(names)))
    return names


def _split_hostlist(nodelist: str) -> list[str]:
    items: list[str] = []
    current: list[str] = []
    depth = 0
    for char in nodelist:
        if char == "[":
            depth += 1
            if depth > 1:
                raise SlurmError(f"hostlist {_excerpt(nodelist)}: nested '['")
        elif char == "]":
            depth -= 1
            if depth < 0:
                raise SlurmError(f"hostlist {_excerpt(nodelist)}: ']' without '['")
        if depth == 0 and (char == "," or char.isspace()):
            items.append("".join(current))
            current = []
        else:
            current.append(char)
    if depth:
        raise SlurmError(f"hostlist {_excerpt(nodelist)}: '[' is never closed")
    items.append("".join(current))
    return [item for item in items if item]


def _expand_item(item: str, nodelist: str, room: int) -> list[str]:
    """One comma-free item: literal text and bracket groups; their cartesian product."""
    pieces: list[list[str]] = []
    count = 1
    for i, part in enumerate(re.split(r"\[([^\]]*)\]", item)):
        if i % 2 == 0:  # literal text between groups (brackets are balanced by now)
            pieces.append([part])
            continue
        values = _expand_group(part, nodelist)
        count *= len(values)
        if count > room:
            raise SlurmError(f"hostlist {_excerpt(nodelist)} names more than {MAX_HOSTS} hosts")
        pieces.append(values)
    return ["".join(parts) for parts in itertools.product(*pieces)]


def _expand_group(group: str, nodelist: str) -> list[str]:
    values: list[str] = []
    for spec in group.split(","):
        match = _RANGE.fullmatch(spec)
        if match is None:
            raise SlurmError(
                f"hostlist {_excerpt(nodelist)}: [{group}] must hold numbers and ranges (1-3)"
            )
        lo_text, hi_text = match.group(1), match.group(2) or match.group(1)
        if max(len(lo_text), len(hi_text)) > MAX_DIGITS:
            raise SlurmError(
                f"hostlist {_excerpt(nodelist)}: a number has over {MAX_DIGITS} digits"
            )
        lo, hi = int(lo_text), int(hi_text)
        if hi < lo:
            raise SlurmError(f"hostlist {_excerpt(nodelist)}: range {spec} runs backwards")
        if hi - lo >= MAX_HOSTS - len(values):
            raise SlurmError(f"hostlist {_excerpt(nodelist)} names more than {MAX_HOSTS} hosts")
        values.extend(str(n).zfill(len(lo_text)) for n in range(lo, hi + 1))
    return values


def hostname_sort_key(name: str) -> tuple[str, int, int]:
    """Order names as Slurm does: by the text before the trailing number, then by number.

    ``node9`` sorts before ``node10``; a name without a trailing number comes first among
    names with the same text; ``n1`` sorts before ``n01``.
    """
    match = _TRAILING_DIGITS.fullmatch(name)
    if match is None or len(match.group(2)) > MAX_DIGITS:  # no number, or not one to count on
        return name, -1, 0
    return match.group(1), int(match.group(2)), len(match.group(2))


def compress_hostlist(names: Iterable[str]) -> str:
    """The shortest-ish hostlist expression for ``names``: the inverse of ``hostnames``.

    Names are deduplicated and ordered by ``hostname_sort_key``; consecutive numbers with the
    same text before them and the same zero padding become ranges
    (``compute-st-[1-3,5],gpu-dy-[01-02],head``). So
    ``hostnames(compress_hostlist(x)) == sorted(set(x), key=hostname_sort_key)``.
    A name that is empty or holds ``[``, ``]``, ``,`` or whitespace raises ``SlurmError``.
    """
    unique = set(names)
    for name in unique:
        if not name or _FORBIDDEN_IN_NAME.search(name):
            raise SlurmError(f"{name!r} cannot be part of a hostlist expression")
    # (prefix, padding width or 0 for unpadded, [[lo, hi], ...]) per run of names, in order.
    groups: list[tuple[str, int, list[list[int]]]] = []
    plain: dict[int, str] = {}  # index in groups -> a name without a trailing number
    for name in sorted(unique, key=hostname_sort_key):
        prefix, number, width = hostname_sort_key(name)
        if number < 0:
            plain[len(groups)] = name
            groups.append((name, -1, []))
            continue
        pad = width if width > 1 and name[-width] == "0" else 0
        if groups and groups[-1][0] == prefix and groups[-1][1] == pad:
            ranges = groups[-1][2]
            if ranges[-1][1] + 1 == number:
                ranges[-1][1] = number
            else:
                ranges.append([number, number])
        else:
            groups.append((prefix, pad, [[number, number]]))
    return ",".join(
        plain[i] if i in plain else _render_group(prefix, pad, ranges)
        for i, (prefix, pad, ranges) in enumerate(groups)
    )


def _render_group(prefix: str, pad: int, ranges: Sequence[Sequence[int]]) -> str:
    def fmt(n: int) -> str:
        return str(n).zfill(pad)

    if len(ranges) == 1 and ranges[0][0] == ranges[0][1]:
        return prefix + fmt(ranges[0][0])
    inner = ",".join(fmt(lo) if lo == hi else f"{fmt(lo)}-{fmt(hi)}" for lo, hi in ranges)
    return f"{prefix}[{inner}]"
