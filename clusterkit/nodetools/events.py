"""The head's event log: one JSON object per line, appended by every program that acts on nodes.

Power saving (resume, suspend, resume-fail), the reconciler and, later, the interruption
handler each record what they did, to which nodes and instances, and how long it took.
``clusterkit status`` and ``clusterkit events`` read it back. Lines are short and written
with one ``write`` on a file opened for appending, so writers never interleave.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

LOG_DIR = Path("/var/log/clusterkit")
EVENTS = LOG_DIR / "events.jsonl"


def utc(ts: float | None = None) -> str:
    """RFC 3339 time in UTC with milliseconds, as every event carries it."""
    ts = time.time() if ts is None else ts
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"


def record(source: str, action: str, path: Path = EVENTS, **fields: Any) -> dict[str, Any]:
    """Append one event and return it. ``fields`` name nodes, instances, jobs, durations."""
    event = {"time": utc(), "source": source, "action": action, **fields}
    line = json.dumps(event, sort_keys=False, separators=(",", ":")) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
    return event


def read(path: Path = EVENTS) -> Iterator[dict[str, Any]]:
    """Every event of the log in order; a torn last line (a writer killed mid-write) is skipped."""
    try:
        fh = open(path, encoding="utf-8")  # noqa: SIM115 - closed by the with below
    except FileNotFoundError:
        return
    with fh:
        for line in fh:
            try:
                yield json.loads(line)
            except ValueError:
                continue


class Tail:
    """The events appended to a log since the last ``read`` (all of it at first). A log
    that shrank was replaced: it is read again from its start."""

    def __init__(self, path: Path = EVENTS) -> None:
        self.path = path
        self.offset = 0

    def read(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, "rb") as fh:
                size = fh.seek(0, os.SEEK_END)
                if size < self.offset:
                    self.offset = 0
                fh.seek(self.offset)
                data = fh.read()
        except FileNotFoundError:
            return []
        complete = data.rfind(b"\n") + 1  # a line being written is read next time
        self.offset += complete
        return parse(data[:complete].decode("utf-8", errors="replace"))


def parse(text: str) -> list[dict[str, Any]]:
    """Events from the text of a log (as read over SSH)."""
    events = []
    for line in text.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return events
