"""Host-side Slurm clients of a local cluster reach the head's munged whatever the home's path."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from clusterkit.providers.local import control, owners
from clusterkit.state import ClusterState


@pytest.fixture(autouse=True)
def _links(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(owners, "SOCKETS_DIR", tmp_path / "run" / ".sockets")
    monkeypatch.setattr(owners, "OWNERS_DIR", tmp_path / "run")


def test_a_short_socket_path_is_used_as_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    with tempfile.TemporaryDirectory(prefix="ck", dir="/tmp") as short:
        monkeypatch.setenv("CLUSTERKIT_HOME", short)
        state = ClusterState(name="demo", provider="local")
        socket = control.munge_socket(state)
    assert socket == state.dir / "nodes" / "demo-head" / "run" / "munge" / "munge.socket.2"
    assert not owners.SOCKETS_DIR.exists()


def test_a_socket_path_too_long_for_connect_is_reached_through_a_short_link(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / ("deep " * 20).strip() / "clusterkit homes"
    monkeypatch.setenv("CLUSTERKIT_HOME", str(home))
    state = ClusterState(name="demo", provider="local")
    real = state.dir / "nodes" / "demo-head" / "run" / "munge" / "munge.socket.2"
    assert len(os.fsencode(real)) > control.MAX_SOCKET_PATH
    link = control.munge_socket(state)
    assert link == tmp_path / "run" / ".sockets" / "demo.munge"
    assert os.readlink(link) == str(real) and " " not in str(link)
    assert control.munge_socket(state) == link  # again: the same link, nothing left beside it
    assert sorted(p.name for p in link.parent.iterdir()) == ["demo.munge"]
    owners.release("demo", state.dir)  # down forgets it with the name's claim
    assert not link.is_symlink()
