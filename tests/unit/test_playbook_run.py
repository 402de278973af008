"""How clusterkit runs its playbooks: Mitogen's strategy where it is installed, Ansible's own
when the user asks for it."""

from __future__ import annotations

from pathlib import Path

import pytest

from clusterkit.playbook import STRATEGY_ENV, strategy_env


def test_playbooks_run_with_mitogens_linear_strategy_by_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(STRATEGY_ENV, raising=False)
    found = strategy_env()
    assert found["ANSIBLE_STRATEGY"] == "mitogen_linear"
    # the directory Ansible loads the strategy from holds it
    assert (Path(found["ANSIBLE_STRATEGY_PLUGINS"]) / "mitogen_linear.py").is_file()


def test_ansibles_own_strategy_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(STRATEGY_ENV, "linear")
    assert strategy_env() == {}
