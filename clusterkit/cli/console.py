"""What every command of the CLI shares: the two consoles, the one ``-o/--output`` option,
and how a library's long steps are drawn (a spinner, then a tick or a cross with the time).

Commands print through ``console.out`` and ``console.err`` (looked up at call time, so a test
can swap them)."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from typing import NoReturn

import click
from rich.console import Console
from rich.markup import escape

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

    def warn(self, text: str) -> None:
        err.print(f"[yellow]![/] {escape(text)}", soft_wrap=True)


def fail(message: str, code: int) -> NoReturn:
    """One red line, then exit ``code``."""
    # Messages quote user input (spec keys, paths): print them verbatim, never as markup.
    err.print(f"[red]error:[/] {escape(message)}", soft_wrap=True)
    sys.exit(code)


def stop(message: str, code: int) -> NoReturn:
    """One red line, then exit at once after an interrupt: worker threads still finishing a
    wait (an SSH probe) are not waited for, as a normal exit would."""
    err.print(f"[red]error:[/] {escape(message)}", soft_wrap=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
