"""The interface every provider implements; ``cluster.py`` drives it and never looks inside.

Every difference between providers lives behind it: what a provider creates and removes,
its ``traits`` (plain data the rendering and checking modules take), where jobs' checkpoints
go, which cloud API the head's programs call, and what only some providers can do
(simulated capacity and interruptions, Slurm clients on this machine).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from clusterkit.boot import NodeBoot
from clusterkit.errors import SpecError, StateError
from clusterkit.nodetools.cloud import Instance
from clusterkit.plan import NodePlan, static_nodes
from clusterkit.prices import Price
from clusterkit.secretref import FILE_PREFIX, read_file_secret
from clusterkit.spec import ClusterSpec
from clusterkit.state import ClusterState, NodeState
from clusterkit.traits import Traits

__all__ = ["REBALANCE", "CostRange", "DryRun", "Interruption", "NodeBoot", "Provider"]


REBALANCE = "rebalance"  # an Interruption's action for a rebalance recommendation: nothing ends


@dataclass(frozen=True)
class Interruption:
    """A notice sent: ``time`` is when the instance ends, or, for a rebalance recommendation,
    when it was sent (RFC 3339, UTC)."""

    node: str
    instance_id: str
    action: str  # terminate | stop | hibernate | rebalance
    time: str
    in_seconds: float | None = None  # the lead time of a notice


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
    traits: ClassVar[Traits]
    # Labels of the steps of `up` whose work differs from the plain name (network, nodes).
    step_labels: ClassVar[dict[str, str]] = {}
    # Whether `discover` is cheap and local, so `clusterkit list` can name clusters with
    # resources here but no state in this home.
    lists_orphans: ClassVar[bool] = False
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

    def read_secret(self, ref: str, field: str) -> str:
        """The secret ``ref`` names, for the spec's ``field``: ``file:/PATH`` on this machine;
        providers with a secret store of their own add its references."""
        if ref.startswith(FILE_PREFIX):
            return read_file_secret(ref, field)
        store = ref.split(":", 1)[0]
        raise SpecError(field, [f"{store} secrets need provider aws; use file:/PATH here"])

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

    @classmethod
    @abstractmethod
    def checkpoint_location(
        cls, spec: ClusterSpec, network: dict[str, str]
    ) -> tuple[str, str | None]:
        """Where jobs' checkpoints go, with ``{user}`` and ``{job}`` to fill in, and the
        region of their bucket (None for a directory); ``network`` is the state's."""

    @classmethod
    @abstractmethod
    def cloud_config(cls, spec: ClusterSpec, network: dict[str, str]) -> dict[str, Any]:
        """``/etc/clusterkit/cloud.json``: which cloud API the head's programs call."""

    def instances(self) -> dict[str, Instance]:
        """Live compute instances by node, where this machine can see them cheaply (the
        head's programs launch them); empty otherwise."""
        return {}

    def simulate(self, **settings: Any) -> dict[str, Any]:
        """Make the provider refuse or slow launches, as a cloud can (local only)."""
        raise StateError(
            f"cluster {self.state.name!r} is on {self.kind}: only local clouds simulate"
        )

    def interrupt(self, node: str, action: str, in_seconds: float | None) -> Interruption:
        """Send a compute node a simulated Spot interruption (local only)."""
        raise StateError(
            f"cluster {self.state.name!r} is on {self.kind}: only local clusters are "
            "interrupted here"
        )

    def client_env(self) -> dict[str, str]:
        """Environment for Slurm commands on this machine to reach the cluster."""
        raise StateError(
            f"cluster {self.state.name!r} is on {self.kind}: run Slurm commands on its head"
        )

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
    def spot_prices(cls, spec: ClusterSpec) -> dict[str, Price]:
        """The Spot price now of each instance type ``spec`` names, where the provider has a
        Spot market (``prices.price_book`` fills in the rest)."""
        return {}

    @classmethod
    def dry_run(cls, spec: ClusterSpec) -> DryRun:
        """What ``up`` would create for ``spec``, without creating anything."""
        return DryRun([f"node {n.name}" for n in static_nodes(spec)])

    @classmethod
    @abstractmethod
    def discover(cls) -> list[str]:
        """Names of clusters with resources on this provider (state or not)."""
