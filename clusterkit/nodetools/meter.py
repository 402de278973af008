"""The meter: the head's record of every compute instance's life, for the cost ledger.

Each reconciler pass hands the meter what the provider describes (static and dynamic
instances alike). An instance seen for the first time is logged ``instance up`` with its
type, capacity, zone (where there are zones) and launch time (the provider's, not the
pass's); one no longer described, or no longer alive, is logged ``instance gone`` with the
pass that missed it (``at``) and the last that saw it (``last_seen``): its end lies between
the two. The ledger narrows that from
the event that ended it where there is one (a suspend, an interruption, a replacement).

The log is the meter's only memory: a restarted reconciler reads the lives still open from it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from clusterkit.nodetools import events
from clusterkit.nodetools.cloud import Instance

SOURCE = "meter"
UP = "instance up"
GONE = "instance gone"


@dataclass
class Meter:
    """Instances alive at the last pass, by id, and when that pass was."""

    open: dict[str, dict[str, Any]] = field(default_factory=dict)
    last_pass: float | None = None

    @classmethod
    def from_log(cls, logged: Iterable[dict[str, Any]]) -> Meter:
        meter = cls()
        for event in logged:
            if event.get("source") != SOURCE:
                continue
            if event.get("action") == UP:
                meter.open[str(event["instance"])] = event
            elif event.get("action") == GONE:
                meter.open.pop(str(event["instance"]), None)
        return meter

    def observe(self, instances: Sequence[Instance], now: float) -> list[dict[str, Any]]:
        """The events this pass makes: lives begun and lives ended since the last one."""
        alive = {i.instance_id: i for i in instances if i.alive}
        found: list[dict[str, Any]] = []
        for inst in alive.values():
            if inst.instance_id not in self.open:
                fields = {
                    "instance": inst.instance_id, "node": inst.node, "group": inst.group,
                    "instance_type": inst.instance_type, "lifecycle": inst.lifecycle,
                    "launched_at": events.utc(inst.launched_at or now),
                    **({"zone": inst.zone} if inst.zone else {}),
                }  # fmt: skip
                self.open[inst.instance_id] = fields
                found.append({"action": UP, **fields})
        for instance_id in [i for i in self.open if i not in alive]:
            life = self.open.pop(instance_id)
            seen = events.utc(self.last_pass) if self.last_pass is not None else None
            found.append({
                "action": GONE, "instance": instance_id, "node": life.get("node", ""),
                "last_seen": seen, "at": events.utc(now),
            })  # fmt: skip
        self.last_pass = now
        return found

    def record(self, instances: Sequence[Instance], now: float) -> None:
        for found in self.observe(instances, now):
            events.record(SOURCE, found.pop("action"), **found)
