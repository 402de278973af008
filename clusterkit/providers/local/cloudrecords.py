"""What the local cloud service keeps, and where: the instances it launched, the notices sent
to them and its simulation settings, as JSON files in ``cloud/`` of the cluster's state
directory (``instances.json``, ``notices.json``, ``simulation.json``), so a restarted service
carries on where the last one stopped.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from clusterkit.state import NodeState, atomic_write


@dataclass
class Simulation:
    capacity: dict[str, int] = field(default_factory=dict)  # "TYPE" or "TYPE:LIFECYCLE" -> max
    fail_code: str = ""
    fail_count: int = 0
    boot_delay: float = 0.0

    def limit(self, instance_type: str, lifecycle: str) -> int | None:
        keyed = self.capacity.get(f"{instance_type}:{lifecycle}")
        return keyed if keyed is not None else self.capacity.get(instance_type)


@dataclass
class Record:
    """One instance the service launched (a dynamic node, or a static node it replaced)."""

    instance_id: str
    node: str
    group: str
    address: str
    instance_type: str
    lifecycle: str
    launched_at: float
    state: str = "pending"
    pids: dict[str, int] = field(default_factory=dict)
    index: int = 0

    def public(self) -> dict[str, Any]:
        data = asdict(self)
        del data["pids"], data["index"]
        return data

    def node_state(self, kind: str) -> NodeState:
        return NodeState(
            name=self.node, role="compute", group=self.group, kind=kind,
            index=self.index, address=self.address, instance_id=self.instance_id,
            pids=self.pids, status="running",
        )  # fmt: skip


@dataclass
class Notice:
    """What has been sent to one instance: an interruption notice, a rebalance recommendation.

    Keyed by instance id, not node: a node launched again is a new instance, and the notice
    (and the termination it announces) stays with the old one.
    """

    instance_id: str
    node: str
    action: str | None = None  # terminate | stop | hibernate, once a notice is sent
    at: float | None = None  # when the instance ends
    rebalance_at: float | None = None  # when a rebalance recommendation was sent


def load_records(directory: Path) -> dict[str, Record]:
    path = directory / "instances.json"
    if not path.exists():
        return {}
    return {k: Record(**v) for k, v in json.loads(path.read_text(encoding="utf-8")).items()}


def load_notices(directory: Path) -> dict[str, Notice]:
    path = directory / "notices.json"
    if not path.exists():
        return {}
    return {k: Notice(**v) for k, v in json.loads(path.read_text(encoding="utf-8")).items()}


def save_records(directory: Path, records: dict[str, Record], notices: dict[str, Notice]) -> None:
    """The instances and the notices sent to them."""
    data = {k: asdict(v) for k, v in records.items()}
    atomic_write(directory / "instances.json", json.dumps(data, indent=1))
    sent = {k: asdict(v) for k, v in notices.items()}
    atomic_write(directory / "notices.json", json.dumps(sent, indent=1))


def load_simulation(directory: Path, boot_delay: float) -> Simulation:
    """The saved settings, else none but the spec's ``boot_delay``."""
    path = directory / "simulation.json"
    if path.exists():
        return Simulation(**json.loads(path.read_text(encoding="utf-8")))
    return Simulation(boot_delay=boot_delay)


def save_simulation(directory: Path, simulation: Simulation) -> None:
    atomic_write(directory / "simulation.json", json.dumps(asdict(simulation)))
