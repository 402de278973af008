"""The one way clusterkit runs a subprocess: every failure raises ``CommandError``."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from typing import IO, Any

from clusterkit.errors import CommandError


def run(
    argv: Sequence[str],
    *,
    input: str | None = None,
    stdin: IO[bytes] | None = None,
    check: bool = True,
    timeout: float | None = 60.0,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` and return its completed process (text mode, output captured).
    ``stdin``, a binary file, is read by the command itself (a stream of any size);
    ``input`` is text written to it.

    With ``check`` a non-zero exit raises ``CommandError`` naming the command, its exit code
    and the tail of its stderr, so callers never have to format that themselves.
    """
    args = [str(a) for a in argv]
    feed: dict[str, Any] = {"stdin": stdin} if stdin is not None else {"input": input}
    try:
        proc = subprocess.run(
            args,
            **feed,
            capture_output=True,
            text=True,
            errors="replace",  # a tool's stray bytes must not turn into a crash
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as exc:
        raise CommandError(args, 127, f"{args[0]}: not found") from exc
    except PermissionError as exc:
        raise CommandError(args, 126, f"{args[0]}: not executable ({exc.strerror})") from exc
    except subprocess.TimeoutExpired as exc:
        raise CommandError(args, -1, f"timed out after {timeout} s") from exc
    if check and proc.returncode != 0:
        raise CommandError(args, proc.returncode, proc.stderr or proc.stdout)
    return proc
