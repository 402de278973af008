"""Interruptions in the local cloud: Spot interruption notices and rebalance recommendations
sent to instances (what ``clusterkit interrupt`` asks for), and the instance metadata in which
each node reads them (what the metadata service, ``imds``, answers).

A notice ends its instance ``in_seconds`` later, by instance id, as ``terminate`` would.
Notices are kept with the instances, so a restarted service still shows them and still ends
an instance whose time has come. Interruptions are logged, as the head logs its actions, in
``cloud/events.jsonl`` of the cluster's state directory.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

from clusterkit.errors import ClusterkitError
from clusterkit.nodetools import events
from clusterkit.plan import head_name
from clusterkit.providers.base import REBALANCE
from clusterkit.providers.local import imds
from clusterkit.providers.local.cloud import EVENT_SOURCE, MAX_NOTICE_SECONDS, NOTICE_ACTIONS
from clusterkit.providers.local.cloudinstances import Instances, Refused
from clusterkit.providers.local.cloudrecords import Notice, Record


class Interruptions:
    """The notices of one cluster's instances (kept, with them, by ``instances``)."""

    def __init__(self, instances: Instances) -> None:
        self.instances = instances
        self.events = instances.dir / "events.jsonl"

    def metadata(self, source: str) -> imds.InstanceMetadata | None:
        """What the node at address ``source`` reads in its metadata; None: no node there."""
        rec = self.instances.instance_at(source)
        if rec is None:
            return None
        with self.instances.lock:
            notice = self.instances.notices.get(rec.instance_id)
        action = None
        if notice is not None and notice.action is not None and notice.at is not None:
            action = (notice.action, notice.at)
        return imds.InstanceMetadata(
            instance_id=rec.instance_id, instance_type=rec.instance_type,
            local_ipv4=rec.address, hostname=rec.node, lifecycle=rec.lifecycle,
            instance_action=action, rebalance_at=notice.rebalance_at if notice else None,
        )  # fmt: skip

    def interrupt(self, node: str, instance_action: str, in_seconds: float = 0.0) -> dict[str, Any]:
        """Send ``node``'s instance a Spot interruption notice, or a rebalance recommendation.

        A notice ends the instance ``in_seconds`` later, as ``terminate`` would: by instance
        id, so a node launched again meanwhile (a new instance) is left alone.
        """
        action = instance_action
        rec = self._interruptible(node, action, in_seconds)
        now = time.time()
        with self.instances.lock:
            notice = self.instances.notices.get(rec.instance_id) or Notice(rec.instance_id, node)
            if action == REBALANCE:
                notice.rebalance_at = now
            elif notice.action is not None and notice.at is not None:
                raise Refused(
                    "IncorrectInstanceState",
                    f"{node} ({rec.instance_id}) has a notice already: "
                    f"{notice.action} at {imds.rfc3339(notice.at)}",
                )
            else:
                notice.action, notice.at = action, now + in_seconds
            self.instances.notices[rec.instance_id] = notice
            self.instances.save()
        if action == REBALANCE:
            self._log("rebalance-sent", notice, REBALANCE)
            return {"node": node, "instance_id": rec.instance_id, "action": action,
                    "time": imds.rfc3339(now)}  # fmt: skip
        self._log("spot-notice-sent", notice, action, action_time=imds.rfc3339(now + in_seconds))
        self._schedule(notice)
        return {"node": node, "instance_id": rec.instance_id, "action": action,
                "time": imds.rfc3339(now + in_seconds), "in_seconds": in_seconds}  # fmt: skip

    def _interruptible(self, node: str, action: str, in_seconds: float) -> Record:
        """``node``'s running instance, if it may be interrupted so; else ``Refused``."""
        if action not in (*NOTICE_ACTIONS, REBALANCE):
            expected = ", ".join((*NOTICE_ACTIONS, REBALANCE))
            raise Refused("InvalidParameterValue", f"action {action!r}: expected {expected}")
        number = isinstance(in_seconds, int | float) and not isinstance(in_seconds, bool)
        if not number or not 0 <= in_seconds <= MAX_NOTICE_SECONDS:
            raise Refused(
                "InvalidParameterValue",
                f"in_seconds {in_seconds!r}: expected 0 to {MAX_NOTICE_SECONDS:g}",
            )
        if node == head_name(self.instances.state.name):
            raise Refused("UnsupportedOperation", f"{node} is the head node: never interrupted")
        if node not in self.instances.plans:
            raise Refused(
                "InvalidParameterValue",
                f"{node} is not a compute node of {self.instances.state.name}",
            )
        rec = self.instances.running_instance(node)
        if rec is None:
            raise Refused(
                "IncorrectInstanceState",
                f"{node} has no running instance (a powered-down node has none)",
            )
        return rec

    def resume(self) -> None:
        """Every notice sent before a restart still ends its instance (at once if overdue)."""
        with self.instances.lock:
            pending = [n for n in self.instances.notices.values() if n.at is not None]
        for notice in pending:
            self._schedule(notice)

    def _schedule(self, notice: Notice) -> None:
        delay = max(0.0, (notice.at or 0.0) - time.time())
        timer = threading.Timer(delay, self._carry_out, args=(notice.instance_id,))
        timer.daemon = True
        timer.start()

    def _carry_out(self, instance_id: str) -> None:
        """End an instance whose notice has run out, exactly as ``terminate`` does."""
        with self.instances.lock:
            notice = self.instances.notices.get(instance_id)
            live = instance_id in self.instances.records
        if notice is None or notice.action is None:
            return  # ended by other means meanwhile (terminate dropped the notice)
        live = live or any(n.instance_id == instance_id for n in self.instances.static_states())
        try:
            self.instances.terminate([instance_id])
        except ClusterkitError as exc:
            # It stays noted: the next start of the service tries again.
            print(f"{time.strftime('%FT%T')} interruption of {instance_id} failed: {exc}",
                  file=sys.stderr, flush=True)  # fmt: skip
            return
        if live:
            self._log("spot-terminated", notice, notice.action)

    def _log(self, event: str, notice: Notice, action: str, **fields: Any) -> None:
        events.record(
            EVENT_SOURCE, event, path=self.events, node=notice.node,
            instance_id=notice.instance_id, instance_action=action, **fields,
        )  # fmt: skip
