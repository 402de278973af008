"""ck-machinefile: MPI machinefiles from a Slurm job's environment."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from clusterkit.nodetools.machinefile import cpus_per_node, machinefile, main

GoldenCheck = Callable[[str, str], None]

HOSTS = [("compute-st-1", 4), ("compute-st-2", 4), ("gpu-st-1", 2)]
JOB_VARIABLES = (
    "SLURM_JOB_NODELIST",
    "SLURM_JOB_CPUS_PER_NODE",
    "SLURM_JOB_ID",
    "SLURM_CLUSTER_NAME",
    "TMPDIR",
)


@pytest.fixture
def job_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """The environment of job 42 on three nodes, with ``$TMPDIR`` in ``tmp_path``."""
    for name in JOB_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SLURM_JOB_NODELIST", "compute-st-[1-2],gpu-st-1")
    monkeypatch.setenv("SLURM_JOB_CPUS_PER_NODE", "4(x2),2")
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setenv("SLURM_CLUSTER_NAME", "demo")
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    return monkeypatch


# ---------------------------------------------------------------------------------------------
# SLURM_JOB_CPUS_PER_NODE


@pytest.mark.parametrize(
    ("value", "counts"),
    [
        ("4", [4]),
        ("4(x2),2", [4, 4, 2]),
        ("2,4(x3)", [2, 4, 4, 4]),
        ("1(x1)", [1]),
        ("72(x2),36,1(x3)", [72, 72, 36, 1, 1, 1]),
    ],
)
def test_cpus_per_node(value: str, counts: list[int]) -> None:
    assert cpus_per_node(value) == counts


@pytest.mark.parametrize("value", ["", "x", "4(2)", "4(x)", "4(x0)", "0", "-1", "4,,2", "4(x2"])
def test_cpus_per_node_rejects(value: str) -> None:
    with pytest.raises(ValueError, match="SLURM_JOB_CPUS_PER_NODE"):
        cpus_per_node(value)


# ---------------------------------------------------------------------------------------------
# The files


def test_machinefile_openmpi(golden: GoldenCheck) -> None:
    text = machinefile(HOSTS, "openmpi", cluster="demo", job_id="42")
    golden("machinefile.openmpi.txt", text)
    assert text.splitlines()[1:] == [
        "compute-st-1 slots=4",
        "compute-st-2 slots=4",
        "gpu-st-1 slots=2",
    ]


def test_machinefile_mpich(golden: GoldenCheck) -> None:
    text = machinefile(HOSTS, "mpich", cluster="demo", job_id="42")
    golden("machinefile.mpich.txt", text)
    assert text.splitlines()[1:] == ["compute-st-1:4", "compute-st-2:4", "gpu-st-1:2"]


@pytest.mark.parametrize(
    ("cluster", "job_id", "header"),
    [
        (
            "demo",
            "42",
            "# Open MPI machinefile, written by clusterkit for cluster demo, Slurm job 42.",
        ),
        (None, "7", "# Open MPI machinefile, written by clusterkit for Slurm job 7."),
        (None, None, "# Open MPI machinefile, written by clusterkit for a Slurm job."),
    ],
)
def test_the_header_says_what_the_file_is_for(
    cluster: str | None, job_id: str | None, header: str
) -> None:
    text = machinefile([("n", 1)], "openmpi", cluster=cluster, job_id=job_id)
    assert text == f"{header}\nn slots=1\n"


def test_an_unknown_flavor_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown MPI flavor 'lam'"):
        machinefile(HOSTS, "lam")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# The command


def test_main_writes_the_default_path_and_prints_it(
    job_env: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([]) == 0
    path = tmp_path / "machinefile.42.openmpi"
    assert capsys.readouterr().out == f"{path}\n"
    assert path.read_text(encoding="utf-8") == machinefile(
        HOSTS, "openmpi", cluster="demo", job_id="42"
    )


def test_main_mpich_to_a_named_file(
    job_env: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "hosts"
    assert main(["--flavor", "mpich", "-o", str(out)]) == 0
    assert capsys.readouterr().out == f"{out}\n"
    assert out.read_text(encoding="utf-8").splitlines()[1:] == [
        "compute-st-1:4",
        "compute-st-2:4",
        "gpu-st-1:2",
    ]


def test_main_without_tmpdir_uses_tmp(
    job_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    job_id = f"ck-test-{uuid.uuid4().hex}"
    job_env.delenv("TMPDIR")
    job_env.setenv("SLURM_JOB_ID", job_id)
    expected = Path("/tmp") / f"machinefile.{job_id}.mpich"
    try:
        assert main(["--flavor", "mpich"]) == 0
        assert capsys.readouterr().out == f"{expected}\n"
        assert expected.exists()
    finally:
        expected.unlink(missing_ok=True)


def test_outside_a_job_says_so_in_one_line(
    job_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    job_env.delenv("SLURM_JOB_NODELIST")
    assert main([]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        "ck-machinefile: not inside a Slurm job (SLURM_JOB_NODELIST is not set)\n"
    )


def test_a_count_mismatch_is_one_clear_line(
    job_env: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job_env.setenv("SLURM_JOB_CPUS_PER_NODE", "4(x2)")
    assert main([]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("ck-machinefile: ")
    assert "names 3 host(s)" in err
    assert "gives 2 CPU count(s)" in err
    assert not list(tmp_path.iterdir())


def test_a_bad_cpu_list_is_one_clear_line(
    job_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    job_env.setenv("SLURM_JOB_CPUS_PER_NODE", "lots")
    assert main([]) == 2
    err = capsys.readouterr().err
    assert err == "ck-machinefile: SLURM_JOB_CPUS_PER_NODE='lots' is not of the form 4(x2),2\n"


def test_a_bad_nodelist_is_one_clear_line(
    job_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    job_env.setenv("SLURM_JOB_NODELIST", "compute-st-[1-2")
    assert main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ck-machinefile: hostlist ")
    assert err.count("\n") == 1


def test_no_cpu_counts_is_one_clear_line(
    job_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    job_env.delenv("SLURM_JOB_CPUS_PER_NODE")
    assert main([]) == 2
    assert capsys.readouterr().err == ("ck-machinefile: SLURM_JOB_CPUS_PER_NODE is not set\n")


def test_no_job_id_needs_an_output_file(
    job_env: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job_env.delenv("SLURM_JOB_ID")
    assert main([]) == 2
    assert "SLURM_JOB_ID is not set; name the file with -o FILE" in capsys.readouterr().err
    assert main(["-o", str(tmp_path / "m")]) == 0


def test_an_unwritable_path_is_one_line_and_status_1(
    job_env: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "missing" / "m"
    assert main(["-o", str(target)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"ck-machinefile: cannot write {target}: ")
    assert err.count("\n") == 1


def test_help_explains_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: ck-machinefile" in out
    for text in ("--flavor", "openmpi", "mpich", "SLURM_JOB_NODELIST", "-o FILE", "$TMPDIR"):
        assert text in out


def test_a_bad_flavor_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--flavor", "lam"])
    assert info.value.code == 2
    assert "invalid choice: 'lam'" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# It runs as a script, as jobs run it


def test_the_node_tool_runs_as_a_script(tmp_path: Path) -> None:
    env = {
        "SLURM_JOB_NODELIST": "n1",
        "SLURM_JOB_CPUS_PER_NODE": "3",
        "SLURM_JOB_ID": "5",
        "TMPDIR": str(tmp_path),
    }
    result = subprocess.run(
        [sys.executable, "-m", "clusterkit.nodetools.machinefile", "--flavor", "mpich"],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(__file__).parents[2],
    )
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()).read_text(encoding="utf-8").endswith("\nn1:3\n")
