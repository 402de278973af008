"""A pack's tasks: the commands of a TASKS file, one per line or a template filled from the
rows of a CSV or JSONL file of parameters (each value shell-quoted, each task one line), and
each task's own resources where it asks for them.

A task's resources (``cpus``, ``mem``, ``time``, ``gpus``) are the pack's options unless
the task says otherwise: a line of a TASKS file that starts with ``@cpus=4,mem=2G``, or the
columns (keys) of those names in a CSV (JSONL) file. Tasks of one shape run in one array.
"""

from __future__ import annotations

import csv
import io
import json
import re
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from clusterkit.nodetools.packdir import PackError
from clusterkit.packplan import Shape, parse_duration, parse_memory

_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}|[{}]")


RESOURCES = ("cpus", "mem", "time", "gpus")  # the columns (keys, options) of a task's shape


class Tasks(NamedTuple):
    """A pack's tasks: task N is ``commands[N]``; ``shapes[N]`` is what it asks for beyond
    the pack's options (``None``: nothing); ``after[N]`` the tasks it needs done first
    (``after`` is ``None`` when no task needs any)."""

    commands: list[str]
    shapes: list[Shape | None]
    after: list[tuple[int, ...]] | None = None


def load_tasks(path: Path, template: str | None = None) -> Tasks:
    """The tasks of a TASKS file: one command per line, or ``template`` filled from each row
    of a ``.csv`` (header row names the columns) or ``.jsonl`` (one JSON object per line)."""
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise PackError(f"{path}: no such file") from None
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise PackError(f"{path} line {line}: not UTF-8 text") from None
    except OSError as exc:
        raise PackError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if template is None:
        tasks = command_lines(text, str(path))
    elif path.suffix.lower() == ".csv":
        tasks = fill_csv(template, text, str(path))
    elif path.suffix.lower() in (".jsonl", ".ndjson"):
        tasks = fill_jsonl(template, text, str(path))
    else:
        raise PackError(
            f"{path}: with --template, TASKS must be a .csv or .jsonl file of parameters"
        )
    if not tasks.commands:
        raise PackError(f"{path}: no tasks in it")
    return tasks


def command_lines(text: str, source: str = "TASKS") -> Tasks:
    """One command per line; blank lines and ``#`` comments are not tasks; a line that
    starts with ``@key=value,...`` gives its task's own resources."""
    commands = [s for line in text.splitlines() if (s := line.strip()) and not s.startswith("#")]
    shapes: list[Shape | None] = [None] * len(commands)
    if any(c.startswith("@") for c in commands):  # the rare case: find their lines
        number: dict[str, int] = {}
        for n, line in enumerate(text.splitlines(), 1):
            number.setdefault(line.strip(), n)
        for i, command in enumerate(commands):
            if command.startswith("@"):
                shapes[i], commands[i] = _options_line(command, f"{source} line {number[command]}")
    return Tasks(commands, shapes)


def _options_line(line: str, where: str) -> tuple[Shape, str]:
    head, _, command = line.partition(" ")
    values: dict[str, str] = {}
    for item in head[1:].split(","):
        key, eq, value = item.partition("=")
        if key not in RESOURCES or not eq or not value:
            raise PackError(
                f"{where}: {item!r} in {head!r}: write @key=value,... with keys "
                f"{', '.join(RESOURCES)} (e.g. @cpus=4,mem=2G), then the command"
            )
        values[key] = value
    if not command.strip():
        raise PackError(f"{where}: {head!r} and no command after it")
    return shape_of(values, where), command.strip()


def shape_of(values: dict[str, Any], where: str) -> Shape:
    """A task's resources from ``{cpus, mem, time, gpus}`` values (text or numbers; a bare
    number of ``mem`` is MiB, of ``time`` seconds)."""

    def count(key: str, least: int) -> int | None:
        value = values.get(key)
        if value is None or value == "":
            return None
        text = str(value).strip()
        if isinstance(value, bool) or not text.isdigit() or int(text) < least:
            raise PackError(f"{where}: {key} {value!r}: a whole number, at least {least}")
        return int(text)

    mem, time = values.get("mem"), values.get("time")
    try:
        memory_mb = None if mem in (None, "") else parse_memory(str(mem), "mem")
        time_s = None if time in (None, "") else parse_duration(str(time), "time")
    except PackError as exc:
        raise PackError(f"{where}: {exc}") from None
    return Shape(count("cpus", 1), memory_mb, time_s, count("gpus", 0))


def placeholders(template: str, source: str = "--template") -> list[str]:
    """The ``{name}`` placeholders of ``template`` (``{{``/``}}`` are literal braces)."""
    names = []
    for m in _PLACEHOLDER.finditer(template):
        if m.group(0) in ("{{", "}}"):
            continue
        if m.group(1) is None:
            raise PackError(
                f"{source}: a lone {m.group(0)!r} at column {m.start() + 1}; write "
                "{name} for a parameter, {{ or }} for a literal brace"
            )
        names.append(m.group(1))
    if not names:
        raise PackError(f"{source}: no {{name}} placeholder; every task would be the same")
    return names


def fill(template: str, values: dict[str, str]) -> str:
    """``template`` with each ``{name}`` replaced by its value, shell-quoted."""

    def one(m: re.Match[str]) -> str:
        if m.group(0) in ("{{", "}}"):
            return m.group(0)[0]
        return shlex.quote(values[m.group(1)])

    return _PLACEHOLDER.sub(one, template)


def fill_csv(template: str, text: str, source: str) -> Tasks:
    names = placeholders(template)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    columns = reader.fieldnames or []
    missing = [n for n in names if n not in columns]
    if missing:
        raise PackError(
            f"{source}: no column {missing[0]!r} for placeholder {{{missing[0]}}}; its "
            f"columns: {', '.join(columns) or 'none (no header row)'}"
        )
    commands, shapes = [], []
    sized = [c for c in RESOURCES if c in columns]
    for row in reader:
        line = reader.line_num
        if any(v is None for v in row.values()) or None in row:
            raise PackError(
                f"{source} line {line}: {len(columns)} columns expected, as in the header"
            )
        commands.append(_one_line(fill(template, row), source, line))
        where = f"{source} line {line}"
        shapes.append(shape_of({c: row[c] for c in sized}, where) if sized else None)
    return Tasks(commands, shapes)


def fill_jsonl(template: str, text: str, source: str) -> Tasks:
    names = placeholders(template)
    commands: list[str] = []
    shapes: list[Shape | None] = []
    ids: list[str | None] = []  # each task's "id" (None: it has none)
    needs: list[tuple[list[str], int]] = []  # each task's "after", and its line
    for line, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except ValueError as exc:
            raise PackError(f"{source} line {line}: not JSON ({exc})") from None
        if not isinstance(obj, dict):
            raise PackError(f'{source} line {line}: a JSON object expected, like {{"x": 1}}')
        values = {}
        for name in names:
            if name not in obj:
                keys = ", ".join(obj) or "none"
                raise PackError(
                    f"{source} line {line}: no key {name!r} for placeholder {{{name}}}; "
                    f"its keys: {keys}"
                )
            values[name] = _scalar(obj[name], source, line, name)
        commands.append(_one_line(fill(template, values), source, line))
        sized = {k: obj[k] for k in RESOURCES if k in obj}
        shapes.append(shape_of(sized, f"{source} line {line}") if sized else None)
        ids.append(_task_id(obj, source, line))
        needs.append((_after(obj, source, line), line))
    wanted = any(n for n, _ in needs) or any(i is not None for i in ids)
    after = resolve_after(ids, needs, source) if wanted else None
    return Tasks(commands, shapes, after if after and any(after) else None)


def _task_id(obj: dict[str, Any], source: str, line: int) -> str | None:
    if "id" not in obj:
        return None
    value = obj["id"]
    if isinstance(value, bool) or not isinstance(value, str | int) or str(value) == "":
        raise PackError(f"{source} line {line}: 'id' {value!r}: a string or a whole number")
    return str(value)


def _after(obj: dict[str, Any], source: str, line: int) -> list[str]:
    value = obj.get("after", [])
    if isinstance(value, str | int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list) or not all(
        isinstance(v, str | int) and not isinstance(v, bool) for v in value
    ):
        raise PackError(
            f"{source} line {line}: 'after' {value!r}: a list of task ids, like [\"prep\"] or "
            "[0, 3]"
        )
    return [str(v) for v in value]


def resolve_after(
    ids: list[str | None], needs: list[tuple[list[str], int]], source: str
) -> list[tuple[int, ...]]:
    """Each task's ``after`` as task numbers: the ids of the file's ``id`` keys where tasks
    have them, else task numbers (from 0, as ``CK_PACK_TASK``); refuses an unknown id, a
    task that needs itself, and a cycle."""
    named = any(i is not None for i in ids)
    index: dict[str, int] = {}
    for n, task_id in enumerate(ids):
        key = task_id if named else str(n)
        if key is None:
            continue
        if key in index:
            raise PackError(f"{source} line {needs[n][1]}: id {key!r} is also task {index[key]}'s")
        index[key] = n
    after: list[tuple[int, ...]] = []
    for n, (wanted, line) in enumerate(needs):
        found = []
        for want in wanted:
            if want not in index:
                what = "no task's id" if named else f"not a task number (0-{len(ids) - 1})"
                raise PackError(f"{source} line {line}: after {want!r} is {what}")
            if index[want] == n:
                raise PackError(f"{source} line {line}: a task cannot come after itself")
            found.append(index[want])
        after.append(tuple(sorted(set(found))))
    levels(after, lambda cycle: PackError(
        f"{source}: tasks {', '.join(map(str, cycle))} need each other in a cycle (lines "
        f"{', '.join(str(needs[t][1]) for t in cycle)}); a task can only come after others"
    ))  # fmt: skip
    return after


def levels(
    after: list[tuple[int, ...]], cycle_error: Callable[[list[int]], Exception] | None = None
) -> list[int]:
    """Each task's level: 0 when it needs nothing, else one more than the highest level of
    the tasks it needs (a task's array starts once the level before it has ended)."""
    level: list[int | None] = [None] * len(after)
    for start in range(len(after)):
        stack, on_path = [start], {start}
        while stack:
            task = stack[-1]
            if level[task] is not None:
                stack.pop()
                on_path.discard(task)
                continue
            waiting = [d for d in after[task] if level[d] is None]
            if not waiting:
                level[task] = 1 + max((level[d] or 0 for d in after[task]), default=-1)
                stack.pop()
                on_path.discard(task)
                continue
            dep = waiting[0]  # one at a time: the stack is then the path to it
            if dep in on_path:
                cycle = sorted(stack[stack.index(dep) :])
                raise cycle_error(cycle) if cycle_error else PackError(f"a cycle: {cycle}")
            stack.append(dep)
            on_path.add(dep)
    return [lv or 0 for lv in level]


def _scalar(value: Any, source: str, line: int, name: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    raise PackError(
        f"{source} line {line}: {name!r} is {type(value).__name__}; a string or number expected"
    )


def _one_line(command: str, source: str, line: int) -> str:
    if "\n" in command or "\r" in command:
        raise PackError(f"{source} line {line}: a value holds a line break; tasks are one line")
    return command
