"""``wait_for_boot`` without a cluster: its bound holds for the whole wait, however many
nodes there are for its workers (a stand-in pool answers what each node's status file says).
"""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from clusterkit.boot import wait_for_boot
from clusterkit.errors import ConfigureError


class StatusPool:
    """Answers ``cat BOOT_STATUS`` per node from ``status`` (as ``Pool.run`` returns)."""

    def __init__(self, status: dict[str, str]) -> None:
        self.status = status
        self.trust = SimpleNamespace(root=Path("/nowhere"))

    def run(self, node: str, argv: list[str], timeout: float) -> tuple[int, str, str]:
        time.sleep(0.01)
        return 0, self.status[node], ""


def test_the_timeout_bounds_the_whole_wait_not_each_node() -> None:
    status = {f"compute-st-{i}": "running" for i in range(1, 81)}  # five times the workers
    status["compute-st-3"] = "done"
    pool: Any = StatusPool(status)
    start = time.monotonic()
    with pytest.raises(ConfigureError) as error:
        wait_for_boot(pool, list(status), timeout=1.0)
    assert time.monotonic() - start < 2.0  # one deadline (a deadline per node: about 5 s)
    message = str(error.value)
    assert message.count("boot did not finish within 1s") == 79
    assert "compute-st-3:" not in message


def test_nodes_that_finish_or_fail_are_told_apart() -> None:
    pool: Any = StatusPool({"a": "done", "b": "failed: munge key", "c": "done"})
    with pytest.raises(ConfigureError, match=r"b: failed: munge key \(console log: "):
        wait_for_boot(pool, ["a", "b", "c"], timeout=5.0)
    wait_for_boot(pool, ["a", "c"], timeout=5.0)
