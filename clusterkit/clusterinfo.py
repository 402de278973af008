"""Looking at and reaching a cluster ``up`` made: ``status`` (the provider's view of every
node, and Slurm's with ``with_slurm``), ``list_clusters``, the ``ssh`` command line, an Ansible
inventory of it, and the environment for Slurm's commands on this machine.

Nothing here prints or changes a cluster; ``cluster`` makes and removes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clusterkit import elastic, health, proc
from clusterkit.errors import ClusterkitError, StateError
from clusterkit.plan import head_name, plan_nodes
from clusterkit.playbook import ansible_vars, inventory, write_inventory
from clusterkit.providers import provider_class
from clusterkit.providers.base import Provider
from clusterkit.slurm import SlurmJob
from clusterkit.slurmreader import SlurmReader
from clusterkit.state import ClusterState, NodeState, check_name, list_states, load_state, spec_of
from clusterkit.trust import ClusterTrust


@dataclass(frozen=True)
class NodeStatus:
    name: str
    role: str
    group: str | None
    kind: str
    address: str | None
    instance_id: str | None
    state: str  # running | stopped | launching | off (a dynamic node without instance)
    power: str = "-"  # on | off | powering up | powering down | down (from Slurm)


@dataclass(frozen=True)
class SlurmView:
    """Slurm's own view of a cluster: node states and the queue, or why it is unavailable."""

    nodes: dict[str, str]  # node -> Slurm state, e.g. IDLE, MIXED+DRAIN
    jobs: list[SlurmJob]
    error: str | None = None
    reasons: dict[str, str] = field(default_factory=dict)  # node -> why drained or down


@dataclass(frozen=True)
class ClusterStatus:
    name: str
    provider: str
    status: str  # creating | failed | ready | degraded (ready, with problems)
    created_at: str
    subnet: str | None
    nodes: list[NodeStatus]
    slurm: SlurmView | None = None
    actions: list[dict[str, Any]] = field(default_factory=list)  # newest power actions
    problems: list[str] = field(default_factory=list)  # what makes it degraded, one line each


def status(name: str, with_slurm: bool = False) -> ClusterStatus:
    """A cluster's nodes as the provider sees them; with ``with_slurm``, Slurm's view too."""
    check_name(name)
    state = load_state(name)
    spec = spec_of(state)
    provider = provider_class(state.provider)(state, spec)
    view = slurm_view(state) if with_slurm else None
    slurm_states = view.nodes if view else {}
    live = provider.instances()
    nodes = []
    for plan in plan_nodes(spec):
        node = state.nodes.get(plan.name)
        inst = live.get(plan.name)
        iid: str | None
        addr: str | None
        if inst is not None and (node is None or node.instance_id != inst.instance_id):
            run, iid, addr = "running", inst.instance_id, inst.address
        elif node is not None:
            run, iid, addr = _live_state(provider, node), node.instance_id, node.address
        elif not plan.static:
            run, iid, addr = "off", None, None
        else:
            continue
        power = "-" if plan.role == "head" else elastic.power_state(
            slurm_states.get(plan.name), plan.kind
        )  # fmt: skip
        nodes.append(NodeStatus(plan.name, plan.role, plan.group, plan.kind, addr, iid, run, power))
    actions = elastic.recent_actions(state) if with_slurm else []
    # A cluster made with --no-configure has no Slurm to ask: that is no problem of it.
    asked = view is not None and "configure" in state.steps
    found = health.problems(state.name, _views(nodes, view), view.error if asked and view else None)
    return ClusterStatus(
        state.name, state.provider, health.summary(state.status, found), state.created_at,
        state.network.get("subnet"), nodes, view, actions, found,
    )  # fmt: skip


def _views(nodes: list[NodeStatus], view: SlurmView | None) -> list[health.NodeView]:
    known = view is not None and view.error is None
    return [
        health.NodeView(
            n.name, n.role, n.group, n.kind, n.state,
            view.nodes.get(n.name) if known and view else None,
            view.reasons.get(n.name, "") if view else "",
        )
        for n in nodes
    ]  # fmt: skip


def slurm_reader(state: ClusterState) -> SlurmReader:
    """Reads Slurm by running its commands on the head over SSH."""
    trust = ClusterTrust(state.name, state.dir)
    head = head_name(state.name)
    return SlurmReader.create(lambda argv: proc.run(trust.ssh_argv(head, argv), timeout=30).stdout)


def slurm_view(state: ClusterState) -> SlurmView:
    if "configure" not in state.steps:
        return SlurmView({}, [], "Slurm is not configured on this cluster (--no-configure)")
    try:
        reader = slurm_reader(state)
        nodes = reader.nodes()
        return SlurmView(
            {n.name: n.display_state for n in nodes}, reader.jobs(),
            reasons={n.name: n.reason for n in nodes if n.reason},
        )  # fmt: skip
    except ClusterkitError as exc:
        return SlurmView({}, [], str(exc))


def _live_state(provider: Provider, node: NodeState) -> str:
    if node.status == "launching":
        return "launching"
    return "running" if provider.running(node) else "stopped"


def list_clusters() -> list[ClusterStatus]:
    return [status(s.name) for s in list_states()]


def ssh_argv(
    name: str, node: str | None = None, command: list[str] | None = None, user: str = "root"
) -> list[str]:
    """The ssh command line reaching ``node`` (default: the head) of cluster ``name``."""
    check_name(name)
    state = load_state(name)
    target = node or next((n.name for n in state.nodes.values() if n.role == "head"), None)
    planned = [n.name for n in plan_nodes(spec_of(state))] if state.spec else list(state.nodes)
    if target is None or target not in planned:
        known = ", ".join(planned) or "none yet"
        raise StateError(f"cluster {name!r} has no node {node!r}; its nodes: {known}")
    host = None
    recorded = state.nodes.get(target)
    if (recorded is None or not recorded.address) and state.spec:
        # A dynamic node: its address is the one of its current power-up, if it is up.
        host = provider_class(state.provider)(state, spec_of(state)).dial_address(target)
    trust = ClusterTrust(name, state.dir)
    return trust.ssh_argv(target, command, batch=False, user=user, host=host)


def write_inventory_dir(name: str, directory: Path) -> Path:
    """An Ansible inventory of cluster ``name`` with every variable the playbooks need."""
    check_name(name)
    state = load_state(name)
    spec = spec_of(state)
    trust = ClusterTrust(name, state.dir)
    traits = provider_class(state.provider).traits
    return write_inventory(
        directory, inventory(state, trust), ansible_vars(spec, state, trust, traits)
    )


def client_env(name: str) -> dict[str, str]:
    """Environment that lets Slurm commands on this machine talk to cluster ``name``, where
    its provider allows it (local: the head's munge socket is on this machine)."""
    check_name(name)
    state = load_state(name)
    return provider_class(state.provider)(state, spec_of(state)).client_env()
