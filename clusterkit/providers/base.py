"""The interface every provider implements; ``cluster.py`` drives it and never looks inside."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from clusterkit.plan import ClusterUser, NodePlan, static_nodes
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


@dataclass(frozen=True)
class CostRange:
    """Hourly cost of a cluster, from all static nodes at their cheapest to every node at
    its dearest option; ``basis`` says where the prices come from."""

    low: float
    high: float
    currency: str
    basis: str


@dataclass(frozen=True)
class DryRun:
    """What ``up`` would create for a spec, and what it would cost; nothing is changed."""

    resources: list[str]
    cost: CostRange | None = None
    notes: list[str] = field(default_factory=list)


class Provider(ABC):
    """One cluster's view of its provider. Methods record what they create in ``state``."""

    kind: str
    # Whether `up --no-configure` waits for SSH on every node; a cloud provider returns once
    # every resource exists (its nodes may take minutes to boot, or, on a test endpoint, never).
    ssh_when_bare = True
    # How long `up` waits for every node's SSH after launching them.
    ssh_wait_seconds = 20.0

    def __init__(self, state: ClusterState, spec: ClusterSpec) -> None:
        self.state = state
        self.spec = spec

    @classmethod
    @abstractmethod
    def check_prerequisites(cls) -> None:
        """Raise ``PrerequisiteError`` naming what this machine lacks."""

    @classmethod  # noqa: B027 - optional: most providers build every valid spec
    def check_spec(cls, spec: ClusterSpec, configure: bool) -> None:
        """Raise ``SpecError`` if ``up`` (configured or not) cannot build ``spec`` here;
        called before anything is created."""

    @classmethod  # noqa: B027 - optional: names are private to a home unless said here
    def check_owner(cls, name: str, state_dir: Path, creating: bool) -> None:
        """Raise ``StateError`` if cluster ``name`` belongs to another ``CLUSTERKIT_HOME``
        (``state_dir`` is this home's); ``creating`` for ``up``, else ``down``. Called
        before anything is changed."""

    @abstractmethod
    def prepare(self) -> None:
        """Create what all nodes share (network); idempotent."""

    @abstractmethod
    def address(self, node: NodePlan) -> str | None:
        """The node's private address if known before launch (``local``: every node; ``aws``:
        the head), else None: the provider assigns it at launch (see ``NodeState.address``)."""

    @abstractmethod
    def launch(self, node: NodePlan, boot: NodeBoot) -> NodeState:
        """Create and boot one node; return its state once its sshd is started."""

    def launch_all(self, nodes: Sequence[tuple[NodePlan, NodeBoot]]) -> Iterator[NodeState]:
        """Launch several nodes, yielding each one's state as soon as it exists. Providers
        whose API launches many instances per call override it."""
        for node, boot in nodes:
            yield self.launch(node, boot)

    def public_address(self, node: NodeState) -> str | None:
        """Where the admin's machine dials ``node`` when its private address is out of reach
        (aws: the head's public IP, once it is running); None: it dials ``node.address``.
        Called only where SSH is needed (a configured ``up``)."""
        return None

    def dial_address(self, node: str) -> str | None:
        """Where ``node``'s sshd is now, for a node whose address changes with each power-up
        and is not in ssh_config (aws: a dynamic node's private IP); None: ssh_config's."""
        return None

    def ssh_hint(self) -> str:
        """What to check when SSH to the nodes does not come up; empty when nothing special."""
        return ""

    def start_services(self) -> None:  # noqa: B027 - optional: most providers need none
        """Start what the cluster needs beside its nodes (idempotent); nothing by default."""

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
    def dry_run(cls, spec: ClusterSpec) -> DryRun:
        """What ``up`` would create for ``spec``, without creating anything."""
        return DryRun([f"node {n.name}" for n in static_nodes(spec)])

    @classmethod
    @abstractmethod
    def discover(cls) -> list[str]:
        """Names of clusters with resources on this provider (state or not)."""
