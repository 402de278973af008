"""Fixtures for integration tests: real local clusters, driven through the real CLI, as root."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from clusterkit.providers.local import cgroups, net

CK = str(Path(sys.executable).with_name("clusterkit"))
# What runs on a node: its init (python3), sshd, the daemons, and their launchers.
NODE_COMMANDS = {
    "python3", "sshd", "bash", "nsenter", "unshare", "munged", "slurmd", "slurmctld",
    "slurmstepd", "sshfs",
}  # fmt: skip


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration/" in str(item.path):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(autouse=True)
def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("integration tests build real clusters and need root")


@dataclass
class Clusterkit:
    """The CLI with its own CLUSTERKIT_HOME."""

    home: Path

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "CLUSTERKIT_HOME": str(self.home)}

    def run(
        self, *args: str, check: bool = True, timeout: float = 120, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [CK, *args], env=self.env, capture_output=True, text=True, timeout=timeout,
            check=False, input=input,
        )  # fmt: skip
        if check and proc.returncode != 0:
            raise AssertionError(
                f"clusterkit {' '.join(args)} exited {proc.returncode}\n"
                f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
            )
        return proc

    def spec(self, name: str, computes: int, **extra: Any) -> Path:
        doc = {
            "name": name,
            "groups": [{"name": "compute", "min": computes, "max": computes}],
            **extra,
        }
        return self.write_spec(doc)

    def write_spec(self, doc: dict[str, Any]) -> Path:
        """The spec ``doc`` as a file under this home, named after its cluster."""
        path = self.home / f"{doc['name']}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc), encoding="utf-8")  # JSON is YAML
        return path

    def up(
        self, name: str, computes: int, configure: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """`up` of a head and ``computes`` static nodes; bare nodes unless ``configure``."""
        extra = [] if configure else ["--no-configure"]
        return self.run("up", "-f", str(self.spec(name, computes)), *extra, timeout=600)

    def status(self, name: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.run("status", name, "-o", "json").stdout)
        return data

    def ssh(
        self, name: str, node: str, command: str, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return self.run("ssh", name, node, "--", command, check=check, timeout=30)

    def cluster_dir(self, name: str) -> Path:
        return self.home / "clusters" / name

    def client_env(self, name: str) -> dict[str, str]:
        """The environment `eval "$(clusterkit env NAME)"` gives a shell on this machine."""
        env = dict(os.environ)
        for line in self.run("env", name).stdout.splitlines():
            key, value = line.removeprefix("export ").split("=", 1)
            env[key] = shlex.split(value)[0]
        return env


def residue(ck: Clusterkit, name: str) -> list[str]:
    """Everything of cluster ``name`` still on this machine (empty when all is gone)."""
    left = [f"netns {ns}" for ns in net.cluster_netns(name)]
    left += [f"link {link}" for link in net.cluster_links(name)]
    marker = f"ck-node:{name}:"
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if marker in cmdline:
            left.append(f"process {entry.name}: {cmdline.strip()}")
    left += [f"process {pid}: in an unnamed network namespace" for pid in orphan_node_pids()]
    left += [f"cgroup {path}" for path in cgroups.leftovers(name)]
    if ck.cluster_dir(name).exists():
        left.append(f"dir {ck.cluster_dir(name)}")
    return left


def orphan_node_pids() -> list[int]:
    """Node daemons living in a network namespace that no /run/netns name refers to: what a
    cluster leaks if its processes outlive its namespaces."""
    host = os.stat("/proc/self/ns/net").st_ino
    named = (
        {os.stat(p).st_ino for p in net.NETNS_DIR.glob("*")} if net.NETNS_DIR.is_dir() else set()
    )
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ino = os.stat(entry / "ns/net").st_ino
            comm = (entry / "comm").read_text().strip()
        except OSError:
            continue
        if ino != host and ino not in named and comm in NODE_COMMANDS:
            found.append(int(entry.name))
    return found


@pytest.fixture(scope="module")
def ck(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clusterkit]:
    """A CLUSTERKIT_HOME for one test module; whatever the module left up is brought down."""
    kit = Clusterkit(tmp_path_factory.mktemp("ckhome"))
    yield kit
    clusters = kit.home / "clusters"
    names = [p.name for p in clusters.iterdir() if p.is_dir()] if clusters.is_dir() else []
    for name in names:
        kit.run("down", name, check=False)
