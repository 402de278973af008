"""Rendered SSH and hosts files compared with committed golden files.

Refresh them after an intended template change with:
    make golden
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import jinja2
import pytest

from clusterkit.render import render
from clusterkit.trust import ClusterTrust, TrustedNode, ssh_hosts

GoldenCheck = Callable[[str, str], None]
REFRESH = "make golden"

NODES = [
    TrustedNode("demo-head", "10.250.7.2", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHeadHeadHead"),
    TrustedNode("compute-st-1", "10.250.7.3", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIStatic001"),
    TrustedNode("compute-dy-1", "10.250.7.4", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDynamic01"),
]

# On aws: the head has a public address; a dynamic node's address is not known before launch.
AWS_NODES = [
    TrustedNode("demo-head", "10.42.0.10", NODES[0].host_key, public_address="198.51.100.7"),
    TrustedNode("compute-st-1", "10.42.5.33", NODES[1].host_key),
    TrustedNode("compute-dy-1", None, NODES[2].host_key),
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


def test_ssh_config_aws(tmp_path: Path, golden: GoldenCheck) -> None:
    trust = ClusterTrust("demo", tmp_path / "clusters" / "demo")
    trust.write(AWS_NODES)
    text = trust.ssh_config.read_text(encoding="utf-8")
    golden("ssh_config.aws.txt", text.replace(str(tmp_path), "<TMP>"))
    golden("known_hosts.aws.txt", trust.known_hosts.read_text(encoding="utf-8"))


def _ssh_g(trust: ClusterTrust, node: str) -> dict[str, str]:
    """What the real ssh client makes of the config for ``node`` (``ssh -G``: no network)."""
    out = subprocess.run(
        ["ssh", "-G", "-F", str(trust.ssh_config), node],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)


def test_ssh_reads_the_aws_routes(tmp_path: Path) -> None:
    trust = ClusterTrust("demo", tmp_path / "with space")
    trust.write(AWS_NODES)
    config = str(trust.ssh_config)
    head = _ssh_g(trust, "demo-head")
    assert head["hostname"] == "198.51.100.7"  # dialled at its public address
    assert head["hostkeyalias"] == "demo-head"  # and checked under its name
    assert "proxycommand" not in head
    assert head["stricthostkeychecking"] == "true"
    static = _ssh_g(trust, "compute-st-1")
    assert static["hostname"] == "10.42.5.33"  # its private address, from the head
    assert static["hostkeyalias"] == "compute-st-1"
    # Through the head, with this very config; run by a shell, the path is one word.
    assert static["proxycommand"] == f"ssh -F '{config}' -o BatchMode=yes -W %h:%p demo-head"
    dynamic = _ssh_g(trust, "compute-dy-1")  # no address yet: the head resolves its name
    assert dynamic["hostname"] == "compute-dy-1"
    assert dynamic["proxycommand"] == static["proxycommand"]
    assert dynamic["hostkeyalias"] == "compute-dy-1"


def test_without_a_public_address_every_node_is_dialled_directly(tmp_path: Path) -> None:
    config = tmp_path / "ssh_config"
    assert [(h.name, h.host_name, h.proxy_command) for h in ssh_hosts(NODES, config)] == [
        (n.name, n.address, None) for n in NODES
    ]
    trust = written_trust(tmp_path)
    for node in NODES:
        resolved = _ssh_g(trust, node.name)
        assert resolved["hostname"] == node.address
        assert resolved["hostkeyalias"] == node.name
        assert "proxycommand" not in resolved


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
    aws = ClusterTrust("demo", tmp_path / "aws")
    aws.write(AWS_NODES)
    texts = {
        "ssh_config": written_trust(tmp_path).ssh_config.read_text(encoding="utf-8"),
        "ssh_config (aws)": aws.ssh_config.read_text(encoding="utf-8"),
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


def test_reused_sessions_share_a_connection_unless_its_socket_path_is_too_long(
    tmp_path: Path,
) -> None:
    short = Path("/root/.clusterkit/clusters/demo")  # the default home's (nothing is made)
    trust = ClusterTrust("demo", short)
    argv = trust.ssh_argv("demo-head", ["true"], reuse=True)
    mux = short / "ssh" / "mux-%C"
    assert argv[7:11] == ["-o", "ControlMaster=auto", "-o", f"ControlPath={mux}"]
    assert "ControlMaster=auto" not in trust.ssh_argv("demo-head", ["true"])
    deep = ClusterTrust("demo", tmp_path / ("d" * 40))
    assert "ControlMaster=auto" not in deep.ssh_argv("demo-head", ["true"], reuse=True)
    # The master binds "<path>.<16 random>" first: a home whose socket would just fit by %C's
    # 40 digits alone (as pytest's did, and ssh refused) must not share.
    state = Path("/tmp/pytest-of-root/pytest-142/ckhome7/clusters/pkit")
    assert len(str(state / "ssh" / "mux-")) + 40 <= 107 < len(str(state / "ssh" / "mux-")) + 57
    assert "ControlMaster=auto" not in ClusterTrust("pkit", state).ssh_argv("pkit-head", reuse=True)
    fits = Path("/" + "f" * (107 - 57 - len("/ssh/mux-") - 1))
    assert len(str(fits / "ssh" / "mux-")) + 57 == 107
    assert "ControlMaster=auto" in ClusterTrust("f", fits).ssh_argv("f-head", reuse=True)
