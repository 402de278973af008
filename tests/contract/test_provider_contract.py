"""What every provider promises, asked the same way of each: `up` makes a ready cluster that
`status` and the cluster's ssh_config describe; `up` again changes nothing, or replaces only
what was lost; `down` leaves nothing, after a clean `up`, after `up` was killed mid-way, and
without its state. Bare clusters (`--no-configure`): Slurm's own promises are tested apart."""

from __future__ import annotations

import json
import selectors
import signal
import subprocess
import time

import pytest

from tests.contract.conftest import Backend
from tests.driver import CK

STATIC = 2


def _nodes(name: str) -> list[str]:
    return [f"{name}-head", *(f"compute-st-{i}" for i in range(1, STATIC + 1))]


def _kill_up_after(provider: Backend, name: str, steps: int) -> str:
    """Start `up` and SIGKILL it as soon as it reports ``steps`` finished steps; fail if it
    finished first (the kill must land mid-way). Its stderr until then."""
    spec = provider.spec(name, STATIC)
    child = subprocess.Popen(
        [CK, "up", "-f", str(spec), "--no-configure"],
        env=provider.ck.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stderr is not None
    sel = selectors.DefaultSelector()
    sel.register(child.stderr, selectors.EVENT_READ)
    seen = ""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and child.poll() is None:
        if sel.select(timeout=0.005):
            seen += child.stderr.readline()
        if seen.count("✓ ") >= steps:
            child.send_signal(signal.SIGKILL)
            break
    child.wait(timeout=10)
    assert child.returncode == -signal.SIGKILL, f"`up` was not killed mid-way:\n{seen}"
    return seen


def test_up_makes_a_ready_cluster_that_status_and_ssh_config_describe(provider: Backend) -> None:
    name = "ct-up"
    provider.up(name, STATIC)
    status = provider.ck.status(name)
    assert (status["name"], status["provider"], status["status"]) == (name, provider.kind, "ready")
    nodes = {n["name"]: n for n in status["nodes"]}
    assert sorted(nodes) == sorted(_nodes(name))
    for node in nodes.values():
        assert node["state"] == "running" and node["instance_id"] and node["address"], node
    listed = json.loads(provider.ck.run("list", "-o", "json").stdout)
    assert [(c["name"], c["provider"]) for c in listed] == [(name, provider.kind)]

    # OpenSSH itself reads the cluster's ssh_config (`ssh -G` resolves without dialling):
    # every node by its name, checked strictly against the cluster's own known_hosts.
    ssh_dir = provider.ck.cluster_dir(name) / "ssh"
    known_hosts = (ssh_dir / "known_hosts").read_text()
    for node in _nodes(name):
        resolved = subprocess.run(
            ["ssh", "-G", "-F", str(ssh_dir / "ssh_config"), node],
            capture_output=True, text=True, check=True, timeout=10,
        ).stdout  # fmt: skip
        options = dict(line.split(" ", 1) for line in resolved.splitlines() if " " in line)
        assert options["hostname"] in {nodes[node]["address"], nodes[node].get("public_address")}
        assert options["stricthostkeychecking"] == "true"
        assert options["userknownhostsfile"] == str(ssh_dir / "known_hosts")
        host_key = (provider.ck.cluster_dir(name) / "keys" / "hosts" / f"{node}.pub").read_text()
        listed_keys = [line for line in known_hosts.splitlines() if node in line.split(" ")[0]]
        assert listed_keys and all(host_key.split()[1] in line for line in listed_keys), node


def test_up_again_changes_nothing(provider: Backend) -> None:
    name = "ct-again"
    provider.up(name, STATIC)
    before = {node: provider.instance(name, node) for node in _nodes(name)}
    held = sorted(provider.residue(name))
    provider.up(name, STATIC)
    assert {node: provider.instance(name, node) for node in _nodes(name)} == before
    assert sorted(provider.residue(name)) == held  # nothing made twice, nothing dropped
    assert provider.ck.status(name)["status"] == "ready"


def test_up_again_replaces_a_lost_node_and_keeps_the_rest(provider: Backend) -> None:
    name = "ct-lost"
    provider.up(name, STATIC)
    before = {node: provider.instance(name, node) for node in _nodes(name)}
    provider.lose(name, "compute-st-1")
    states = {n["name"]: n["state"] for n in provider.ck.status(name)["nodes"]}
    assert states["compute-st-1"] != "running" and states["compute-st-2"] == "running"
    provider.up(name, STATIC)
    after = {node: provider.instance(name, node) for node in _nodes(name)}
    assert after["compute-st-1"] != before["compute-st-1"]
    assert {k: v for k, v in after.items() if k != "compute-st-1"} == {
        k: v for k, v in before.items() if k != "compute-st-1"
    }
    status = provider.ck.status(name)
    assert [n["state"] for n in status["nodes"]] == ["running"] * (STATIC + 1)


def test_down_leaves_nothing(provider: Backend) -> None:
    name = "ct-down"
    provider.up(name, STATIC)
    live = provider.residue(name)
    assert live and f"dir {provider.ck.cluster_dir(name)}" in live  # the probe sees a cluster
    down = provider.ck.down(name)
    assert "removed" in down.stderr
    assert provider.residue(name) == []
    again = provider.ck.down(name, check=False)
    assert again.rc == 1 and f"no cluster named {name!r}" in again.stderr


@pytest.mark.parametrize("steps", [1, 2], ids=["after-network", "mid-nodes"])
def test_down_after_up_was_killed(provider: Backend, steps: int) -> None:
    name = f"ct-kill{steps}"
    seen = _kill_up_after(provider, name, steps)
    assert provider.residue(name), f"the kill left nothing to clean up:\n{seen}"
    provider.ck.down(name)
    assert provider.residue(name) == []


def test_up_after_a_killed_up_finishes_the_cluster(provider: Backend) -> None:
    name = "ct-resume"
    _kill_up_after(provider, name, 2)
    provider.up(name, STATIC)
    status = provider.ck.status(name)
    assert status["status"] == "ready"
    assert [n["state"] for n in status["nodes"]] == ["running"] * (STATIC + 1)
    provider.ck.down(name)
    assert provider.residue(name) == []


def test_down_without_state_finds_everything_by_name(provider: Backend) -> None:
    name = "ct-nostate"
    provider.up(name, STATIC)
    (provider.ck.cluster_dir(name) / "state.json").unlink()
    provider.ck.down(name)
    assert provider.residue(name) == []


def test_a_corrupt_state_is_named_and_down_still_cleans_up(provider: Backend) -> None:
    name = "ct-corrupt"
    provider.up(name, STATIC)
    (provider.ck.cluster_dir(name) / "state.json").write_text("{not json")
    status = provider.ck.run("status", name, check=False)
    assert status.rc == 1 and "unreadable state" in status.stderr
    provider.ck.down(name)
    assert provider.residue(name) == []


def test_down_all_removes_every_cluster_of_the_home(provider: Backend) -> None:
    for name in ("ct-all-a", "ct-all-b"):
        provider.up(name, 1)
    provider.ck.run("down", "--all", timeout=300)
    assert provider.residue("ct-all-a") == provider.residue("ct-all-b") == []
    assert json.loads(provider.ck.run("list", "-o", "json").stdout) == []
