"""clusterkit as its users run it: the installed CLI in a child process, with a home of its
own. The one driver of the CLI for the integration tests, the aws tests and the benchmarks.

``sh`` runs any command timed and never raises (a timeout is exit code 124, as with
``timeout(1)``); ``Clusterkit.run`` runs the CLI and, unless told otherwise, fails the test
with the command's whole output when it exits non-zero.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CK = str(Path(sys.executable).with_name("clusterkit"))
TIMED_OUT = 124


@dataclass(frozen=True)
class Result:
    """A finished command: how long it took, its exit code and its output."""

    seconds: float
    rc: int
    stdout: str
    stderr: str

    @property
    def returncode(self) -> int:  # the name subprocess.CompletedProcess uses
        return self.rc


class CommandFailed(AssertionError):
    """A command that had to succeed did not; the message carries its whole output."""


def sh(
    argv: list[str],
    *,
    timeout: float = 60.0,
    env: dict[str, str] | None = None,
    input: str | None = None,
) -> Result:
    """Run ``argv`` with output captured and timed. On any exception (Ctrl-C, SIGTERM through
    ``sys.exit``) ``subprocess.run`` kills the child first, so nothing outlives the caller."""
    start = time.monotonic()
    try:
        done = subprocess.run(
            argv,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=env,
        )
    except subprocess.TimeoutExpired as exc:
        err = _text(exc.stderr) + f"\ntimed out after {timeout} s"
        return Result(time.monotonic() - start, TIMED_OUT, _text(exc.stdout), err)
    return Result(time.monotonic() - start, done.returncode, done.stdout, done.stderr)


def _text(data: str | bytes | None) -> str:
    if isinstance(data, bytes):
        return data.decode(errors="replace")
    return data or ""


@dataclass
class Clusterkit:
    """The CLI with ``home`` as its ``CLUSTERKIT_HOME`` and ``extra_env`` on top of this
    process's environment."""

    home: Path
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, **self.extra_env, "CLUSTERKIT_HOME": str(self.home)}

    def run(
        self,
        *args: str,
        check: bool = True,
        timeout: float = 120,
        input: str | None = None,
    ) -> Result:
        done = sh([CK, *args], timeout=timeout, env=self.env, input=input)
        if check and done.rc != 0:
            raise CommandFailed(
                f"clusterkit {' '.join(args)} exited {done.rc} after {done.seconds:.1f} s\n"
                f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
            )
        return done

    # -- specs ---------------------------------------------------------------------------------

    def write_spec(self, doc: dict[str, Any], directory: Path | None = None) -> Path:
        """The spec ``doc`` as a file named after its cluster (under the home by default)."""
        path = (directory or self.home) / f"{doc['name']}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc), encoding="utf-8")  # JSON is YAML
        return path

    def spec(self, name: str, computes: int, **extra: Any) -> Path:
        """A local spec: a head and ``computes`` static nodes in one group."""
        doc = {
            "name": name,
            "groups": [{"name": "compute", "min": computes, "max": computes}],
            **extra,
        }
        return self.write_spec(doc)

    # -- the verbs -----------------------------------------------------------------------------

    def up(self, name: str, computes: int, configure: bool = False) -> Result:
        """`up` of a head and ``computes`` static nodes; bare nodes unless ``configure``."""
        extra = [] if configure else ["--no-configure"]
        return self.run("up", "-f", str(self.spec(name, computes)), *extra, timeout=600)

    def down(self, name: str, check: bool = True) -> Result:
        return self.run("down", name, check=check, timeout=300)

    def status(self, name: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.run("status", name, "-o", "json").stdout)
        return data

    def ssh(self, name: str, node: str, command: str, check: bool = True) -> Result:
        return self.run("ssh", name, node, "--", command, check=check, timeout=30)

    # -- what a cluster left on disk -----------------------------------------------------------

    def cluster_dir(self, name: str) -> Path:
        return self.home / "clusters" / name

    def state(self, name: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.cluster_dir(name) / "state.json").read_text())
        return data

    def names(self) -> list[str]:
        """The clusters this home holds a record of."""
        clusters = self.home / "clusters"
        return sorted(p.name for p in clusters.iterdir() if p.is_dir()) if clusters.is_dir() else []

    def client_env(self, name: str) -> dict[str, str]:
        """The environment `eval "$(clusterkit env NAME)"` gives a shell on this machine."""
        env = dict(self.env)
        for line in self.run("env", name).stdout.splitlines():
            key, value = line.removeprefix("export ").split("=", 1)
            env[key] = shlex.split(value)[0]
        return env
