"""``proc.run``: every failure is a ``CommandError`` with argv, exit code and stderr tail."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from clusterkit import proc
from clusterkit.errors import CommandError


def test_output_is_captured_as_text() -> None:
    result = proc.run(["sh", "-c", "echo out; echo err >&2"])
    assert (result.returncode, result.stdout, result.stderr) == (0, "out\n", "err\n")


def test_input_is_passed_on_stdin() -> None:
    assert proc.run(["cat"], input="hello\n").stdout == "hello\n"


def test_arguments_are_converted_to_strings(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x", encoding="utf-8")
    assert proc.run(["ls", tmp_path]).stdout == "f\n"  # type: ignore[list-item]


def test_failure_carries_argv_exit_code_and_the_tail_of_stderr() -> None:
    argv = ["sh", "-c", "echo out; for i in 1 2 3 4 5; do echo line$i >&2; done; exit 3"]
    with pytest.raises(CommandError) as info:
        proc.run(argv)
    err = info.value
    assert err.argv == argv
    assert err.returncode == 3
    assert err.stderr == "line1\nline2\nline3\nline4\nline5\n"
    assert str(err) == f"command failed (exit 3): {' '.join(argv)}: line3 | line4 | line5"


def test_failure_without_stderr_reports_stdout() -> None:
    with pytest.raises(CommandError) as info:
        proc.run(["sh", "-c", "echo only-stdout; exit 1"])
    assert str(info.value).endswith(": only-stdout")


def test_failure_without_any_output_says_so() -> None:
    with pytest.raises(CommandError) as info:
        proc.run(["false"])
    assert str(info.value) == "command failed (exit 1): false: no output on stderr"


def test_check_false_returns_the_failed_process() -> None:
    result = proc.run(["sh", "-c", "echo e >&2; exit 4"], check=False)
    assert (result.returncode, result.stderr) == (4, "e\n")


def test_missing_program_is_exit_127() -> None:
    with pytest.raises(CommandError) as info:
        proc.run(["clusterkit-no-such-program", "arg"])
    assert info.value.returncode == 127
    assert str(info.value) == (
        "command failed (exit 127): clusterkit-no-such-program arg: "
        "clusterkit-no-such-program: not found"
    )


def test_timeout_kills_the_command_and_says_so() -> None:
    start = time.monotonic()
    with pytest.raises(CommandError) as info:
        proc.run(["sleep", "10"], timeout=0.2)
    assert time.monotonic() - start < 5
    assert info.value.returncode == -1
    assert str(info.value) == "command failed (exit -1): sleep 10: timed out after 0.2 s"


def test_a_program_that_cannot_be_executed_is_a_command_error(tmp_path: Path) -> None:
    script = tmp_path / "not-executable"
    script.write_text("#!/bin/sh\n", encoding="utf-8")
    with pytest.raises(CommandError):
        proc.run([str(script)])


def test_output_that_is_not_utf8_is_not_an_internal_error() -> None:
    result = proc.run(["printf", "\\377"])
    assert result.returncode == 0
