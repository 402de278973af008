"""Fixtures of the unit tests: a private CLUSTERKIT_HOME and golden-file checks."""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable
from pathlib import Path

import pytest

GOLDEN_DIR = Path(__file__).parent / "golden"
REFRESH_COMMAND = "make golden"

GoldenCheck = Callable[[str, str], None]


@pytest.fixture
def ck_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh ``$CLUSTERKIT_HOME`` for one test (it does not exist yet)."""
    home = tmp_path / "ckhome"
    monkeypatch.setenv("CLUSTERKIT_HOME", str(home))
    return home


def golden_checker(directory: Path) -> GoldenCheck:
    """``check(name, actual)``: compare ``actual`` with ``directory/name``.

    With ``CK_UPDATE_GOLDEN=1`` the golden file is (re)written instead; otherwise a mismatch
    fails with a unified diff and the one-line command that refreshes the golden files.
    """

    def check(name: str, actual: str) -> None:
        path = directory / name
        if os.environ.get("CK_UPDATE_GOLDEN") == "1":
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(actual, encoding="utf-8")
            return
        if not path.exists():
            pytest.fail(f"golden file {path} is missing; create it with:\n  {REFRESH_COMMAND}")
        expected = path.read_text(encoding="utf-8")
        if actual != expected:
            diff = "".join(
                difflib.unified_diff(
                    expected.splitlines(keepends=True),
                    actual.splitlines(keepends=True),
                    fromfile=f"{path} (golden)",
                    tofile=f"{name} (rendered now)",
                )
            )
            pytest.fail(
                f"{name} differs from its golden file:\n{diff}\n"
                f"If the change is intended, refresh the golden files with:\n  {REFRESH_COMMAND}",
                pytrace=False,
            )

    return check


@pytest.fixture
def golden() -> GoldenCheck:
    """Check rendered text against ``tests/unit/golden/NAME``."""
    return golden_checker(GOLDEN_DIR)


@pytest.fixture
def golden_in() -> Callable[[Path], GoldenCheck]:
    """A golden checker over another directory (to test the checker itself)."""
    return golden_checker
