"""Fixtures for integration tests: real local clusters, driven through the real CLI, as root."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.driver import Clusterkit


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration/" in str(item.path):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(autouse=True)
def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("integration tests build real clusters and need root")


@pytest.fixture(scope="module")
def ck(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clusterkit]:
    """A CLUSTERKIT_HOME for one test module; whatever the module left up is brought down."""
    kit = Clusterkit(tmp_path_factory.mktemp("ckhome"))
    yield kit
    for name in kit.names():
        kit.down(name, check=False)
