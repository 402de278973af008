"""Elastic scaling seen from this machine: compute instances, power states, recent actions.

The work itself happens on the head (``nodetools.power`` and ``nodetools.reconciler``); this
module reads what they did and, on the local provider, talks to the cluster's cloud service:
``status`` shows every dynamic node with its instance and power state, and ``simulate`` sets
the capacity and failures the service plays, so failure paths can be exercised for real;
``interrupt`` sends a node a simulated Spot interruption notice or rebalance recommendation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from clusterkit import proc
from clusterkit.errors import ClusterkitError, ProviderError, StateError
from clusterkit.nodetools import events
from clusterkit.nodetools.cloud import CloudError, Instance
from clusterkit.plan import head_name, plan_nodes
from clusterkit.providers.local import cloud
from clusterkit.state import ClusterState, check_name, load_state, spec_of
from clusterkit.trust import ClusterTrust

# Events of these actions are only bookkeeping, not actions on nodes.
QUIET_ACTIONS = frozenset({"called", "started", "done"})
REBALANCE = "rebalance"


@dataclass(frozen=True)
class Interruption:
    """A notice sent: ``time`` is when the instance ends, or, for a rebalance recommendation,
    when it was sent (RFC 3339, UTC)."""

    node: str
    instance_id: str
    action: str  # terminate | stop | hibernate | rebalance
    time: str
    in_seconds: float | None = None  # the lead time of a notice


def power_state(slurm_state: str | None, kind: str) -> str:
    """``on``, ``off``, ``powering up``, ``powering down`` or ``-`` from Slurm's state."""
    if slurm_state is None:
        return "-"
    flags = set(slurm_state.split("+"))
    if "POWERING_UP" in flags:
        return "powering up"
    if "POWERING_DOWN" in flags or "POWER_DOWN" in flags:
        return "powering down"
    if "POWERED_DOWN" in flags:
        return "off"
    return "on" if kind == "dynamic" or "DOWN" not in flags else "down"


def instances(state: ClusterState) -> dict[str, Instance]:
    """Live compute instances by node, as the provider describes them (empty if unknown)."""
    if state.provider != "local" or not cloud.socket_path(state.name).exists():
        return {}
    try:
        found = cloud.client(state.name).describe()
    except CloudError:
        return {}
    return {i.node: i for i in found}


def recent_actions(state: ClusterState, limit: int = 10) -> list[dict[str, Any]]:
    """The newest actions of the head's power-saving programs and reconciler."""
    if "configure" not in state.steps:
        return []
    trust = ClusterTrust(state.name, state.dir)
    argv = ["tail", "-n", "500", str(events.EVENTS)]
    try:
        text = proc.run(trust.ssh_argv(head_name(state.name), argv), timeout=30).stdout
    except ClusterkitError:
        return []
    acted = [e for e in events.parse(text) if e.get("action") not in QUIET_ACTIONS]
    return acted[-limit:]


def simulate(
    name: str,
    capacity: dict[str, int | None] | None = None,
    fail_code: str | None = None,
    fail_count: int | None = None,
    boot_delay: float | None = None,
) -> dict[str, Any]:
    """Change what the local cloud service of cluster ``name`` plays; return the settings."""
    check_name(name)
    state = load_state(name)
    if state.provider != "local":
        raise StateError(f"cluster {name!r} is on {state.provider}: only local clouds simulate")
    params: dict[str, Any] = {"capacity": capacity or {}}
    if fail_count is not None:
        params |= {"fail_count": fail_count, "fail_code": fail_code}
    if boot_delay is not None:
        params["boot_delay"] = boot_delay
    try:
        reply = cloud.client(name).call("simulate", **params)
    except CloudError as exc:
        raise _unanswered(name, exc) from exc
    settings: dict[str, Any] = reply["simulation"]
    return settings


def interrupt(
    name: str, node: str, action: str = "terminate", in_seconds: float | None = None
) -> Interruption:
    """Send compute ``node`` of local cluster ``name`` a simulated Spot interruption.

    ``action`` terminate, stop or hibernate: the node's metadata shows the notice and its
    instance ends ``in_seconds`` later (default: the spec's ``local.spot_notice_seconds``).
    ``rebalance``: only a rebalance recommendation; nothing ends.
    """
    check_name(name)
    state = load_state(name)
    if state.provider != "local":
        raise StateError(
            f"cluster {name!r} is on {state.provider}: only local clusters are interrupted here"
        )
    spec = spec_of(state)
    _check_interruptible(name, node, [n.name for n in plan_nodes(spec) if n.role == "compute"])
    seconds = float(spec.local.spot_notice_seconds if in_seconds is None else in_seconds)
    params: dict[str, Any] = {"node": node, "instance_action": action, "in_seconds": seconds}
    try:
        reply = cloud.client(name).call("interrupt", **params)
    except CloudError as exc:
        if exc.code == "Unavailable":
            raise _unanswered(name, exc) from exc
        raise ProviderError(f"{name}: {exc.message} ({exc.code})") from exc
    return Interruption(
        node=reply["node"], instance_id=reply["instance_id"], action=reply["action"],
        time=reply["time"], in_seconds=None if action == REBALANCE else seconds,
    )  # fmt: skip


def _check_interruptible(name: str, node: str, computes: list[str]) -> None:
    if node == head_name(name):
        raise StateError(f"{node} is the head of {name}: only compute nodes are interrupted")
    if node not in computes:
        shown = ", ".join(computes[:8]) + (", ..." if len(computes) > 8 else "") or "none"
        raise StateError(f"cluster {name!r} has no compute node {node!r}; its computes: {shown}")


def _unanswered(name: str, exc: CloudError) -> ProviderError:
    return ProviderError(
        f"the cloud service of {name} did not answer ({exc}); `clusterkit up` restarts it"
    )
