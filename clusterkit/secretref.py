"""Secrets named in a spec by reference (``file:/PATH``, a cloud secret store), never inline.

The spec holds where a secret is; ``up`` reads it on this machine and places it only where it
is used (the head's slurmdbd.conf, 0600). Messages name the reference and the field, never the
value.
"""

from __future__ import annotations

import re
from pathlib import Path

from clusterkit.errors import SpecError

FILE_PREFIX = "file:"
# slurmdbd.conf has no quoting: a '#' starts a comment and blanks end the value.
_PASSWORD = re.compile(r"[^\s#\"'\\]{1,256}")


def read_file_secret(ref: str, field: str) -> str:
    """The password in the file ``file:/PATH`` names (one line; a final newline is dropped)."""
    path = Path(ref.removeprefix(FILE_PREFIX))
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(field, [f"cannot read {path}: {getattr(exc, 'strerror', exc)}"]) from None
    return checked_password(text.removesuffix("\n").removesuffix("\r"), f"{field} ({path})")


def checked_password(value: str, where: str) -> str:
    """``value`` if slurmdbd.conf can hold it as it is; else one line saying why (not what)."""
    if not value:
        raise SpecError(where, ["the secret is empty"])
    if not _PASSWORD.fullmatch(value):
        raise SpecError(
            where,
            ["the password holds a blank, '#', a quote or a backslash, which slurmdbd.conf "
             "cannot hold; choose one without"],
        )  # fmt: skip
    return value
