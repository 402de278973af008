"""The one error hierarchy of clusterkit.

Every failure a user can act on is a ``ClusterkitError``: the CLI prints its message as one
line and exits non-zero. Anything else escaping the library is a bug.
"""

from __future__ import annotations


class ClusterkitError(Exception):
    """Base of every expected failure; ``str(err)`` is a complete, one-line message."""

    exit_code = 1


class SpecError(ClusterkitError):
    """The cluster spec is invalid; ``problems`` lists every problem with its path."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        if len(problems) == 1:
            text = f"{source}: {problems[0]}"
        else:
            text = f"{source}: {len(problems)} problems: " + "; ".join(problems)
        super().__init__(text)


class StateError(ClusterkitError):
    """Cluster state is missing, locked by another command, or unreadable."""


class ProviderError(ClusterkitError):
    """The provider could not create, inspect or remove a resource."""


class CapacityError(ProviderError):
    """The provider has no capacity for the requested instance type or market."""


class PrerequisiteError(ClusterkitError):
    """The machine lacks something clusterkit needs (root, a system package)."""


class SSHError(ClusterkitError):
    """A node could not be reached over SSH."""


class ConfigureError(ClusterkitError):
    """Configuration of a node failed."""


class SlurmError(ClusterkitError):
    """A Slurm command failed or returned something unreadable."""


class CommandError(ClusterkitError):
    """A subprocess failed; carries the command, its exit code and the tail of stderr."""

    def __init__(self, argv: list[str], returncode: int, stderr: str) -> None:
        self.argv = argv
        self.returncode = returncode
        self.stderr = stderr
        tail = " | ".join(stderr.strip().splitlines()[-3:]) or "no output on stderr"
        super().__init__(f"command failed (exit {returncode}): {' '.join(argv)}: {tail}")
