"""What is wrong with a live cluster, from the provider's view and Slurm's: ``status`` says
``degraded`` instead of ``ready`` while any of it lasts, one line per problem.

Problems: the controller does not answer; a node's instance is not running; a static node is
DOWN or not responding (being repaired, or broken); a dynamic node is DOWN while powered up;
a group is in protected mode. A drain is not a problem (an operator or a Spot notice asked
for it): the node table shows it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from clusterkit.nodetools.protect import PROTECTED_CODE

READY = "ready"
DEGRADED = "degraded"


@dataclass(frozen=True)
class NodeView:
    """One node as ``status`` sees it: the provider's state and Slurm's."""

    name: str
    role: str
    group: str | None
    kind: str  # static | dynamic
    state: str  # the provider's: running | stopped | launching | off
    slurm_state: str | None  # e.g. IDLE, DOWN+NOT_RESPONDING; None when Slurm was not read
    reason: str = ""


def problems(cluster: str, nodes: Sequence[NodeView], slurm_error: str | None) -> list[str]:
    """One line per thing wrong, each naming its node or group."""
    found = []
    if slurm_error:
        found.append(f"the Slurm controller does not answer: {slurm_error}")
    protected: dict[str, str] = {}
    for node in nodes:
        if node.reason.startswith(PROTECTED_CODE) and node.group:
            protected.setdefault(node.group, node.reason[len(PROTECTED_CODE) :].strip())
            continue
        line = _node_problem(node)
        if line:
            found.append(line)
    found += [
        f"group {group} is in protected mode ({why}); once fixed: clusterkit unprotect "
        f"{cluster} {group}"
        for group, why in protected.items()
    ]
    return found


def _node_problem(node: NodeView) -> str | None:
    if node.state not in {"running", "off"}:
        return f"{node.name}: instance {node.state}"
    if node.role == "head" or node.slurm_state is None:  # None: Slurm was not read
        return None
    flags = set(node.slurm_state.split("+"))
    reason = f" ({node.reason})" if node.reason else ""
    if node.kind == "dynamic" and flags & {"POWERED_DOWN", "POWERING_DOWN", "POWERING_UP"}:
        return None
    if flags & {"DOWN", "NOT_RESPONDING", "UNKNOWN"}:
        return f"{node.name}: Slurm says {node.slurm_state}{reason}"
    return None


def summary(status: str, found: Sequence[str]) -> str:
    """``degraded`` for a cluster ``up`` made ready that has problems; else its status."""
    return DEGRADED if status == READY and found else status
