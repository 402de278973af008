"""Missing root or system packages: one clear line naming the fix."""

from __future__ import annotations

import os

import pytest

from clusterkit.errors import PrerequisiteError
from clusterkit.providers.local import provider


def test_non_root_is_told_to_use_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(PrerequisiteError, match="needs root"):
        provider.LocalProvider.check_prerequisites()


def test_missing_programs_name_their_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    absent = {"sshd", "nsenter"}
    monkeypatch.setattr(provider, "which", lambda prog: None if prog in absent else f"/bin/{prog}")
    with pytest.raises(PrerequisiteError) as info:
        provider.LocalProvider.check_prerequisites()
    message = str(info.value)
    assert "missing system packages: openssh-server, util-linux" in message
    assert "apt-get install openssh-server util-linux" in message
    assert "\n" not in message


def test_all_present_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(provider, "which", lambda prog: f"/bin/{prog}")
    provider.LocalProvider.check_prerequisites()
