"""The providers side by side: each test of the contract suite runs once per provider.

``local`` builds real namespaces (root, marked ``integration``); ``aws`` runs against the
moto server (marked ``aws``). A backend knows only what the suite cannot ask clusterkit
itself: how to write a spec, what the provider leaves behind, and how a node is lost.
"""

from __future__ import annotations

import os
import signal
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.aws.conftest import Aws
from tests.aws.conftest import aws as aws  # noqa: PLC0414 - the fixture, for the aws backend
from tests.aws.conftest import moto_endpoint as moto_endpoint  # noqa: PLC0414 - likewise
from tests.driver import Clusterkit
from tests.local_residue import residue


class Backend(ABC):
    kind: str

    def __init__(self, ck: Clusterkit) -> None:
        self.ck = ck

    @abstractmethod
    def spec(self, name: str, static: int) -> Path:
        """A spec of a head and ``static`` static compute nodes on this provider."""

    @abstractmethod
    def residue(self, name: str) -> list[str]:
        """Everything of cluster ``name`` the provider still holds (empty when all is gone),
        found with the test's own probes, not clusterkit's teardown code."""

    @abstractmethod
    def lose(self, name: str, node: str) -> None:
        """``node`` dies under the cluster (a Spot reclaim, a crashed machine)."""

    def up(self, name: str, static: int) -> None:
        self.ck.run("up", "-f", str(self.spec(name, static)), "--no-configure", timeout=300)

    def instance(self, name: str, node: str) -> str:
        return str(self.ck.state(name)["nodes"][node]["instance_id"])

    def record(self, name: str) -> list[str]:
        return [f"dir {self.ck.cluster_dir(name)}"] if self.ck.cluster_dir(name).exists() else []


class LocalBackend(Backend):
    kind = "local"

    def spec(self, name: str, static: int) -> Path:
        return self.ck.spec(name, static)

    def residue(self, name: str) -> list[str]:
        return residue(self.ck, name)  # its record included

    def lose(self, name: str, node: str) -> None:
        # The node's init is its PID namespace's first process: every process of it dies too.
        os.kill(self.ck.state(name)["nodes"][node]["pids"]["init"], signal.SIGKILL)


class AwsBackend(Backend):
    kind = "aws"

    def __init__(self, account: Aws) -> None:
        super().__init__(account.ck)
        self.account = account

    def spec(self, name: str, static: int) -> Path:
        return self.account.spec(name, static=static, dynamic=0)

    def residue(self, name: str) -> list[str]:
        found = self.account.tagged(name)
        return [f"{kind} {item}" for kind, items in found.items() for item in items] + self.record(
            name
        )

    def lose(self, name: str, node: str) -> None:
        self.account.client("ec2").terminate_instances(InstanceIds=[self.instance(name, node)])


@pytest.fixture(
    params=[
        pytest.param("local", marks=pytest.mark.integration),
        pytest.param("aws", marks=pytest.mark.aws),
    ]
)
def provider(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    backend: Backend
    if request.param == "local":
        if os.geteuid() != 0:
            pytest.skip("the local provider builds real namespaces and needs root")
        backend = LocalBackend(Clusterkit(tmp_path / "home"))
    else:
        backend = AwsBackend(request.getfixturevalue("aws"))
    yield backend
    for name in backend.ck.names():
        backend.ck.down(name, check=False)
