"""Where a local cluster's files may live, and which home owns a cluster name.

Nodes see the host's whole file system (the host is the login node) except their private
directories; root's logins on a node start in a home of the node's own."""

from __future__ import annotations

from pathlib import Path

import pytest

from clusterkit.errors import PrerequisiteError, SpecError, StateError
from clusterkit.plan import cluster_users
from clusterkit.providers.local import net, node, owners, provider
from clusterkit.spec import parse_spec


def test_root_logs_in_to_a_private_home_and_sees_the_hosts_root() -> None:
    files = provider.account_files(())
    root = next(line for line in files["passwd"].splitlines() if line.startswith("root:"))
    assert root.split(":")[5] == node.ROOT_HOME == "/var/lib/clusterkit/root"
    assert "/root" not in node.covered_paths()  # a venv or script under /root runs in jobs
    assert any(Path(node.ROOT_HOME).is_relative_to(p) for p in node.covered_paths())


def test_cluster_users_keep_their_homes() -> None:
    spec = parse_spec({"name": "demo"})
    files = provider.account_files(tuple(cluster_users(spec)))
    line = next(x for x in files["passwd"].splitlines() if x.startswith("ckuser:"))
    assert line.split(":")[5] == "/shared/home/ckuser"


@pytest.mark.parametrize("home", ["/var/lib/clusterkit/h", "/etc/slurm", "/var/spool/slurmd/x"])
def test_a_home_under_a_nodes_private_directory_is_refused(
    home: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLUSTERKIT_HOME", home)
    with pytest.raises(PrerequisiteError) as info:
        provider.LocalProvider.check_spec(parse_spec({"name": "demo"}), configure=True)
    assert f"CLUSTERKIT_HOME ({home}) lies under" in str(info.value)


def test_a_shared_mount_point_over_the_home_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLUSTERKIT_HOME", "/root/.clusterkit")
    spec = parse_spec({"name": "demo", "shared_storage": {"mount_point": "/root"}})
    with pytest.raises(SpecError, match=r"shared_storage.mount_point: /root would cover"):
        provider.LocalProvider.check_spec(spec, configure=True)


@pytest.mark.parametrize("home", ["/root/.clusterkit", "/tmp/a b/ck", "/srv/shared-not"])
def test_ordinary_homes_pass(home: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLUSTERKIT_HOME", home)
    provider.LocalProvider.check_spec(parse_spec({"name": "demo"}), configure=True)


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(owners, "OWNERS_DIR", tmp_path / "owners")
    monkeypatch.setattr(net, "cluster_netns", lambda name: [])
    return tmp_path


def _state_dir(root: Path, home: str, name: str = "demo") -> Path:
    path = root / home / "clusters" / name
    path.mkdir(parents=True)
    (path / "state.json").write_text("{}")
    return path


def test_a_name_live_in_another_home_is_refused_naming_that_home(registry: Path) -> None:
    first, second = _state_dir(registry, "one"), registry / "two" / "clusters" / "demo"
    owners.claim("demo", first)
    with pytest.raises(StateError) as info:
        owners.check_owner("demo", second, creating=True)
    message = str(info.value)
    assert f"live on this machine from CLUSTERKIT_HOME={registry / 'one'}" in message
    assert f"CLUSTERKIT_HOME={registry / 'one'} clusterkit down demo" in message
    with pytest.raises(StateError):  # nor may the other home's down remove it
        owners.check_owner("demo", second, creating=False)
    owners.check_owner("demo", first, creating=True)  # its own home goes on


def test_a_symlinked_home_is_the_same_home(registry: Path) -> None:
    real = _state_dir(registry, "real")
    (registry / "link").symlink_to(registry / "real")
    owners.claim("demo", real)
    owners.check_owner("demo", registry / "link" / "clusters" / "demo", creating=True)


def test_a_claim_whose_home_lost_its_state_is_taken_over(registry: Path) -> None:
    first = _state_dir(registry, "one")
    owners.claim("demo", first)
    (first / "state.json").unlink()
    second = _state_dir(registry, "two")
    owners.claim("demo", second)
    assert owners.owner("demo") == second.resolve()
    owners.release("demo", first)  # not first's any more: kept
    assert owners.owner("demo") == second.resolve()
    owners.release("demo", second)
    assert owners.owner("demo") is None


def test_namespaces_no_home_claimed_are_refused(
    registry: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(net, "cluster_netns", lambda name: ["ck.demo.demo-head"])
    with pytest.raises(StateError, match=r"namespaces on this machine .*ck\.demo\.demo-head"):
        owners.check_owner("demo", registry / "h" / "clusters" / "demo", creating=True)
    owners.check_owner("demo", registry / "h" / "clusters" / "demo", creating=False)  # down may
