"""How the CLI draws a library's long steps: a spinner, then a tick or a cross with the time."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator

from rich.console import Console

# Piped output (logs, CI, grep) is not cut at 80 columns.
err = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 200)


class StepProgress:
    """A library ``Progress``: each step drawn under its label (its title when it has none)."""

    def __init__(self, labels: dict[str, str] | None = None) -> None:
        self.labels = labels or {}

    @contextlib.contextmanager
    def step(self, title: str) -> Iterator[None]:
        start = time.monotonic()
        label = self.labels.get(title, title)
        try:
            with err.status(f"{label} ...", spinner="dots"):
                yield
        except BaseException:
            err.print(f"[red]✗[/] {label} [dim]({time.monotonic() - start:.1f}s)[/]")
            raise
        err.print(f"[green]✓[/] {label} [dim]({time.monotonic() - start:.1f}s)[/]")
