"""Rendered SSH and hosts files compared with committed golden files.

Refresh them after an intended template change with:
    CK_UPDATE_GOLDEN=1 .venv/bin/pytest tests/unit/test_golden.py
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import jinja2
import pytest

from clusterkit.render import render
from clusterkit.trust import ClusterTrust, TrustedNode

GoldenCheck = Callable[[str, str], None]
REFRESH = "CK_UPDATE_GOLDEN=1 .venv/bin/pytest tests/unit/test_golden.py"

NODES = [
    TrustedNode("demo-head", "10.250.7.2", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHeadHeadHead"),
    TrustedNode("compute-st-1", "10.250.7.3", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIStatic001"),
    TrustedNode("compute-dy-1", "10.250.7.4", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDynamic01"),
]


def written_trust(tmp_path: Path) -> ClusterTrust:
    trust = ClusterTrust("demo", tmp_path / "clusters" / "demo")
    trust.write(NODES)
    return trust


def test_ssh_config(tmp_path: Path, golden: GoldenCheck) -> None:
    trust = written_trust(tmp_path)
    text = trust.ssh_config.read_text(encoding="utf-8")
    assert str(tmp_path) in text
    golden("ssh_config.txt", text.replace(str(tmp_path), "<TMP>"))


def test_ssh_config_for_another_user(tmp_path: Path) -> None:
    trust = ClusterTrust("demo", tmp_path)
    trust.write(NODES[:1], user="ckuser")
    text = trust.ssh_config.read_text(encoding="utf-8")
    assert "\n    User ckuser\n" in text
    assert "compute-st-1" not in text


def test_known_hosts(tmp_path: Path, golden: GoldenCheck) -> None:
    trust = written_trust(tmp_path)
    written = trust.known_hosts.read_text(encoding="utf-8")
    assert written == render("ssh/known_hosts.j2", nodes=NODES)
    golden("known_hosts.txt", written)


def test_sshd_config(golden: GoldenCheck) -> None:
    text = render("ssh/sshd_config.j2", node="compute-st-1", cluster="demo", address="10.250.7.3")
    golden("sshd_config.txt", text)


def test_node_ssh_config(golden: GoldenCheck) -> None:
    golden("node_ssh_config.txt", render("ssh/node_ssh_config.j2", cluster="demo"))


def test_hosts(golden: GoldenCheck) -> None:
    golden("hosts.txt", render("hosts.j2", cluster="demo", nodes=NODES))


# ---------------------------------------------------------------------------------------------
# What the files must always say, whatever the golden files hold


def test_host_key_checking_is_never_turned_off(tmp_path: Path) -> None:
    texts = {
        "ssh_config": written_trust(tmp_path).ssh_config.read_text(encoding="utf-8"),
        "node_ssh_config": render("ssh/node_ssh_config.j2", cluster="demo"),
    }
    for name, text in texts.items():
        settings = re.findall(r"^\s*StrictHostKeyChecking\s+(\S+)", text, re.MULTILINE | re.I)
        assert settings == ["yes"], f"{name}: StrictHostKeyChecking {settings}"
        assert "StrictHostKeyChecking no" not in text
        assert not re.search(r"UserKnownHostsFile\s+/dev/null", text), name


def test_ssh_config_paths_are_quoted(tmp_path: Path) -> None:
    trust = ClusterTrust("demo", tmp_path / "with space")
    trust.write(NODES)
    text = trust.ssh_config.read_text(encoding="utf-8")
    assert f'IdentityFile "{trust.user_key}"' in text
    assert f'UserKnownHostsFile "{trust.known_hosts}"' in text


def test_sshd_allows_no_passwords() -> None:
    text = render("ssh/sshd_config.j2", node="n", cluster="c", address="10.0.0.2")
    lines = set(text.splitlines())
    assert {"PasswordAuthentication no", "KbdInteractiveAuthentication no"} <= lines
    assert "PermitRootLogin prohibit-password" in lines
    assert "ListenAddress 10.0.0.2" in lines


def test_ssh_argv(tmp_path: Path) -> None:
    trust = ClusterTrust("demo", tmp_path)
    config = str(trust.ssh_config)
    assert trust.ssh_argv("demo-head") == [
        "ssh", "-F", config, "-l", "root", "-o", "BatchMode=yes", "demo-head",
    ]  # fmt: skip
    assert trust.ssh_argv("n1", ["ls", "-l"], batch=False, user="ckuser") == [
        "ssh",
        "-F",
        config,
        "-l",
        "ckuser",
        "n1",
        "--",
        "ls",
        "-l",
    ]


# ---------------------------------------------------------------------------------------------
# StrictUndefined


@pytest.mark.parametrize(
    ("template", "values"),
    [
        ("hosts.j2", {"nodes": NODES}),  # no cluster
        ("ssh/known_hosts.j2", {"nodes": [{"name": "a", "address": "10.0.0.2"}]}),  # no host_key
        ("ssh/sshd_config.j2", {"node": "n", "cluster": "c"}),  # no address
        ("ssh/ssh_config.j2", {}),
    ],
)
def test_a_missing_value_raises_instead_of_rendering_empty(
    template: str, values: dict[str, object]
) -> None:
    with pytest.raises(jinja2.UndefinedError):
        render(template, **values)


# ---------------------------------------------------------------------------------------------
# The golden checker itself


def test_golden_mismatch_shows_a_diff_and_the_refresh_command(
    tmp_path: Path, golden_in: Callable[[Path], GoldenCheck], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CK_UPDATE_GOLDEN", raising=False)
    (tmp_path / "f.txt").write_text("a\nb\nc\n", encoding="utf-8")
    check = golden_in(tmp_path)
    check("f.txt", "a\nb\nc\n")  # equal: passes
    with pytest.raises(pytest.fail.Exception) as info:
        check("f.txt", "a\nB\nc\n")
    message = str(info.value)
    assert "\n-b\n+B\n" in message
    assert "--- " in message
    assert "+++ " in message
    assert f"\n  {REFRESH}" in message


def test_golden_missing_file_shows_the_refresh_command(
    tmp_path: Path, golden_in: Callable[[Path], GoldenCheck], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CK_UPDATE_GOLDEN", raising=False)
    with pytest.raises(pytest.fail.Exception) as info:
        golden_in(tmp_path)("new.txt", "x\n")
    assert REFRESH in str(info.value)


def test_golden_update_mode_rewrites_the_file(
    tmp_path: Path, golden_in: Callable[[Path], GoldenCheck], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "f.txt").write_text("old\n", encoding="utf-8")
    monkeypatch.setenv("CK_UPDATE_GOLDEN", "1")
    golden_in(tmp_path)("f.txt", "new\n")
    golden_in(tmp_path / "sub")("g.txt", "made\n")
    assert (tmp_path / "f.txt").read_text(encoding="utf-8") == "new\n"
    assert (tmp_path / "sub" / "g.txt").read_text(encoding="utf-8") == "made\n"
