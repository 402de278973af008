"""How the library reports long work without printing: the caller passes a ``Progress``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Protocol


class Progress(Protocol):
    """How the library reports long work; ``step`` wraps one named step, ``warn`` tells of
    something that went wrong without stopping the work."""

    def step(self, title: str) -> contextlib.AbstractContextManager[None]: ...

    def warn(self, text: str) -> None: ...


class NoProgress:
    """Reports nothing (tests, scripts)."""

    @contextlib.contextmanager
    def step(self, title: str) -> Iterator[None]:
        yield

    def warn(self, text: str) -> None:
        pass
