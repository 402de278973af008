"""Per-cluster state: where it lives, atomic writes, loading errors and the lock."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from clusterkit import state
from clusterkit.errors import StateError
from clusterkit.state import ClusterState, NodeState, atomic_write, load_state


def make_state(name: str = "demo") -> ClusterState:
    return ClusterState(
        name=name,
        provider="local",
        network={"subnet": "10.250.7.0/24"},
        nodes={
            "demo-head": NodeState(
                name="demo-head", role="head", address="10.250.7.2", pids={"sshd": 42}
            ),
            "compute-st-1": NodeState(
                name="compute-st-1", role="compute", group="compute", index=1, status="running"
            ),
        },
        spec={"name": name},
    )


# ---------------------------------------------------------------------------------------------
# Where state lives


def test_clusterkit_home_overrides_the_default(ck_home: Path) -> None:
    assert state.home() == ck_home
    assert state.clusters_dir() == ck_home / "clusters"
    assert state.cluster_dir("demo") == ck_home / "clusters" / "demo"
    assert make_state().dir == ck_home / "clusters" / "demo"


def test_default_home_is_dot_clusterkit(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("CLUSTERKIT_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert state.home() == tmp_path / ".clusterkit"


def test_empty_clusterkit_home_means_the_default(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CLUSTERKIT_HOME", "")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert state.home() == tmp_path / ".clusterkit"


# ---------------------------------------------------------------------------------------------
# Save and load


def test_save_load_round_trip(ck_home: Path) -> None:
    original = make_state()
    original.save()
    assert (ck_home / "clusters" / "demo" / "state.json").is_file()
    loaded = load_state("demo")
    assert loaded == original
    assert loaded.nodes["demo-head"].pids == {"sshd": 42}
    assert loaded.network == {"subnet": "10.250.7.0/24"}


def test_mark_records_each_step_once_and_persists(ck_home: Path) -> None:
    st = make_state()
    st.mark("network")
    st.mark("keys")
    st.mark("network")
    assert st.steps == ["network", "keys"]
    assert load_state("demo").steps == ["network", "keys"]


def test_list_states_skips_unreadable_ones_and_sorts(ck_home: Path) -> None:
    assert state.list_states() == []
    make_state("zeta").save()
    make_state("alpha").save()
    broken = ck_home / "clusters" / "broken"
    broken.mkdir()
    (broken / "state.json").write_text("{", encoding="utf-8")
    (ck_home / "clusters" / "no-state-yet").mkdir()
    assert [s.name for s in state.list_states()] == ["alpha", "zeta"]


def test_remove_cluster_dir(ck_home: Path) -> None:
    make_state().save()
    state.remove_cluster_dir("demo")
    assert not (ck_home / "clusters" / "demo").exists()
    state.remove_cluster_dir("demo")  # removing twice is fine
    assert state.try_load_state("demo") is None


def test_load_state_of_a_missing_cluster(ck_home: Path) -> None:
    with pytest.raises(StateError) as info:
        load_state("ghost")
    assert str(info.value) == "no cluster named 'ghost' (see `clusterkit list`)"
    assert state.try_load_state("ghost") is None


@pytest.mark.parametrize(
    "content",
    [b"{not json", b'{"name": "broken"}', b"\xff\xfe", b"[]"],
    ids=["bad-json", "missing-fields", "not-utf8", "not-an-object"],
)
def test_corrupt_state_points_to_down(ck_home: Path, content: bytes) -> None:
    path = ck_home / "clusters" / "broken" / "state.json"
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    with pytest.raises(StateError) as info:
        load_state("broken")
    message = str(info.value)
    assert message.startswith(f"{path}: unreadable state (")
    assert message.endswith("; `clusterkit down broken` still cleans up")
    assert "\n" not in message


def test_a_lost_state_leaves_its_provider_and_network_for_down(ck_home: Path) -> None:
    saved = make_state()
    saved.provider = "aws"
    saved.network["region"] = "eu-west-1"
    saved.save()
    (saved.dir / "state.json").write_text("{not json")
    salvaged = state.salvage_state("demo")
    assert salvaged is not None
    assert (salvaged.provider, salvaged.network) == ("aws", saved.network)
    assert salvaged.nodes == {}  # nodes are found by name, not remembered
    (saved.dir / "state.json").unlink()
    assert state.salvage_state("demo") == salvaged
    (saved.dir / state.ORIGIN).write_text("[]")
    assert state.salvage_state("demo") is None
    assert state.salvage_state("never-made") is None


# ---------------------------------------------------------------------------------------------
# atomic_write


def test_atomic_write_creates_parents_sets_mode_and_leaves_no_temp_files(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "file.txt"
    atomic_write(path, "one\n", mode=0o600)
    atomic_write(path, "two\n", mode=0o600)
    assert path.read_text(encoding="utf-8") == "two\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["file.txt"]


def test_atomic_write_default_mode(tmp_path: Path) -> None:
    path = tmp_path / "f"
    atomic_write(path, "x")
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_a_failed_atomic_write_keeps_the_old_file_and_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state.json"
    atomic_write(path, "old\n")

    def fail(src: object, dst: object) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk on fire"):
        atomic_write(path, "new\n")
    assert path.read_text(encoding="utf-8") == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_a_reader_sees_the_old_or_the_new_file_never_a_torn_one(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    versions = ["a" * 300_000 + "\n", "b" * 500_000 + "\n"]
    atomic_write(path, versions[0])
    stop = threading.Event()
    writes = 0

    def writer() -> None:
        nonlocal writes
        while not stop.is_set():
            atomic_write(path, versions[writes % 2])
            writes += 1

    thread = threading.Thread(target=writer)
    thread.start()
    seen: set[str] = set()
    try:
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            text = path.read_text(encoding="utf-8")
            assert text in versions, f"torn read: {len(text)} characters"
            seen.add(text[0])
    finally:
        stop.set()
        thread.join()
    assert writes > 2
    assert seen, "the reader read nothing"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


# ---------------------------------------------------------------------------------------------
# The lock

HOLDER = """
import sys, time
from clusterkit import state
with state.cluster_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(60)
"""


def start_holder(name: str) -> subprocess.Popen[str]:
    """Another process that takes cluster ``name``'s lock, says so and sleeps."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, name], stdout=subprocess.PIPE, text=True, env=os.environ
    )
    assert holder.stdout is not None
    line = holder.stdout.readline()
    assert line == "locked\n", f"the holder did not take the lock: {line!r}"
    return holder


def test_a_second_holder_times_out_naming_the_first_ones_pid(ck_home: Path) -> None:
    holder = start_holder("demo")
    try:
        start = time.monotonic()
        with pytest.raises(StateError) as info, state.cluster_lock("demo", timeout=0.3):
            pytest.fail("the lock was taken twice")
        waited = time.monotonic() - start
    finally:
        holder.kill()
        holder.wait()
    assert 0.3 <= waited < 5
    lock = ck_home / "clusters" / ".demo.lock"
    assert str(info.value) == (
        f"cluster 'demo' is busy: another clusterkit command (pid {holder.pid}) holds "
        f"{lock}; wait for it to finish"
    )


def test_a_lock_of_a_process_killed_with_sigkill_is_free_at_once(ck_home: Path) -> None:
    holder = start_holder("demo")
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert holder.returncode == -signal.SIGKILL
    start = time.monotonic()
    with state.cluster_lock("demo", timeout=0):
        held_for = time.monotonic() - start
        pid = (ck_home / "clusters" / ".demo.lock").read_text(encoding="utf-8")
    assert held_for < 1
    assert pid == f"{os.getpid()}\n"


def test_locks_of_different_clusters_do_not_block_each_other(ck_home: Path) -> None:
    holder = start_holder("one")
    try:
        with state.cluster_lock("two", timeout=0):
            entered = True
    finally:
        holder.kill()
        holder.wait()
    assert entered


def test_the_lock_is_exclusive_within_one_process_too(ck_home: Path) -> None:
    busy = rf"clusterkit is busy: .*\(pid {os.getpid()}\)"
    path = ck_home / ".lock"
    with (
        state.locked(path, "clusterkit", timeout=0),
        pytest.raises(StateError, match=busy),
        state.locked(path, "clusterkit", timeout=0),
    ):
        pytest.fail("the lock was taken twice")
    with state.locked(path, "clusterkit", timeout=0):  # released after the block
        assert (ck_home / ".lock").read_text(encoding="utf-8") == f"{os.getpid()}\n"
