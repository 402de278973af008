"""The README's 60-second tour, taken from README.md and run line by line on a live cluster.

Each command runs as a user would type it: ``# CMD`` in a shell on this machine (with the
``clusterkit`` command on PATH), ``USER@NODE:~$ CMD`` in the shell the ``clusterkit ssh`` line
above it opened. Its output (stdout and stderr together, as a terminal shows them) must be
what the README shows, so a changed command or output fails here (see ``tests.readme_tour``
for how varying values are compared)."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest

from tests.driver import CK, Clusterkit
from tests.local_residue import residue
from tests.readme_tour import Step, matches, parse_tour, strip_comment, tour_block

README = Path(__file__).parents[2] / "README.md"
STEPS = parse_tour(tour_block(README.read_text(encoding="utf-8")))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tour")


def run(step: Step, ck: Clusterkit, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**ck.env, "PATH": f"{Path(CK).parent}:{os.environ['PATH']}"}
    if step.shell is not None:
        argv = [*shlex.split(step.shell), "--", strip_comment(step.command)]
    else:
        argv = ["bash", "-c", step.command]
    return subprocess.run(
        argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, timeout=600, check=False,
    )  # fmt: skip


@pytest.mark.parametrize("step", STEPS, ids=[strip_comment(s.command)[:60] for s in STEPS])
def test_tour_step(step: Step, ck: Clusterkit, workdir: Path) -> None:
    proc = run(step, ck, workdir)
    where = f"{step.user}@{step.node}$ " if step.user else "# "
    assert proc.returncode == 0, f"{where}{step.command}\nexited {proc.returncode}:\n{proc.stdout}"
    assert matches(step.expected, proc.stdout.splitlines()), (
        f"{where}{step.command}\nREADME shows:\n" + "\n".join(step.expected)
        + f"\nbut it printed:\n{proc.stdout}"
    )  # fmt: skip


def test_the_tour_leaves_nothing(ck: Clusterkit) -> None:
    name = strip_comment(STEPS[-1].command).split()[-1]
    assert residue(ck, name) == []
