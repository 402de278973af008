"""Slurm hostlist expressions: expanding ``compute-st-[1-3,5]`` into names and back.

The same rules as Slurm's own hostlists (``scontrol show hostnames``): ranges keep the zero
padding of their lower bound, names order by the text before their trailing number and then
by that number, and a malformed expression is a ``SlurmError``. Node tools use it too, so it
ships to the nodes (``archive.ARCHIVE``) and imports only the standard library and errors.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Sequence

from clusterkit.errors import SlurmError

MAX_HOSTS = 1 << 20
"""Most names ``hostnames`` expands one expression to (Slurm's own hostlists stop near here)."""

MAX_DIGITS = 30
"""Longest number in a host name that hostlists count with (Python refuses over 4300)."""

_RANGE = re.compile(r"([0-9]+)(?:-([0-9]+))?")
_TRAILING_DIGITS = re.compile(r"(.*?)([0-9]+)")
_FORBIDDEN_IN_NAME = re.compile(r"[\[\],\s]")


def _excerpt(text: str, limit: int = 80) -> str:
    flat = " ".join(text.split())
    return repr(flat if len(flat) <= limit else flat[:limit] + "...")


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
