"""The README's 60-second tour as data: its commands and the output each is shown with.

The tour is a ``console`` block under "## A 60-second tour". A line ``# CMD`` is a command
run on this machine; ``USER@NODE:~$ CMD`` a command typed in the shell that the ``clusterkit
ssh`` command before it opened; every other line is output of the command above it. In
output, a line ``...`` stands for any number of lines. Times, instance ids, addresses, job
ids and timestamps differ from run to run and are compared as placeholders; everything
else, spacing aside, must be what the README shows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

HEADING = "## A 60-second tour"
ELLIPSIS = "..."
PROMPT = re.compile(r"^(?P<user>[a-z_][a-z0-9_-]*)@(?P<node>[a-z0-9-]+):~\$ (?P<command>.+)$")

# What varies between runs, and the placeholder it is compared as.
VARYING = [
    (re.compile(r"\b\d+\.\d+s\b"), "<secs>"),
    (re.compile(r"\bi-[0-9a-f]{17}\b"), "<instance>"),
    (re.compile(r"\b\d{4}-\d\d-\d\dT[0-9:.]+Z?\b"), "<time>"),
    (re.compile(r"\b10\.250\.\d{1,3}\.\d{1,3}\b"), "<address>"),
    (re.compile(r"\bSubmitted batch job \d+\b"), "Submitted batch job <id>"),
]


@dataclass
class Step:
    command: str  # as typed, comment included
    user: str | None = None  # set when typed in a shell on a node
    node: str | None = None
    shell: str | None = None  # the `clusterkit ssh ...` line that opened that shell
    expected: list[str] = field(default_factory=list)


def tour_block(readme: str) -> list[str]:
    """The lines of the tour's console block."""
    after = readme.split(HEADING, 1)[1]
    block = after.split("```console\n", 1)[1].split("```", 1)[0]
    return block.splitlines()


def parse_tour(lines: list[str]) -> list[Step]:
    steps: list[Step] = []
    shell: str | None = None
    for line in lines:
        if line.startswith("# "):
            command = line[2:]
            steps.append(Step(command))
            opens_shell = strip_comment(command).startswith("clusterkit ssh ") and (
                " -- " not in command
            )
            shell = strip_comment(command) if opens_shell else None
        elif (prompt := PROMPT.match(line)) and shell is not None:
            steps.append(Step(prompt["command"], prompt["user"], prompt["node"], shell))
        elif steps:
            steps[-1].expected.append(line)
        else:
            raise ValueError(f"tour: output before any command: {line!r}")
    return steps


def strip_comment(command: str) -> str:
    """``cmd   # why`` -> ``cmd`` (a comment starts at `` #`` after two or more spaces)."""
    return re.split(r"\s{2,}#\s", command, maxsplit=1)[0].strip()


def normalise(line: str) -> str:
    for pattern, placeholder in VARYING:
        line = pattern.sub(placeholder, line)
    return " ".join(line.split())


def matches(expected: list[str], actual: list[str]) -> bool:
    """Whether ``actual`` lines are the ``expected`` ones (``...`` matching any run of lines),
    compared after ``normalise`` and without blank lines."""
    want = [normalise(x) for x in expected if x.strip()]
    got = [normalise(x) for x in actual if x.strip()]
    return _match(want, got)


def _match(want: list[str], got: list[str]) -> bool:
    if not want:
        return not got
    if want[0] == ELLIPSIS:
        return any(_match(want[1:], got[i:]) for i in range(len(got) + 1))
    return bool(got) and got[0] == want[0] and _match(want[1:], got[1:])
