"""The ``clusterkit`` command: a thin layer over the library, one module per kind of command.

It parses arguments, draws progress and tables, and maps errors to exit codes: an expected
failure (``ClusterkitError``) is one red line and exit 1; anything else is a bug, written with
its traceback to a file under ``$CLUSTERKIT_HOME/logs`` and reported in one line, exit 70.
"""

from __future__ import annotations

import importlib
import os
import sys
import time
import traceback
from typing import Any, NoReturn

import click

from clusterkit import __version__
from clusterkit import interrupt as signals
from clusterkit.cli.console import fail, stop
from clusterkit.errors import ClusterkitError, SpecError
from clusterkit.state import home

EXIT_INTERNAL = 70

# Each command's module, imported only when the command runs (or --help lists them all):
# the modules between them import boto3, paramiko, pydantic and Jinja, 0.6 s of start that a
# `clusterkit pack status` or `clusterkit ssh` does not need.
COMMANDS = {
    "up": "cluster:up", "down": "cluster:down", "list": "cluster:list_",
    "status": "cluster:status", "ssh": "cluster:ssh", "verify": "cluster:verify_",
    "inventory": "cluster:inventory", "env": "cluster:env_", "validate": "cluster:validate",
    "init": "cluster:init", "cloud": "elastic:cloud_", "interrupt": "elastic:interrupt",
    "unprotect": "elastic:unprotect", "why": "jobs:why", "cost": "costs:cost",
    "report": "costs:report", "pack": "pack:pack", "image": "image:image",
    "events": "spot:events", "spot-report": "spot:spot_report",
}  # fmt: skip


class LazyGroup(click.Group):
    """A group whose commands are imported from ``COMMANDS`` when first asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        where = COMMANDS.get(cmd_name)
        if where is None:
            return None
        module, attr = where.split(":")
        command = getattr(importlib.import_module(f"clusterkit.cli.{module}"), attr)
        if not isinstance(command, click.Command):
            raise TypeError(f"clusterkit.cli.{where} is not a click command")
        return command


@click.group(
    cls=LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, prog_name="clusterkit")
def cli() -> None:
    """Ephemeral Slurm clusters on demand.

    \b
    A cluster is a head node plus compute nodes, described by a YAML spec:
      clusterkit init cluster.yaml        write an annotated example spec
      clusterkit up -f cluster.yaml       build it (run again to reconcile)
      clusterkit ssh NAME                 a shell on the head node
      clusterkit ssh NAME NODE -- CMD     run CMD on one node
      clusterkit down NAME                destroy it, leaving nothing behind

    State lives in ~/.clusterkit (or $CLUSTERKIT_HOME).
    """


def _split_remote(args: list[str]) -> tuple[list[str], list[str] | None]:
    """``ssh NAME [NODE] -- CMD``: the words after ``--`` are the remote command, verbatim."""
    if "--" in args and "ssh" in args[: args.index("--")]:
        cut = args.index("--")
        return args[:cut], args[cut + 1 :]
    return args, None


def _report_bug(exc: BaseException) -> NoReturn:
    logs = home() / "logs"
    try:
        logs.mkdir(parents=True, exist_ok=True)
        path: Any = logs / f"crash-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
        path.write_text("".join(traceback.format_exception(exc)), encoding="utf-8")
    except OSError:
        path = "(could not be written)"
    fail(f"internal error: {type(exc).__name__}: {exc} (traceback in {path})", EXIT_INTERNAL)


def main(argv: list[str] | None = None) -> NoReturn:
    args, remote = _split_remote(list(sys.argv[1:] if argv is None else argv))
    try:
        with signals.installed():
            cli.main(
                args=args, prog_name="clusterkit", obj={"remote": remote}, standalone_mode=False
            )
    except SpecError as exc:
        if len(exc.problems) > 1:
            detail = "".join(f"\n  {exc.source}: {p}" for p in exc.problems)
            fail(f"{exc.source}: {len(exc.problems)} problems:{detail}", exc.exit_code)
        fail(str(exc), exc.exit_code)
    except ClusterkitError as exc:
        fail(str(exc), exc.exit_code)
    except click.exceptions.Abort:
        fail("aborted", 130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except signals.Interrupted as exc:
        stop(f"interrupted by {exc.signal_name}", exc.exit_code)
    except KeyboardInterrupt:
        fail("interrupted; `clusterkit down NAME` cleans up whatever was made", 130)
    except Exception as exc:  # noqa: BLE001 - the one place bugs are caught
        _report_bug(exc)
    sys.exit(0)


if __name__ == "__main__":
    main()
