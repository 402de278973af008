"""The cloud API of the head's power-saving programs and reconciler: launch, terminate, describe.

It is the part of EC2 that Slurm power saving needs, and nothing more. Two backends speak it:
``LocalCloud`` (below) talks to the cluster's local cloud service over a Unix socket, and
the AWS backend calls EC2 itself. Both return the same types and report the provider's own
error codes (``InsufficientInstanceCapacity``, ...), so the logic above them -- fallback
between instance types and capacity kinds, marking nodes down with the code in the reason
-- is written once.

Node tools run with the node's system python3: standard library only.
"""

from __future__ import annotations

import json
import socket
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# Where the head keeps the backend's settings (written by the playbooks).
CONFIG_PATH = Path("/etc/clusterkit/cloud.json")
# Where a local head reaches its cloud service (the cluster's own, bind-mounted in).
LOCAL_SOCKET = "/var/lib/clusterkit/cloud/cloud.sock"

SPOT = "spot"
ON_DEMAND = "on-demand"

# Error codes that mean "no capacity of this kind here now": the next option is tried at
# once. Other codes (bad parameters, permissions) would fail the same way on every option.
CAPACITY_CODES = frozenset({
    "InsufficientInstanceCapacity",
    "InsufficientHostCapacity",
    "InsufficientReservedInstanceCapacity",
    "MaxSpotInstanceCountExceeded",
    "SpotMaxPriceTooLow",
    "UnfulfillableCapacity",
    "VcpuLimitExceeded",
})  # fmt: skip


class CloudError(Exception):
    """A call the provider refused or could not answer; ``code`` is the provider's own."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"({code}) {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Option:
    """One way to get capacity for a group: an instance type and a capacity kind."""

    instance_type: str
    lifecycle: str  # SPOT or ON_DEMAND


@dataclass(frozen=True)
class Instance:
    """A compute instance as the provider describes it, tagged with its Slurm node."""

    instance_id: str
    node: str
    group: str
    address: str
    instance_type: str
    lifecycle: str
    state: str  # pending | running | shutting-down | terminated
    launched_at: float  # seconds since the epoch
    zone: str = ""  # where the provider has zones (an AWS availability zone)

    @property
    def alive(self) -> bool:
        return self.state in ("pending", "running")


@dataclass(frozen=True)
class LaunchResult:
    """What one launch call made. Nodes missing from ``instances`` failed with ``error``."""

    instances: tuple[Instance, ...]
    error: CloudError | None = None
    calls: int = 1  # API calls the launch took (batches, retries)
    failed: tuple[str, ...] = field(default=())

    @staticmethod
    def of(
        nodes: Sequence[str],
        instances: Sequence[Instance],
        error: CloudError | None,
        calls: int = 1,
    ) -> LaunchResult:
        made = {i.node for i in instances}
        return LaunchResult(
            tuple(instances), error, calls, tuple(n for n in nodes if n not in made)
        )


class Cloud(ABC):
    """One cluster's compute instances at its provider."""

    @abstractmethod
    def launch(self, group: str, nodes: Sequence[str], option: Option) -> LaunchResult:
        """Start one instance per node, all of ``option``; may make fewer than asked."""

    @abstractmethod
    def terminate(self, instance_ids: Sequence[str]) -> None:
        """End these instances; ids already gone are not an error."""

    @abstractmethod
    def describe(self) -> list[Instance]:
        """This cluster's compute instances that are not terminated."""


# ---------------------------------------------------------------------------------------------
# The local backend: JSON requests over the cluster's Unix socket, one per connection.


class LocalCloud(Cloud):
    def __init__(self, path: str, timeout: float = 120.0) -> None:
        self.path = path
        self.timeout = timeout

    def call(self, action: str, **params: Any) -> dict[str, Any]:
        request = json.dumps({"action": action, **params}).encode() + b"\n"
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(self.timeout)
                sock.connect(self.path)
                sock.sendall(request)
                sock.shutdown(socket.SHUT_WR)
                data = b"".join(iter(lambda: sock.recv(65536), b""))
        except OSError as exc:
            raise CloudError("Unavailable", f"local cloud service at {self.path}: {exc}") from exc
        reply: dict[str, Any] = json.loads(data or b"{}")
        if "error" in reply:
            raise CloudError(reply["error"]["code"], reply["error"]["message"])
        return reply

    def launch(self, group: str, nodes: Sequence[str], option: Option) -> LaunchResult:
        reply = self.call("launch", group=group, nodes=list(nodes), **asdict(option))
        instances = [Instance(**i) for i in reply["instances"]]
        error = reply.get("partial_error")
        failure = CloudError(error["code"], error["message"]) if error else None
        return LaunchResult.of(nodes, instances, failure)

    def terminate(self, instance_ids: Sequence[str]) -> None:
        self.call("terminate", instance_ids=list(instance_ids))

    def describe(self) -> list[Instance]:
        return [Instance(**i) for i in self.call("describe")["instances"]]
