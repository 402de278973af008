"""What the CLI's command modules share: the consoles, the ``-o`` option, and how a library's
long steps are drawn (a spinner, then a tick or a cross with the time)."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator

import click
from rich.console import Console

# Piped output (logs, CI, grep) is not cut at 80 columns: tables keep whole node names.
out = Console(highlight=False, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 200)

output_option = click.option(
    "-o",
    "--output",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="json prints machine-readable output for scripts.",
)


class StepProgress:
    """A library ``Progress``: each step drawn under its label (its title when it has none)."""

    def __init__(self, labels: dict[str, str] | None = None) -> None:
        self.labels = labels or {}
        self.done: list[str] = []  # labels of the steps finished, in order

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
        self.done.append(label)
        err.print(f"[green]✓[/] {label} [dim]({time.monotonic() - start:.1f}s)[/]")
