"""ck-supervise: services on disk, telling alive from dead, restarting with backoff, `add`."""

from __future__ import annotations

import itertools
import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from clusterkit.nodetools import supervise
from clusterkit.nodetools.supervise import Service, Tracker, load_services, one_pass


def test_a_service_is_alive_by_exactly_one_rule() -> None:
    with pytest.raises(ValueError, match="exactly one of process, mount, listen"):
        Service("both", ["true"], process="x", mount="/x")
    with pytest.raises(ValueError, match="exactly one"):
        Service("neither", ["true"])


def test_services_round_trip_root_only_mounts_first_outer_first(tmp_path: Path) -> None:
    for service in (
        Service("slurmd", ["/usr/sbin/slurmd"], process="slurmd"),
        Service("home-ann", ["sshfs", "a"], mount="/shared/home/ann"),
        Service("shared", ["sshfs", "b"], mount="/shared"),
        Service("agent", ["ck-spot-agent"], process="ck-spot-agent", background=True),
    ):
        path = service.save(tmp_path)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "other.json").write_text('{"name": "x"}')
    loaded = load_services(tmp_path)
    assert [s.name for s in loaded] == ["shared", "home-ann", "agent", "slurmd"]
    assert loaded[2] == Service("agent", ["ck-spot-agent"], process="ck-spot-agent",
                                background=True)  # fmt: skip


def _proc(root: Path, pid: int, comm: str, state: str = "S") -> None:
    (root / str(pid)).mkdir()
    (root / str(pid) / "comm").write_text(comm + "\n")
    (root / str(pid) / "stat").write_text(f"{pid} ({comm}) {state} 1 1\n")


def test_a_process_counts_by_its_name_unless_a_zombie_or_this_one(tmp_path: Path) -> None:
    _proc(tmp_path, 10, "slurmd")
    _proc(tmp_path, 11, "munged", state="Z")
    _proc(tmp_path, os.getpid(), "ck-supervise")
    _proc(tmp_path, 12, "ck-spot-agent")  # comm keeps 15 characters of a longer name
    (tmp_path / "self").mkdir()
    assert supervise.process_running("slurmd", tmp_path)
    assert not supervise.process_running("munged", tmp_path)
    assert not supervise.process_running("ck-supervise", tmp_path)
    assert supervise.process_running("ck-spot-agent", tmp_path)
    assert not supervise.process_running("slurmctld", tmp_path)


def test_a_mount_answers_only_when_it_is_one(tmp_path: Path) -> None:
    assert supervise.mount_answers("/")
    assert not supervise.mount_answers(str(tmp_path))
    assert not supervise.mount_answers(str(tmp_path / "missing"))


class Fake:
    """Services that are dead until started; starts that fail while ``broken``."""

    def __init__(self) -> None:
        self.up: set[str] = set()
        self.broken: set[str] = set()
        self.starts: list[str] = []
        self.events: list[dict[str, Any]] = []

    def check(self, service: Service) -> bool:
        return service.name in self.up

    def launch(self, service: Service) -> str:
        self.starts.append(service.name)
        if service.name in self.broken:
            return "exit 1: no"
        self.up.add(service.name)
        return ""

    def record(self, source: str, action: str, **fields: Any) -> None:
        self.events.append({"source": source, "action": action, **fields})


def test_a_dead_service_is_restarted_at_once_and_its_restart_is_an_event(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(supervise, "START_WAIT_SECONDS", 0.2)
    fake, tracker = Fake(), Tracker()
    services = [Service("slurmd", ["x"], process="slurmd"), Service("munged", ["y"], process="m")]
    fake.up.add("munged")
    assert one_pass(services, tracker, fake.record, 100.0, check=fake.check,
                    launch=fake.launch) == ["slurmd"]  # fmt: skip
    assert fake.starts == ["slurmd"]
    assert fake.events[0]["action"] == "restarted" and fake.events[0]["service"] == "slurmd"
    assert fake.events[0]["ok"] is True and "next_try_in" not in fake.events[0]
    assert one_pass(services, tracker, fake.record, 101.0, check=fake.check,
                    launch=fake.launch) == []  # fmt: skip


def test_a_service_that_keeps_failing_is_retried_less_often_never_given_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(supervise, "START_WAIT_SECONDS", 0.05)
    fake, tracker = Fake(), Tracker()
    services = [Service("slurmd", ["x"], process="slurmd")]
    fake.broken.add("slurmd")
    tries = []
    for now in range(0, 200):
        if one_pass(services, tracker, fake.record, float(now), check=fake.check,
                    launch=fake.launch):  # fmt: skip
            tries.append(now)
    gaps = [b - a for a, b in itertools.pairwise(tries)]
    assert gaps[:4] == [1, 2, 4, 8] and max(gaps) <= supervise.MAX_BACKOFF_SECONDS + 1
    assert (
        fake.events[-1]["action"] == "restart failed" and fake.events[-1]["error"] == "exit 1: no"
    )
    fake.broken.clear()  # it is fixed: the next due try brings it back
    later = tries[-1] + supervise.MAX_BACKOFF_SECONDS + 1
    assert one_pass(services, tracker, fake.record, later, check=fake.check,
                    launch=fake.launch) == ["slurmd"]  # fmt: skip
    assert fake.events[-1]["action"] == "restarted"


def test_start_runs_a_forking_command_and_reports_its_failure(tmp_path: Path) -> None:
    assert supervise.start(Service("ok", ["true"], process="true")) == ""
    failed = supervise.start(Service("bad", ["sh", "-c", "echo nope >&2; exit 3"], process="x"))
    assert failed == "exit 3: nope"
    assert "FileNotFoundError" in supervise.start(Service("none", ["/no/such"], process="x"))


def test_add_registers_starts_and_waits_for_a_background_service(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[list[str]] = []
    monkeypatch.setattr(supervise, "ensure_supervisor", lambda d, argv, log: started.append(argv))
    log = tmp_path / "sleeper.log"
    rc = supervise.main([
        "--dir", str(tmp_path), "add", "sleeper", "--process", "sleep", "--background",
        "--log", str(log), "--", "sleep", "30.25",
    ])  # fmt: skip
    try:
        assert rc == 0
        assert supervise.process_running("sleep")
        saved = json.loads((tmp_path / "sleeper.json").read_text())
        assert saved["start"] == ["sleep", "30.25"] and saved["background"] is True
        assert started and started[0][-1] == "run" and str(tmp_path) in started[0]
    finally:
        subprocess.run(["pkill", "-x", "-f", "sleep 30.25"], check=False)


def test_add_without_a_command_or_a_service_that_never_lives_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(supervise, "ensure_supervisor", lambda *a: None)
    monkeypatch.setattr(supervise, "START_WAIT_SECONDS", 0.3)
    assert supervise.main(["--dir", str(tmp_path), "add", "x", "--process", "x"]) == 2
    assert "no command after --" in capsys.readouterr().err
    rc = supervise.main(["--dir", str(tmp_path), "add", "x", "--process", "nothing-by-that", "--",
                         sys.executable, "-c", "pass"])  # fmt: skip
    assert rc == 1 and "x did not start: not alive" in capsys.readouterr().err


def test_a_port_listens_only_in_the_listen_state(tmp_path: Path) -> None:
    header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid\n"
    (tmp_path / "tcp").write_text(
        header
        + "   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0\n"
        + "   1: 0200FA0A:1AA1 0300FA0A:D2F0 01 00000000:00000000 00:00000000 00000000     0\n"
    )
    (tmp_path / "tcp6").write_text(header)
    assert supervise.listening(22, tmp_path)  # 0x0016, state 0A
    assert not supervise.listening(6817, tmp_path)  # 0x1AA1 is only an established connection
    assert not supervise.listening(22, tmp_path / "missing")
