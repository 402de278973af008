"""The ``clusterkit`` command, run in-process through ``clusterkit.cli.main``.

Nothing here builds or destroys a cluster: every command runs against an empty
``$CLUSTERKIT_HOME`` in a temporary directory.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest
from rich.console import Console

from clusterkit import cli, clusterinfo
from clusterkit.cli import app as cli_app
from clusterkit.cli import cluster as cluster_commands
from clusterkit.cli import console
from clusterkit.errors import PrerequisiteError, StateError
from clusterkit.providers import provider_class
from clusterkit.spec import ClusterSpec, load_spec

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "local.yaml"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture(autouse=True)
def wide_consoles(monkeypatch: pytest.MonkeyPatch) -> None:
    """Consoles as the CLI makes them, but wide enough that no long tmp path wraps."""
    monkeypatch.setattr(console, "out", Console(highlight=False, width=1000))
    monkeypatch.setattr(console, "err", Console(stderr=True, highlight=False, width=1000))


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run ``clusterkit ARGV`` in-process: (exit code, stdout, stderr), colours removed."""
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    captured = capsys.readouterr()
    code = info.value.code
    assert isinstance(code, int), f"exit code {code!r}"
    return code, ANSI.sub("", captured.out), ANSI.sub("", captured.err)


# ---------------------------------------------------------------------------------------------
# validate


def test_validate_a_good_file(ck_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["validate", str(EXAMPLE)], capsys)
    assert code == 0, err
    assert out == (
        f"{EXAMPLE}: valid: cluster ck on local, head + 3 static + 0 dynamic compute node(s) "
        "in 1 group(s)\n"
    )
    assert err == ""


def test_validate_a_bad_file_prints_every_problem_on_its_own_line(
    ck_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "name: x\nhead: {cpus: 0}\ngroups:\n  - {name: a, min: 3, max: 1}\n  - {name: b, cpu: 2}\n",
        encoding="utf-8",
    )
    code, out, err = run(["validate", str(path)], capsys)
    assert code == 1
    assert out == ""
    assert err.splitlines() == [
        f"error: {path}: 3 problems:",
        f"  {path}: head.cpus: Input should be greater than or equal to 1",
        f"  {path}: groups[0]: max (1) must be >= min (3)",
        f"  {path}: groups[1].cpu: unknown key; valid keys: name, instance_types, capacity, "
        "min, max, cpus, memory_mb, gpus, features, weight",
    ]


def test_validate_a_file_with_one_problem_prints_one_line(
    ck_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nprovider: aws\n", encoding="utf-8")
    code, _, err = run(["validate", str(path)], capsys)
    assert code == 1
    assert err.splitlines() == [
        f"error: {path}: aws.admin_cidr: required when provider is aws (who may SSH to the head)"
    ]


def test_validate_a_missing_file(
    ck_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "nope.yaml"
    code, _, err = run(["validate", str(path)], capsys)
    assert code == 1
    assert err.splitlines() == [
        f"error: {path}: file not found (create one with `clusterkit init`)"
    ]


def test_problems_are_printed_verbatim_not_as_markup(
    ck_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "odd.yaml"
    path.write_text('name: x\n"[/]": 1\n', encoding="utf-8")
    code, _, err = run(["validate", str(path)], capsys)
    assert code == 1
    assert err.startswith(f"error: {path}: ['[/]']: unknown key; valid keys: name, ")


# ---------------------------------------------------------------------------------------------
# init


def test_init_writes_a_spec_that_validates(
    ck_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "cluster.yaml"
    code, out, err = run(["init", str(path)], capsys)
    assert code == 0, err
    assert out == f"wrote {path}; next: clusterkit validate {path} && clusterkit up -f {path}\n"
    assert load_spec(path) == ClusterSpec(name="demo")
    code, out, _ = run(["validate", str(path)], capsys)
    assert code == 0
    assert out.startswith(f"{path}: valid: cluster demo on local, head + 2 static + 2 dynamic")


def test_init_with_a_name(
    ck_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "c.yaml"
    code, _, err = run(["init", str(path), "--name", "lab-2"], capsys)
    assert code == 0, err
    assert load_spec(path).name == "lab-2"


def test_init_refuses_to_overwrite_without_force(
    ck_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text("mine\n", encoding="utf-8")
    code, _, err = run(["init", str(path)], capsys)
    assert code == 1
    assert err.splitlines() == [f"error: {path}: exists already; pass --force to overwrite it"]
    assert path.read_text(encoding="utf-8") == "mine\n"
    code, _, err = run(["init", str(path), "--force"], capsys)
    assert code == 0, err
    assert load_spec(path) == ClusterSpec(name="demo")


PATTERN = "must be lowercase letters, digits and '-', starting with a letter"


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("Bad_Name", f"name: {PATTERN}"),
        ("9lives", f"name: {PATTERN}"),
        ("a" * 25, "name: String should have at most 24 characters"),
        ("x\nprovider: aws", "not valid YAML: line 10, column 1: found duplicate key 'provider'"),
    ],
)
def test_init_rejects_a_bad_name_without_writing(
    ck_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, problem: str
) -> None:
    path = tmp_path / "cluster.yaml"
    code, _, err = run(["init", str(path), "--name", name], capsys)
    assert code == 1
    assert err == f"error: --name {name}: {problem}\n"
    assert not path.exists()


# ---------------------------------------------------------------------------------------------
# status, down, list, ssh on an empty home


def test_status_of_a_missing_cluster(ck_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["status", "nosuch"], capsys)
    assert code == 1
    assert out == ""
    assert err.splitlines() == ["error: no cluster named 'nosuch' (see `clusterkit list`)"]


def test_down_of_a_missing_cluster_needs_no_root(
    ck_home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_root() -> None:
        raise PrerequisiteError("the local provider needs root")

    # `down` of nothing must fail before it checks for root (this also guarantees that the
    # test can never tear down a real cluster).
    monkeypatch.setattr(provider_class("local"), "check_prerequisites", no_root)
    code, out, err = run(["down", "nosuch"], capsys)
    assert code == 1
    assert out == ""
    assert err.splitlines() == ["error: no cluster named 'nosuch' (see `clusterkit list`)"]


def test_down_needs_a_name_or_all(ck_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["down"], capsys)
    assert code == 2
    assert "give a cluster NAME or --all (not both)" in err


def test_a_bad_cluster_name_is_one_line(ck_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["status", "Not/A/Name"], capsys)
    assert code == 1
    assert err.splitlines() == ["error: 'Not/A/Name' is not a cluster name (see `clusterkit list`)"]


def test_list_json_on_an_empty_home(ck_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["list", "-o", "json"], capsys)
    assert code == 0, err
    assert json.loads(out) == []
    assert out.strip() == "[]"


def test_list_table_on_an_empty_home(ck_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["list"], capsys)
    assert code == 0, err
    assert out.splitlines()[0] == "no clusters"


def test_ssh_passes_the_remote_command_through(
    ck_home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, str | None, list[str] | None]] = []

    def fake_ssh_argv(
        name: str, node: str | None, command: list[str] | None, user: str = "root"
    ) -> list[str]:
        calls.append((name, node, command))
        raise StateError("stopped before exec")

    monkeypatch.setattr(clusterinfo, "ssh_argv", fake_ssh_argv)
    code, _, err = run(["ssh", "demo", "compute-st-1", "--", "ls", "-l", "--", "x y"], capsys)
    assert code == 1
    assert err.splitlines() == ["error: stopped before exec"]
    code, _, _ = run(["ssh", "demo"], capsys)
    assert code == 1
    assert calls == [("demo", "compute-st-1", ["ls", "-l", "--", "x y"]), ("demo", None, None)]


def test_ssh_to_a_missing_cluster(ck_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["ssh", "nosuch", "--", "hostname"], capsys)
    assert code == 1
    assert err.splitlines() == ["error: no cluster named 'nosuch' (see `clusterkit list`)"]


# ---------------------------------------------------------------------------------------------
# _split_remote


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["ssh", "demo"], (["ssh", "demo"], None)),
        (["ssh", "demo", "n1", "--", "ls", "-l"], (["ssh", "demo", "n1"], ["ls", "-l"])),
        (["ssh", "demo", "--", "a", "--", "b"], (["ssh", "demo"], ["a", "--", "b"])),
        (["ssh", "demo", "--"], (["ssh", "demo"], [])),
        (["validate", "--", "f.yaml"], (["validate", "--", "f.yaml"], None)),
        (["validate", "--", "ssh"], (["validate", "--", "ssh"], None)),
        ([], ([], None)),
    ],
)
def test_split_remote(args: list[str], expected: tuple[list[str], list[str] | None]) -> None:
    assert cli_app._split_remote(args) == expected


# ---------------------------------------------------------------------------------------------
# Bugs: exit 70, one line, traceback in a file


def test_an_unexpected_exception_is_exit_70_with_a_traceback_file(
    ck_home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(path: object) -> ClusterSpec:
        raise RuntimeError("boom")

    monkeypatch.setattr(cluster_commands, "load_spec", broken)
    code, out, err = run(["validate", str(EXAMPLE)], capsys)
    assert code == cli.EXIT_INTERNAL == 70
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1
    match = re.fullmatch(
        r"error: internal error: RuntimeError: boom \(traceback in (.+)\)", lines[0]
    )
    assert match, lines[0]
    logs = list((ck_home / "logs").iterdir())
    assert [str(p) for p in logs] == [match.group(1)]
    assert logs[0].name.startswith("crash-")
    traceback = logs[0].read_text(encoding="utf-8")
    assert traceback.startswith("Traceback (most recent call last):")
    assert traceback.rstrip().endswith("RuntimeError: boom")


# ---------------------------------------------------------------------------------------------
# Help


COMMANDS = sorted(cli_app.COMMANDS)


def test_the_documented_commands_exist() -> None:
    assert {"up", "down", "list", "status", "ssh", "validate", "init"} <= set(COMMANDS)


def test_each_lazy_command_is_the_command_of_its_name() -> None:
    ctx = click.Context(cli.cli)
    for name in COMMANDS:
        command = cli.cli.get_command(ctx, name)
        assert command is not None and command.name == name


def test_a_command_imports_only_its_own_module() -> None:
    # `clusterkit pack status` must not pay for boto3, the AWS provider or the cost ledger
    code = (
        "import sys; from clusterkit.cli import app; import click; "
        "app.cli.get_command(click.Context(app.cli), 'pack'); "
        "print(' '.join(m for m in ('boto3', 'clusterkit.providers.aws.session', "
        "'clusterkit.ledger', 'clusterkit.cli.cluster') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)  # fmt: skip
    assert done.stdout.strip() == ""


@pytest.mark.parametrize("command", COMMANDS)
def test_help_of_each_command(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run([command, "--help"], capsys)
    assert code == 0
    assert out.startswith(f"Usage: clusterkit {command} ")


def test_top_level_help_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["--help"], capsys)
    assert code == 0
    assert "Ephemeral Slurm clusters on demand." in out
    code, out, _ = run(["--version"], capsys)
    assert code == 0
    assert out.startswith("clusterkit, version ")


# ---------------------------------------------------------------------------------------------
# The installed entry point


def test_the_installed_command(ck_home: Path, tmp_path: Path) -> None:
    command = str(Path(sys.executable).with_name("clusterkit"))
    env = {**os.environ, "COLUMNS": "1000"}
    good = subprocess.run(
        [command, "validate", str(EXAMPLE)], capture_output=True, text=True, check=False, env=env
    )
    assert good.returncode == 0, good.stderr
    assert ANSI.sub("", good.stdout).startswith(f"{EXAMPLE}: valid: cluster ck on local, ")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nnodes: 3\n", encoding="utf-8")
    failed = subprocess.run(
        [command, "validate", str(bad)], capture_output=True, text=True, check=False, env=env
    )
    assert failed.returncode == 1
    assert ANSI.sub("", failed.stderr).startswith(f"error: {bad}: nodes: unknown key; valid keys:")


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("c7i.large", "expected TYPE[:KIND]=N"),
        ("c7i.large=lots", "expected TYPE[:KIND]=N"),
        ("c7i.large:cheap=2", "KIND is spot or on-demand"),
    ],
)
def test_cloud_capacity_names_the_bad_value(
    ck_home: Path, capsys: pytest.CaptureFixture[str], value: str, problem: str
) -> None:
    code, _, err = run(["cloud", "demo", "--capacity", value], capsys)
    assert code == 2 and problem in err and value in err


def test_cloud_of_an_unknown_cluster(ck_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["cloud", "nosuch"], capsys)
    assert code == 1 and "nosuch" in err


# ---------------------------------------------------------------------------------------------
# interrupt


def write_cluster(name: str, provider: str = "local") -> None:
    """A state as `up` leaves it, without any node or service (nothing answers)."""
    from clusterkit.spec import parse_spec
    from clusterkit.state import ClusterState

    spec = parse_spec({"name": name, "groups": [{"name": "compute", "min": 1, "max": 2}]})
    ClusterState(name=name, provider=provider, spec=spec.model_dump(mode="json")).save()


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["--rebalance", "--action", "stop"], "--rebalance takes neither --action nor --in"),
        (["--rebalance", "--in", "5"], "--rebalance takes neither --action nor --in"),
        (["--in", "-1"], "--in"),
        (["--in", "soon"], "--in"),
        (["--action", "reboot"], "--action"),
    ],
)
def test_interrupt_refuses_bad_arguments(
    ck_home: Path, capsys: pytest.CaptureFixture[str], args: list[str], problem: str
) -> None:
    code, _, err = run(["interrupt", "demo", "compute-st-1", *args], capsys)
    assert code == 2 and problem in err


def test_interrupt_needs_a_node(ck_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["interrupt", "demo"], capsys)
    assert code == 2 and "NODE" in err


@pytest.mark.parametrize(
    ("provider", "node", "message"),
    [
        ("local", "compute-st-9", "cluster 'demo' has no compute node 'compute-st-9'; "
         "its computes: compute-st-1, compute-dy-1"),
        ("local", "demo-head", "demo-head is the head of demo: only compute nodes"),
        ("aws", "compute-st-1", "cluster 'demo' is on aws: only local clusters are interrupted"),
        ("local", "compute-st-1", "the cloud service of demo did not answer"),
    ],
)  # fmt: skip
def test_interrupt_errors_are_one_line(
    ck_home: Path, capsys: pytest.CaptureFixture[str], provider: str, node: str, message: str
) -> None:
    write_cluster("demo", provider)
    code, out, err = run(["interrupt", "demo", node], capsys)
    assert code == 1 and out == ""
    assert err.startswith(f"error: {message}") and err.count("\n") == 1


def test_interrupt_of_an_unknown_cluster(ck_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["interrupt", "nosuch", "compute-st-1"], capsys)
    assert code == 1 and "nosuch" in err


class FakeCloud:
    """The cloud service's client: records calls, answers as the service does."""

    def __init__(self) -> None:
        self.calls: list[dict[str, object]] = []

    def call(self, action: str, **params: object) -> dict[str, object]:
        self.calls.append({"action": action, **params})
        return {
            "node": params["node"], "instance_id": "i-0abc", "action": params["instance_action"],
            "time": "2026-11-22T12:00:00Z",
        }  # fmt: skip


@pytest.fixture
def fake_cloud(monkeypatch: pytest.MonkeyPatch) -> FakeCloud:
    from clusterkit.providers.local import cloud

    fake = FakeCloud()
    monkeypatch.setattr(cloud, "client", lambda name: fake)
    return fake


@pytest.mark.parametrize(
    "case",
    [
        ([], {"instance_action": "terminate", "in_seconds": 10.0},
         "compute-st-1 (i-0abc): spot notice 'terminate' sent; the instance ends at "
         "2026-11-22T12:00:00Z (in 10 s)"),
        (["--action", "hibernate", "--in", "2.5"], {"instance_action": "hibernate",
         "in_seconds": 2.5}, "spot notice 'hibernate' sent; the instance ends at "
         "2026-11-22T12:00:00Z (in 2.5 s)"),
        (["--rebalance"], {"instance_action": "rebalance"},
         "compute-st-1 (i-0abc): rebalance recommendation sent at 2026-11-22T12:00:00Z"),
    ],
)  # fmt: skip
def test_interrupt_sends_and_prints_the_instance_and_time(
    ck_home: Path, capsys: pytest.CaptureFixture[str], fake_cloud: FakeCloud,
    case: tuple[list[str], dict[str, object], str],
) -> None:  # fmt: skip
    args, sent, printed = case  # arguments, what the service gets, what is printed
    write_cluster("demo")
    code, out, err = run(["interrupt", "demo", "compute-st-1", *args], capsys)
    assert code == 0, err
    [call] = fake_cloud.calls
    assert call["action"] == "interrupt" and call["node"] == "compute-st-1"
    assert sent.items() <= call.items()
    assert printed in out


def test_interrupt_json(
    ck_home: Path, capsys: pytest.CaptureFixture[str], fake_cloud: FakeCloud
) -> None:
    write_cluster("demo")
    code, out, _ = run(["interrupt", "demo", "compute-dy-1", "--in", "3", "-o", "json"], capsys)
    assert code == 0
    assert json.loads(out) == {
        "node": "compute-dy-1", "instance_id": "i-0abc", "action": "terminate",
        "time": "2026-11-22T12:00:00Z", "in_seconds": 3.0,
    }  # fmt: skip


def test_interrupt_help_teaches(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["interrupt", "--help"], capsys)
    assert code == 0
    for words in ("spot/instance-action", "169.254.169.254", "processes are killed",
                  "events/recommendations/rebalance", "local.spot_notice_seconds"):  # fmt: skip
        assert words in " ".join(out.split()), words
