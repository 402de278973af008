"""A pack's tasks: the commands of a TASKS file, one per line or a template filled from the
rows of a CSV or JSONL file of parameters (each value shell-quoted, each task one line).
"""

from __future__ import annotations

import csv
import io
import json
import re
import shlex
from pathlib import Path
from typing import Any

from clusterkit.nodetools.packdir import PackError

_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}|[{}]")


def load_tasks(path: Path, template: str | None = None) -> list[str]:
    """The commands of a TASKS file: one per line, or ``template`` filled from each row of
    a ``.csv`` (header row names the columns) or ``.jsonl`` (one JSON object per line)."""
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
        commands = command_lines(text)
    elif path.suffix.lower() == ".csv":
        commands = fill_csv(template, text, str(path))
    elif path.suffix.lower() in (".jsonl", ".ndjson"):
        commands = fill_jsonl(template, text, str(path))
    else:
        raise PackError(
            f"{path}: with --template, TASKS must be a .csv or .jsonl file of parameters"
        )
    if not commands:
        raise PackError(f"{path}: no tasks in it")
    return commands


def command_lines(text: str) -> list[str]:
    """One command per line; blank lines and ``#`` comments are not tasks."""
    return [s for line in text.splitlines() if (s := line.strip()) and not s.startswith("#")]


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


def fill_csv(template: str, text: str, source: str) -> list[str]:
    names = placeholders(template)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    columns = reader.fieldnames or []
    missing = [n for n in names if n not in columns]
    if missing:
        raise PackError(
            f"{source}: no column {missing[0]!r} for placeholder {{{missing[0]}}}; its "
            f"columns: {', '.join(columns) or 'none (no header row)'}"
        )
    commands = []
    for row in reader:
        line = reader.line_num
        if any(v is None for v in row.values()) or None in row:
            raise PackError(
                f"{source} line {line}: {len(columns)} columns expected, as in the header"
            )
        commands.append(_one_line(fill(template, row), source, line))
    return commands


def fill_jsonl(template: str, text: str, source: str) -> list[str]:
    names = placeholders(template)
    commands = []
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
    return commands


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
