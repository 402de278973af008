"""ck-checkpoint and ck-run: real files, real processes and signals (no Slurm needed)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from clusterkit.nodetools import checkpoint
from clusterkit.nodetools.checkpoint import CheckpointError, Checkpoints


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "ckpt" / "demo" / "42"


def test_save_then_restore_gives_back_the_files(store: Path, tmp_path: Path) -> None:
    (tmp_path / "state.txt").write_text("step 7")
    (tmp_path / "arrays").mkdir()
    (tmp_path / "arrays" / "a.bin").write_bytes(b"\x00\x01")
    saved = Checkpoints(str(store)).save([tmp_path / "state.txt", tmp_path / "arrays"])
    assert saved.seq == 1 and Path(saved.location).name == "ckpt-000001"
    out = tmp_path / "out"
    found = Checkpoints(str(store)).restore(out)
    assert found is not None and found.seq == 1
    assert (out / "state.txt").read_text() == "step 7"
    assert (out / "arrays" / "a.bin").read_bytes() == b"\x00\x01"
    assert not (out / checkpoint.META).exists()


def test_only_the_newest_and_the_one_before_are_kept(store: Path) -> None:
    ck = Checkpoints(str(store))
    for step in range(5):
        ck.save_json({"step": step})
    assert [c.seq for c in ck.list()] == [4, 5]
    assert ck.load_json() == {"step": 4}
    assert sorted(p.name for p in store.iterdir()) == ["ckpt-000004", "ckpt-000005"]


def test_a_half_written_checkpoint_is_never_listed(store: Path) -> None:
    ck = Checkpoints(str(store))
    ck.save_json({"step": 1})
    # What a save killed before its rename leaves: a temporary directory, no ckpt- name.
    (store / ".tmp-node-1-abc").mkdir()
    (store / ".tmp-node-1-abc" / "state.json").write_text('{"step": 2')
    # And a ckpt- directory without its meta (not ours, or being deleted).
    (store / "ckpt-000009").mkdir()
    assert [c.seq for c in ck.list()] == [1]
    assert ck.load_json() == {"step": 1}


def test_restore_without_checkpoint_is_none(store: Path, tmp_path: Path) -> None:
    assert Checkpoints(str(store)).restore(tmp_path / "x") is None
    assert Checkpoints(str(store)).load_json() is None


def test_meta_names_the_job_and_restart(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "40")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    saved = Checkpoints(str(store)).save_json({})
    assert (saved.job, saved.restart_count) == ("40_3", 2)
    assert abs(saved.time - time.time()) < 5


def test_errors_name_the_problem(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(checkpoint.ENV, raising=False)
    with pytest.raises(CheckpointError, match="CK_CHECKPOINT_DIR is not set"):
        Checkpoints()
    with pytest.raises(CheckpointError, match="no-such: no such file"):
        Checkpoints(str(store)).save([Path("no-such")])


def test_cli_exit_codes(store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert checkpoint.main(["--dir", str(store), "restore", "--to", str(tmp_path)]) == 1
    assert "no checkpoint yet" in capsys.readouterr().err
    (tmp_path / "s").write_text("1")
    assert checkpoint.main(["--dir", str(store), "save", str(tmp_path / "s")]) == 0
    assert checkpoint.main(["--dir", str(store), "path"]) == 0
    assert capsys.readouterr().out.strip().endswith("ckpt-000001")
    assert checkpoint.main(["--dir", str(store), "save", str(tmp_path / "none")]) == 2


# ---------------------------------------------------------------------------------------------
# ck-run, as a real process

PROGRAM = textwrap.dedent(
    """
    import os, signal, sys, time
    from pathlib import Path
    got = []
    signal.signal(signal.SIGUSR1, lambda *_: got.append(1))
    Path("started").write_text(os.environ.get("CK_RESTORED_FROM", "-"))
    deadline = time.time() + float(sys.argv[1])
    while time.time() < deadline and not got:
        time.sleep(0.05)
    Path("signalled").write_text(str(len(got)))
    sys.exit(int(sys.argv[2]))
    """
)


def ck_run(
    tmp_path: Path,
    *args: str,
    env: dict[str, str] | None = None,
    wait: float = 5,
    code: int = 0,
    program: str = PROGRAM,
) -> subprocess.Popen[str]:
    """``ck-run ARGS -- python3 prog.py WAIT CODE`` in ``tmp_path``, ``program`` as prog.py."""
    (tmp_path / "prog.py").write_text(program)
    argv = [sys.executable, "-m", "clusterkit.nodetools.ckrun", *args, "--",
            sys.executable, "prog.py", str(wait), str(code)]  # fmt: skip
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "CK_"))}
    return subprocess.Popen(argv, cwd=tmp_path, env={**full_env, **(env or {})}, text=True,
                            stderr=subprocess.PIPE)  # fmt: skip


def wait_for(path: Path, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def test_ck_run_passes_the_exit_status_on(tmp_path: Path) -> None:
    assert ck_run(tmp_path, wait=0, code=7).wait(timeout=20) == 7


def test_ck_run_forwards_the_checkpoint_signal(tmp_path: Path) -> None:
    child = ck_run(tmp_path, wait=15)
    wait_for(tmp_path / "started")
    child.send_signal(signal.SIGUSR1)
    assert child.wait(timeout=10) == 0
    assert (tmp_path / "signalled").read_text() == "1"


def test_ck_run_spares_a_program_that_does_not_handle_the_signal_yet(tmp_path: Path) -> None:
    # The program sets its handler only after a while, as one still importing would.
    late = textwrap.dedent(
        """
        import signal, time
        from pathlib import Path
        Path("started").write_text("")
        time.sleep(1.5)
        got = []
        signal.signal(signal.SIGUSR1, lambda *_: got.append(1))
        Path("ready").write_text("")
        while not got:
            time.sleep(0.05)
        """
    )
    child = ck_run(tmp_path, program=late)
    wait_for(tmp_path / "started")
    child.send_signal(signal.SIGUSR1)  # too early: not passed on, the program lives
    wait_for(tmp_path / "ready")
    child.send_signal(signal.SIGUSR1)
    _, err = child.communicate(timeout=20)
    assert child.returncode == 0
    assert "SIGUSR1 not passed on: the program does not handle it (yet)" in err


def test_ck_run_signals_every_interval(tmp_path: Path) -> None:
    child = ck_run(tmp_path, "--checkpoint-every", "0.5", wait=15)
    assert child.wait(timeout=10) == 0
    assert (tmp_path / "signalled").read_text() == "1"


def test_ck_run_restores_the_newest_checkpoint_on_restart(tmp_path: Path) -> None:
    store = tmp_path / "store"
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "state.json").write_text('{"step": 3}')
    saved = Checkpoints(str(store)).save([tmp_path / "src" / "state.json"])
    work = tmp_path / "work"
    work.mkdir()
    env = {"SLURM_RESTART_COUNT": "1", "CK_CHECKPOINT_DIR": str(store)}
    child = ck_run(work, env=env, wait=0)
    assert child.wait(timeout=20) == 0
    assert (work / "state.json").read_text() == '{"step": 3}'
    assert (work / "started").read_text() == saved.location


def test_ck_run_ends_a_job_restarted_past_its_limit(tmp_path: Path) -> None:
    env = {"SLURM_RESTART_COUNT": "3", "CK_MAX_RESTARTS": "2"}
    child = ck_run(tmp_path, env=env, wait=0)
    _, err = child.communicate(timeout=20)
    assert child.returncode == 3
    assert "restarted 3 times, more than the limit of 2" in err
    assert not (tmp_path / "started").exists()
    # Within the limit (3 restarts allowed) it runs.
    child = ck_run(tmp_path, "--max-restarts", "3", env=env, wait=0)
    assert child.wait(timeout=20) == 0 and (tmp_path / "started").exists()


def test_ck_run_refuses_bad_options(tmp_path: Path) -> None:
    child = ck_run(tmp_path, "--signal", "NOPE")
    _, err = child.communicate(timeout=20)
    assert child.returncode == 2 and "not a signal name" in err


def test_ck_run_takes_the_clusters_checkpoint_signal(tmp_path: Path) -> None:
    usr2 = textwrap.dedent(
        """
        import signal, time
        from pathlib import Path
        got = []
        signal.signal(signal.SIGUSR2, lambda *_: got.append(1))
        Path("ready").write_text("")
        while not got:
            time.sleep(0.05)
        """
    )
    child = ck_run(tmp_path, env={"CK_CHECKPOINT_SIGNAL": "USR2"}, program=usr2)
    wait_for(tmp_path / "ready")
    child.send_signal(signal.SIGUSR2)
    assert child.wait(timeout=20) == 0


def test_the_task_prolog_names_each_jobs_checkpoint_dir() -> None:
    from clusterkit.headfiles import spot_config, task_prolog
    from clusterkit.providers.local.provider import LocalProvider
    from clusterkit.spec import parse_spec

    spec = parse_spec({"name": "demo", "spot": {"checkpoint_signal": "USR2"}})
    where = LocalProvider.checkpoint_location(spec, {})
    script = task_prolog(spec, spot_config(spec, where)["checkpoint_dir"])
    env = {"PATH": os.environ["PATH"], "SLURM_JOB_USER": "ann", "SLURM_JOB_ID": "12"}
    plain = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True,
                           check=True).stdout.splitlines()  # fmt: skip
    assert plain == [
        "export CK_CHECKPOINT_DIR=/shared/home/ann/checkpoints/demo/12",
        "export CK_MAX_RESTARTS=3",
        "export CK_CHECKPOINT_SIGNAL=USR2",
    ]
    array = {**env, "SLURM_ARRAY_JOB_ID": "10", "SLURM_ARRAY_TASK_ID": "2"}
    out = subprocess.run(["sh", "-c", script], env=array, capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    assert "export CK_CHECKPOINT_DIR=/shared/home/ann/checkpoints/demo/10_2\n" in out


def test_on_aws_checkpoints_are_in_the_clusters_bucket_with_its_region() -> None:
    from clusterkit.errors import ConfigureError
    from clusterkit.headfiles import spot_config, task_prolog
    from clusterkit.providers.aws.provider import AwsProvider
    from clusterkit.spec import parse_spec

    aws = {"admin_cidr": "203.0.113.0/24"}
    doc = {"name": "demo", "provider": "aws", "aws": aws}
    spec = parse_spec(doc)
    network = {"bucket": "clusterkit-demo-123456789012-eu-west-1", "region": "eu-west-1"}
    spot = spot_config(spec, AwsProvider.checkpoint_location(spec, network), network)
    where = "s3://clusterkit-demo-123456789012-eu-west-1/checkpoints/demo/{user}/{job}"
    assert (spot["checkpoint_dir"], spot["region"]) == (where, "eu-west-1")
    own = parse_spec({**doc, "aws": {**aws, "checkpoint_bucket": "team-ckpt"}})
    assert (
        spot_config(own, AwsProvider.checkpoint_location(own, network))["checkpoint_dir"]
        == "s3://team-ckpt/checkpoints/demo/{user}/{job}"
    )
    with pytest.raises(ConfigureError, match="checkpoint bucket or region is not recorded"):
        AwsProvider.checkpoint_location(spec, {})

    script = task_prolog(spec, spot["checkpoint_dir"], spot["region"])
    env = {"PATH": os.environ["PATH"], "SLURM_JOB_USER": "ann", "SLURM_JOB_ID": "12"}
    lines = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True,
                           check=True).stdout.splitlines()  # fmt: skip
    assert lines == [
        "export CK_CHECKPOINT_DIR="
        "s3://clusterkit-demo-123456789012-eu-west-1/checkpoints/demo/ann/12",
        "export CK_MAX_RESTARTS=3",
        "export CK_CHECKPOINT_SIGNAL=USR1",
        "export AWS_DEFAULT_REGION=eu-west-1",
    ]
    # A region the job has already chosen is kept.
    mine = {**env, "AWS_DEFAULT_REGION": "us-east-2"}
    out = subprocess.run(["sh", "-c", script], env=mine, capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    assert out.endswith("export AWS_DEFAULT_REGION=us-east-2\n")
