"""A newcomer's first commands, exactly as the README gives them: a fresh clone, `make up`,
then `make down`, with the environment a user has: no CLUSTERKIT_HOME (so the default home,
~/.clusterkit under HOME=/root), no virtualenv active, the clone's own `.venv` made by make.

The clone holds what is committed plus this work tree's changes, so the test checks the
code under test, laid out as a fresh clone of it would be."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.driver import Clusterkit
from tests.local_residue import residue

REPO = Path(__file__).parents[2]
README = (REPO / "README.md").read_text(encoding="utf-8")
NAME = "ck"  # the cluster of examples/local.yaml, which `make up` builds
DEFAULT_HOME = Path("/root/.clusterkit")


def readme_commands() -> list[str]:
    """The README's opening set-up commands (its first ``sh`` block), comments dropped."""
    block = README.split("```sh\n", 1)[1].split("```", 1)[0]
    return [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]


def user_env() -> dict[str, str]:
    """What a root shell on a fresh machine has: HOME=/root, no CLUSTERKIT_HOME, and no venv
    of the test run on PATH."""
    env = dict(os.environ)
    env.pop("CLUSTERKIT_HOME", None)
    env.pop("VIRTUAL_ENV", None)
    env["HOME"] = "/root"
    venv = str(REPO / ".venv")
    env["PATH"] = ":".join(p for p in env["PATH"].split(":") if not p.startswith(venv))
    return env


def fresh_clone(dest: Path) -> Path:
    """``git clone`` of this repository, with the work tree's uncommitted changes on top."""
    subprocess.run(["git", "clone", "-q", str(REPO), str(dest)], check=True)
    diff = subprocess.run(
        ["git", "-C", str(REPO), "diff", "HEAD", "--binary"], capture_output=True, check=True
    ).stdout
    if diff:
        subprocess.run(["git", "-C", str(dest), "apply", "-"], input=diff, check=True)
    untracked = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "--others", "--exclude-standard", "-z"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    for rel in filter(None, untracked.split("\0")):
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, dest / rel)
    return dest


def make(
    target: str, clone: Path, timeout: float
) -> tuple[subprocess.CompletedProcess[str], float]:
    start = time.monotonic()
    proc = subprocess.run(
        ["make", target], cwd=clone, env=user_env(), stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout, check=False,
    )  # fmt: skip
    return proc, time.monotonic() - start


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    if (DEFAULT_HOME / "clusters" / NAME).exists():
        pytest.skip(f"a cluster {NAME!r} of the default home is up here; it is not ours to touch")
    path = fresh_clone(tmp_path_factory.mktemp("newcomer") / "clusterkit")
    yield path
    # Whatever happened, the default home's cluster goes (with the clone's own clusterkit).
    if (DEFAULT_HOME / "clusters" / NAME).exists():
        make("down", path, timeout=300)


def test_the_readme_opens_with_make_up_and_make_test() -> None:
    assert readme_commands() == ["make up", "make test"]


def test_make_up_builds_the_default_cluster_and_runs_the_first_job(clone: Path) -> None:
    proc, took = make("up", clone, timeout=1200)
    assert proc.returncode == 0, proc.stdout
    assert (DEFAULT_HOME / "clusters" / NAME / "state.json").exists()
    # The first job: one task per compute node, its output read back through shared storage.
    first = proc.stdout.split(f"first job on cluster {NAME}:", 1)[1].splitlines()[1:4]
    assert first == ["compute-st-1", "compute-st-2", "compute-st-3"], proc.stdout
    up_line = re.search(r"Cluster ck is ready in ([0-9.]+)s", proc.stdout)
    ansible = re.search(r"Head configured \(Ansible[^)]*\) \(([0-9.]+)s\)", proc.stdout)
    assert up_line and ansible
    print(f"make up: {took:.1f}s in all, up {up_line[1]}s, Ansible {ansible[1]}s")


def test_make_down_leaves_nothing(clone: Path) -> None:
    proc, _ = make("down", clone, timeout=300)
    assert proc.returncode == 0, proc.stdout
    assert residue(Clusterkit(DEFAULT_HOME), NAME) == []
    assert not Path(f"/run/clusterkit/local/{NAME}").exists()
