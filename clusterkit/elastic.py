"""Elastic scaling seen from this machine: power states, recent actions, simulated capacity.

The work itself happens on the head (``nodetools.power`` and ``nodetools.reconciler``); this
module reads what they did. ``simulate`` sets the capacity and failures a provider's cloud
plays and ``interrupt`` sends a node a simulated Spot interruption notice or rebalance
recommendation; the provider does both (the local one; others refuse).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from clusterkit import proc
from clusterkit.errors import ClusterkitError, StateError
from clusterkit.nodetools import events
from clusterkit.plan import head_name
from clusterkit.providers import provider_class
from clusterkit.providers.base import Interruption, Provider
from clusterkit.slurmconf import tools_dir
from clusterkit.state import ClusterState, check_name, load_state, spec_of
from clusterkit.trust import ClusterTrust

# Events of these actions are only bookkeeping, not actions on nodes.
# The meter's and notifier's records are bookkeeping, not power actions.
QUIET_SOURCES = ("meter", "notify")
QUIET_ACTIONS = frozenset({"called", "started", "done"})


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
    acted = [
        e for e in events.parse(text)
        if e.get("action") not in QUIET_ACTIONS and e.get("source") not in QUIET_SOURCES
    ]  # fmt: skip
    return acted[-limit:]


def simulate(
    name: str,
    capacity: dict[str, int | None] | None = None,
    fail_code: str | None = None,
    fail_count: int | None = None,
    boot_delay: float | None = None,
) -> dict[str, Any]:
    """Change what the cloud of cluster ``name`` plays (local clusters); return the settings."""
    params: dict[str, Any] = {"capacity": capacity or {}}
    if fail_count is not None:
        params |= {"fail_count": fail_count, "fail_code": fail_code}
    if boot_delay is not None:
        params["boot_delay"] = boot_delay
    return _provider(name).simulate(**params)


def interrupt(
    name: str, node: str, action: str = "terminate", in_seconds: float | None = None
) -> Interruption:
    """Send compute ``node`` of cluster ``name`` a simulated Spot interruption (local).

    ``action`` terminate, stop or hibernate: the node's metadata shows the notice and its
    instance ends ``in_seconds`` later (default: the spec's ``local.spot_notice_seconds``).
    ``rebalance``: only a rebalance recommendation; nothing ends.
    """
    return _provider(name).interrupt(node, action, in_seconds)


def unprotect(name: str, groups: Sequence[str] = ()) -> list[str]:
    """Lift protected mode from ``groups`` of cluster ``name`` (every protected group when
    empty): the reconciler tries their launches and repairs again. Returns the groups lifted."""
    check_name(name)
    state = load_state(name)
    spec = spec_of(state)
    known = {g.name for g in spec.groups}
    unknown = [g for g in groups if g not in known]
    if unknown:
        raise StateError(
            f"cluster {name!r} has no group {', '.join(unknown)} "
            f"(its groups: {', '.join(sorted(known))})"
        )
    if "configure" not in state.steps:
        raise StateError(f"cluster {name!r} has no reconciler (made with --no-configure)")
    trust = ClusterTrust(state.name, state.dir)
    argv = [f"{tools_dir(spec)}/ck-reconciler", "--lift", *groups]
    out = proc.run(trust.ssh_argv(head_name(name), argv), timeout=60).stdout
    return [line.split(None, 1)[1] for line in out.splitlines() if line.startswith("lifted ")]


def _provider(name: str) -> Provider:
    check_name(name)
    state = load_state(name)
    return provider_class(state.provider)(state, spec_of(state))
