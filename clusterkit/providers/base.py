"""The interface every provider implements; ``cluster.py`` drives it and never looks inside."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

from clusterkit.plan import ClusterUser, NodePlan
from clusterkit.spec import ClusterSpec
from clusterkit.state import ClusterState, NodeState


@dataclass(frozen=True)
class NodeBoot:
    """What a node needs at boot to be reachable over SSH with pre-trusted host keys."""

    host_key: Path  # private host key; its .pub beside it
    authorized_keys: str  # for root
    known_hosts: str  # the cluster's known_hosts, installed as the node's global one
    hosts: str  # /etc/hosts of the cluster
    users: tuple[ClusterUser, ...] = ()  # accounts every node must know
    node_key: Path | None = None  # compute nodes: the key that reads from the head (SFTP only)
    user_data: str | None = None  # the boot script, run once at boot like EC2 user-data


class Provider(ABC):
    """One cluster's view of its provider. Methods record what they create in ``state``."""

    kind: str

    def __init__(self, state: ClusterState, spec: ClusterSpec) -> None:
        self.state = state
        self.spec = spec

    @classmethod
    @abstractmethod
    def check_prerequisites(cls) -> None:
        """Raise ``PrerequisiteError`` naming what this machine lacks."""

    @abstractmethod
    def prepare(self) -> None:
        """Create what all nodes share (network); idempotent."""

    @abstractmethod
    def address(self, node: NodePlan) -> str:
        """The node's private address (known before launch on ``local``)."""

    @abstractmethod
    def launch(self, node: NodePlan, boot: NodeBoot) -> NodeState:
        """Create and boot one node; return its state once its sshd is started."""

    @abstractmethod
    def running(self, node: NodeState) -> bool:
        """True when everything of the node that ``launch`` started is alive."""

    @abstractmethod
    def terminate(self, node: NodeState) -> None:
        """Remove one node and everything it owned; safe on a half-made node."""

    @classmethod
    @abstractmethod
    def destroy(cls, name: str, state: ClusterState | None) -> list[str]:
        """Remove every resource of cluster ``name``, found by name as well as by state.

        Works with no state at all, after a crash at any point. Returns what it removed.
        """

    @classmethod
    @abstractmethod
    def discover(cls) -> list[str]:
        """Names of clusters with resources on this provider (state or not)."""
