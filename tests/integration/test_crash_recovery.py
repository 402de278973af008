"""`down` cleans up after `up` was killed with SIGKILL at any step, and without any state."""

from __future__ import annotations

import selectors
import signal
import subprocess
import time
from collections.abc import Callable

import pytest

from clusterkit.providers.local import net
from tests.integration.conftest import CK, Clusterkit, residue


def _kill_up_when(ck: Clusterkit, name: str, moment: Callable[[str], bool]) -> None:
    """Start `up` and SIGKILL it as soon as ``moment`` is true of its stderr so far or of
    the machine; fail if `up` finished first (the kill must land mid-way)."""
    spec = ck.spec(name, 3)
    child = subprocess.Popen(
        [CK, "up", "-f", str(spec), "--no-configure"],
        env=ck.env,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stderr is not None
    sel = selectors.DefaultSelector()
    sel.register(child.stderr, selectors.EVENT_READ)
    seen = ""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and child.poll() is None:
        if sel.select(timeout=0.005):
            seen += child.stderr.readline()
        if moment(seen):
            child.send_signal(signal.SIGKILL)
            break
    child.wait(timeout=10)
    assert child.returncode == -signal.SIGKILL, f"`up` was not killed mid-way:\n{seen}"


KILL_POINTS: dict[str, Callable[[str, str], bool]] = {
    "after-network": lambda name, err: "Network" in err,
    "mid-nodes": lambda name, err: len(net.cluster_netns(name)) >= 2,
    "waiting-for-ssh": lambda name, err: "Nodes" in err,
}


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_down_after_up_killed(ck: Clusterkit, point: str) -> None:
    name = f"crash-{point.split('-', maxsplit=1)[0]}"
    _kill_up_when(ck, name, lambda err: KILL_POINTS[point](name, err))
    assert residue(ck, name), "the kill left nothing to clean: it came too early to test"
    ck.run("down", name)
    assert residue(ck, name) == []


def test_up_after_crash_finishes_the_cluster(ck: Clusterkit) -> None:
    name = "crash-resume"
    _kill_up_when(ck, name, lambda err: len(net.cluster_netns(name)) >= 2)
    ck.up(name, 3)
    status = ck.status(name)
    assert status["status"] == "ready"
    assert [n["state"] for n in status["nodes"]] == ["running"] * 4
    assert len(net.cluster_netns(name)) == 4
    ck.run("down", name)
    assert residue(ck, name) == []


def test_down_without_state_finds_everything_by_name(ck: Clusterkit) -> None:
    name = "stateless"
    ck.up(name, 2)
    (ck.cluster_dir(name) / "state.json").unlink()
    ck.run("down", name)
    assert residue(ck, name) == []


def test_down_with_corrupt_state(ck: Clusterkit) -> None:
    name = "corrupt"
    ck.up(name, 1)
    (ck.cluster_dir(name) / "state.json").write_text("{not json")
    status = ck.run("status", name, check=False)
    assert status.returncode == 1 and "unreadable state" in status.stderr
    ck.run("down", name)
    assert residue(ck, name) == []


def test_down_all(ck: Clusterkit) -> None:
    for name in ("all-a", "all-b"):
        ck.up(name, 1)
    ck.run("down", "--all")
    assert residue(ck, "all-a") == residue(ck, "all-b") == []
    assert ck.run("list", "-o", "json").stdout.strip() == "[]"
