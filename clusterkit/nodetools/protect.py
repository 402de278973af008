"""Protected mode: a group whose launches or repairs keep failing is left alone, not churned.

The reconciler counts, per group, the failures the head's event log records:

- a launch that left nodes without an instance (``resume failed``, ``replace failed``,
  ``resume error``);
- a node that did not come up (Slurm's ResumeTimeout, or its instance gone while it was
  powering up);
- a repair that did not hold: a static node replaced again within the window.

When ``protect_after`` of them fall within ``protect_window`` seconds, the group is
protected: its nodes are drained with a ``(Code:Protected)`` reason (running jobs finish; no
job is started or powered up there), the reconciler stops replacing them, and a
``protected`` event says why. ``lift`` (``ck-reconciler --lift``, run by ``clusterkit
unprotect`` and by every ``up``) records ``lifted``, which clears the count, and resumes the
nodes it drained.

The event log is the only record: a reconciler that restarts reads it again and is in the
same mode as before. ``Protection`` works on plain events, so its rules are tested on data.
"""

from __future__ import annotations

import calendar
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from clusterkit.nodetools import events
from clusterkit.nodetools.power import Scontrol
from clusterkit.slurm import SlurmNode

PROTECTED_CODE = "(Code:Protected)"
SOURCE = "reconciler"
PROTECTED = "protected"
LIFTED = "lifted"
# A node that did not come up: reasons the reconciler and ck-resume-fail give such a node.
NOT_UP = ("(Code:ResumeTimeout)", "(Code:InstanceLost) gone while powering up")


def event_time(event: Mapping[str, Any]) -> float:
    """Seconds since the epoch of an event's ``time`` (``events.utc``); 0 if it has none."""
    text = str(event.get("time", ""))
    try:
        whole, _, frac = text.rstrip("Z").partition(".")
        seconds = calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S"))
        return seconds + (float(f"0.{frac}") if frac.isdigit() else 0.0)
    except ValueError:
        return 0.0


@dataclass(frozen=True)
class Failure:
    group: str
    at: float
    what: str  # one line: what failed, on which nodes


@dataclass
class Protection:
    """Failures per group over a sliding window, and which groups are protected."""

    node_group: Mapping[str, str]
    after: int  # failures that protect a group; 0: never
    window: float
    recent: dict[str, deque[Failure]] = field(default_factory=dict)
    protected: dict[str, dict[str, Any]] = field(default_factory=dict)  # group -> its event
    replaced_at: dict[str, float] = field(default_factory=dict)  # static node -> last replace
    launch_failed: set[str] = field(default_factory=set)  # nodes whose last replace failed

    def observe(self, items: Iterable[Mapping[str, Any]], now: float) -> list[str]:
        """Take in new events, oldest first; the groups now over the limit and not yet
        protected (the caller protects them, which records the ``protected`` event).

        A group whose last failure is older than the window is not due: a log read again
        after a restart, or under a lowered limit, does not protect over old failures."""
        due: list[str] = []
        for event in items:
            for group in self._observe(event):
                if group not in due:
                    due.append(group)
        # A group lifted later in the same events has no failures left, and is not due.
        return [
            g for g in due
            if g not in self.protected and self.recent.get(g)
            and len(self.recent[g]) >= self.after and now - self.recent[g][-1].at <= self.window
        ]  # fmt: skip

    def _observe(self, event: Mapping[str, Any]) -> list[str]:
        source, action = event.get("source"), event.get("action")
        group = event.get("group")
        if source == SOURCE and action == PROTECTED and isinstance(group, str):
            self.protected[group] = dict(event)
            return []
        if source == SOURCE and action == LIFTED and isinstance(group, str):
            self.protected.pop(group, None)
            self.recent.pop(group, None)
            return []
        failures = self.failures_in(event)
        for failure in failures:
            window = self.recent.setdefault(failure.group, deque())
            window.append(failure)
            while window and failure.at - window[0].at > self.window:
                window.popleft()
        return [f.group for f in failures if self.after and len(self.recent[f.group]) >= self.after]

    def failures_in(self, event: Mapping[str, Any]) -> list[Failure]:
        """The failures one event records, one per group it names."""
        source, action = event.get("source"), event.get("action")
        nodes = [n for n in event.get("nodes") or [] if isinstance(n, str)]
        at = event_time(event)
        reason = str(event.get("reason") or event.get("error") or event.get("detail") or "")
        if (source, action) == ("reconciler", "replace"):
            return self._repeated_replace(nodes, at)
        if (source, action) == ("reconciler", "replace failed"):
            self.launch_failed.update(nodes)  # its "replace" event follows: counted once
        failed = (
            (source, action) in {("resume", "failed"), ("reconciler", "replace failed"),
                                 ("resume", "error"), ("resume-fail", "powered down")}
            or ((source, action) == ("reconciler", "fail") and reason.startswith(NOT_UP))
        )  # fmt: skip
        if not failed:
            return []
        what = f"{source} {action} {','.join(nodes)}: {reason}".strip()
        return [Failure(g, at, what) for g in self._groups(nodes, event.get("group"))]

    def _repeated_replace(self, nodes: Sequence[str], at: float) -> list[Failure]:
        again = []
        for node in nodes:
            if node in self.launch_failed:  # no instance made: no repair to hold
                self.launch_failed.discard(node)
                continue
            before = self.replaced_at.get(node)
            self.replaced_at[node] = at
            if before is not None and at - before <= self.window:
                again.append(node)
        what = f"replaced again within {self.window:.0f}s: "
        return [
            Failure(g, at, what + ",".join(n for n in again if self.node_group.get(n) == g))
            for g in self._groups(again, None)
        ]

    def _groups(self, nodes: Sequence[str], named: object) -> list[str]:
        groups = [named] if isinstance(named, str) else []
        for node in nodes:
            group = self.node_group.get(node)
            if group is not None and group not in groups:
                groups.append(group)
        return groups

    def reason(self, group: str) -> str:
        """The reason Slurm shows on a protected group's nodes (one line, short)."""
        window = self.recent.get(group) or deque()
        last = window[-1].what if window else "failures"
        count = len(window)
        text = f"{PROTECTED_CODE} {count} failed launches or repairs in {self.window:.0f}s"
        return f"{text}; last: {last}"[:200]

    def members(self, group: str) -> list[str]:
        return sorted(n for n, g in self.node_group.items() if g == group)


def protect(
    protection: Protection, group: str, nodes: Sequence[SlurmNode], slurm: Scontrol
) -> None:
    """Drain a group's nodes with the reason and record ``protected``. A node drained already
    (an operator's drain, a Spot notice) keeps its own reason."""
    reason = protection.reason(group)
    members = set(protection.members(group))
    todo = [n.name for n in nodes if n.name in members and "DRAIN" not in n.flags]
    slurm.update(todo, state="DRAIN", reason=reason)
    window = protection.recent.get(group) or deque()
    event = events.record(
        SOURCE, PROTECTED, group=group, nodes=sorted(members), reason=reason,
        failures=len(window), window=protection.window,
    )  # fmt: skip
    protection.protected[group] = event


def lift(
    protection: Protection, groups: Sequence[str], nodes: Sequence[SlurmNode], slurm: Scontrol
) -> list[str]:
    """Lift protected mode from ``groups`` (every protected group when empty): record
    ``lifted`` and undrain the nodes protected mode drained. Returns the groups lifted."""
    unknown = sorted(set(groups) - set(protection.node_group.values()))
    if unknown:
        raise ValueError(f"no such group: {', '.join(unknown)}")
    targets = list(groups) or sorted(protection.protected)
    drained = {
        n.name for n in nodes if n.reason.startswith(PROTECTED_CODE)
        and protection.node_group.get(n.name) in targets
    }  # fmt: skip
    lifted = [g for g in targets if g in protection.protected or any(
        protection.node_group.get(n) == g for n in drained)]  # fmt: skip
    # UNDRAIN, not RESUME: a node that is DOWN (its instance gone) stays DOWN, so no job is
    # sent there before the reconciler has replaced it.
    slurm.undrain(sorted(drained))
    for group in lifted:
        events.record(SOURCE, LIFTED, group=group, nodes=protection.members(group))
        protection.protected.pop(group, None)
        protection.recent.pop(group, None)
    return lifted
