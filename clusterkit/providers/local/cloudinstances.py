"""The local cloud's instances: launching, terminating and describing a cluster's compute
instances, as the EC2 API does, and the simulation that makes it refuse like EC2.

Like EC2 it can refuse: a capacity per instance type (and capacity kind) and a number of
launches to fail with a given error code make the failure paths real. A boot delay holds each
new node's boot script back, as a real instance takes time to boot. It launches nodes through
``LocalProvider``, so a dynamic node is exactly what ``up`` makes of a static one. The
instances ``up`` launched (static nodes, the head) are read from the cluster's state.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from typing import Any

from clusterkit.boot import NodeBoot, node_boots, trusted_nodes
from clusterkit.errors import ClusterkitError, StateError
from clusterkit.plan import NodePlan, head_name, plan_nodes
from clusterkit.providers.local.cloudrecords import (
    Notice,
    Record,
    Simulation,
    load_notices,
    load_records,
    load_simulation,
    save_records,
    save_simulation,
)
from clusterkit.providers.local.node import alive, started_at
from clusterkit.providers.local.provider import LocalProvider
from clusterkit.state import ClusterState, NodeState, cluster_lock, load_state, spec_of
from clusterkit.trust import ClusterTrust


class Refused(Exception):
    """A request the service turns down with an EC2-style error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Instances:
    """One cluster's instances as its cloud service keeps them, behind ``lock``."""

    def __init__(self, name: str) -> None:
        self.state = load_state(name)
        self.spec = spec_of(self.state)
        self.provider = LocalProvider(self.state, self.spec)
        self.plans = {n.name: n for n in plan_nodes(self.spec) if n.role == "compute"}
        self.dir = self.state.dir / "cloud"
        self.dir.mkdir(exist_ok=True)
        self.lock = threading.Lock()
        self.records: dict[str, Record] = load_records(self.dir)
        self.notices: dict[str, Notice] = load_notices(self.dir)
        self.simulation: Simulation = load_simulation(
            self.dir, float(self.spec.local.boot_delay_seconds)
        )

    def save(self) -> None:
        """The instances and the notices sent to them (called with ``self.lock`` held)."""
        save_records(self.dir, self.records, self.notices)

    def _save_simulation(self) -> None:
        save_simulation(self.dir, self.simulation)

    def launch(
        self, group: str, nodes: list[str], instance_type: str, lifecycle: str
    ) -> dict[str, Any]:
        plans = self._plans(group, nodes)
        with self.lock:
            self._take_failure()
            allowed = self._room(instance_type, lifecycle, len(plans))
            if allowed == 0:
                raise Refused("InsufficientInstanceCapacity",
                              f"no {lifecycle} capacity for {instance_type}")  # fmt: skip
            chosen = plans[:allowed]
            old = [r for r in self.records.values() if r.node in {p.name for p in chosen}]
            for rec in old:
                del self.records[rec.instance_id]
                self.notices.pop(rec.instance_id, None)
            new = [self._reserve(p, instance_type, lifecycle) for p in chosen]
            self.save()
        self._stop([r.node_state("dynamic") for r in old])
        try:
            boots = self._boots(chosen)
            with ThreadPoolExecutor(max_workers=8) as pool:
                started = list(pool.map(lambda r: self._start(r, boots[r.node]), new))
        except BaseException:
            self._unreserve(new)
            raise
        with self.lock:
            for rec in started:
                if rec.state != "running":
                    self.records.pop(rec.instance_id, None)
            self.save()
        self._note_static([r for r in started if r.state == "running"])
        reply: dict[str, Any] = {"instances": [r.public() for r in started if r.state == "running"]}
        if len(chosen) < len(plans) or any(r.state != "running" for r in started):
            reply["partial_error"] = {
                "code": "InsufficientInstanceCapacity",
                "message": f"{len(chosen)} of {len(plans)} {instance_type} {lifecycle} instances",
            }
        return reply

    def _plans(self, group: str, nodes: list[str]) -> list[NodePlan]:
        plans = []
        for name in nodes:
            plan = self.plans.get(name)
            if plan is None or plan.group != group:
                raise Refused("InvalidParameterValue", f"{name} is not a node of group {group}")
            plans.append(plan)
        return plans

    def _take_failure(self) -> None:
        sim = self.simulation
        if sim.fail_count > 0:
            sim.fail_count -= 1
            self._save_simulation()
            raise Refused(
                sim.fail_code, f"simulated launch failure ({sim.fail_count} more to come)"
            )

    def _room(self, instance_type: str, lifecycle: str, wanted: int) -> int:
        limit = self.simulation.limit(instance_type, lifecycle)
        if limit is None:
            return wanted
        keyed = f"{instance_type}:{lifecycle}" in self.simulation.capacity
        used = sum(
            1 for r in self.records.values()
            if r.instance_type == instance_type and (not keyed or r.lifecycle == lifecycle)
        )  # fmt: skip
        return max(0, min(wanted, limit - used))

    def _reserve(self, plan: NodePlan, instance_type: str, lifecycle: str) -> Record:
        rec = Record(
            instance_id=f"i-{uuid.uuid4().hex[:17]}", node=plan.name, group=plan.group or "",
            address=self.provider.address(plan), instance_type=instance_type,
            lifecycle=lifecycle, launched_at=time.time(), index=plan.index,
        )  # fmt: skip
        self.records[rec.instance_id] = rec
        return rec

    def _unreserve(self, records: list[Record]) -> None:
        """Forget records a failed launch left pending: ``describe`` would show them forever."""
        with self.lock:
            for rec in records:
                if rec.state == "pending":
                    self.records.pop(rec.instance_id, None)
            self.save()

    def _boots(self, plans: list[NodePlan]) -> dict[str, NodeBoot]:
        """What each node boots with: what ``up`` gives a static node, plus the boot delay."""
        trust = ClusterTrust(self.state.name, self.state.dir)
        trusted = trusted_nodes(self.spec, self.provider.address, trust)
        boots = node_boots(self.spec, trust, trusted, plans, self.provider.traits)
        delay = self.simulation.boot_delay
        if delay <= 0:
            return boots
        return {name: _delayed(boot, delay) for name, boot in boots.items()}

    def _start(self, rec: Record, boot: NodeBoot) -> Record:
        plan = self.plans[rec.node]
        try:
            self.provider.terminate(rec.node_state(plan.kind))  # whatever was left of the node
            launched = self.provider.launch(plan, boot)
        except ClusterkitError as exc:
            # The caller sees the node missing from the launch; the reason goes to the log.
            print(f"{time.strftime('%FT%T')} launch of {rec.node} failed: {exc}", file=sys.stderr,
                  flush=True)  # fmt: skip
            rec.state = "terminated"
            return rec
        rec.pids = dict(launched.pids)
        rec.state = "running"
        return rec

    def _note_static(self, records: list[Record]) -> None:
        """A replaced static node goes into the cluster's state too, when ``up`` is not busy."""
        static = [r for r in records if self.plans[r.node].static]
        if not static:
            return
        with contextlib.suppress(StateError), cluster_lock(self.state.name, timeout=2):
            state = load_state(self.state.name)
            for rec in static:
                state.nodes[rec.node] = rec.node_state("static")
            state.save()

    def terminate(self, ids: list[str]) -> None:
        with self.lock:
            gone = [self.records.pop(i) for i in ids if i in self.records]
            for i in ids:
                self.notices.pop(i, None)
            self.save()
        statics = {n.instance_id: n for n in self.static_states()}
        self._stop(
            [r.node_state("dynamic") for r in gone] + [statics[i] for i in ids if i in statics]
        )

    def _stop(self, nodes: list[NodeState]) -> None:
        for node in nodes:
            self.provider.terminate(node)

    def describe(self) -> list[Record]:
        """Live instances; one found dead (its processes killed) is cleaned up and left out."""
        with self.lock:
            # A pending record is still being launched: it has no processes yet.
            dead = [
                r for r in self.records.values()
                if r.state != "pending" and not self.alive(r.pids)
            ]  # fmt: skip
            for rec in dead:
                del self.records[rec.instance_id]
            if dead:
                self.save()
            mine = list(self.records.values())
        self._stop([r.node_state("dynamic") for r in dead])
        taken = {r.node for r in mine}
        found = mine + [self.static_record(n) for n in self.static_states() if n.name not in taken]
        self._forget_notices({r.instance_id for r in found})
        return found

    def _forget_notices(self, live: set[str]) -> None:
        """Drop what was sent to instances gone by other means; a pending end stays: its
        timer drops it."""
        with self.lock:
            stale = [i for i, n in self.notices.items() if i not in live and n.at is None]
            for iid in stale:
                del self.notices[iid]
            if stale:
                self.save()

    def static_states(self, state: ClusterState | None = None) -> list[NodeState]:
        """Static computes ``up`` launched, alive (from the cluster's state, read fresh)."""
        state = state or self.fresh_state()
        if state is None:
            return []
        return [
            n for n in state.nodes.values()
            if n.role == "compute" and n.instance_id and self.alive(n.pids)
        ]  # fmt: skip

    def fresh_state(self) -> ClusterState | None:
        try:
            return load_state(self.state.name)
        except StateError:
            return None

    def static_record(self, node: NodeState) -> Record:
        group = next(g for g in self.spec.groups if g.name == node.group)
        return Record(
            instance_id=node.instance_id or "", node=node.name, group=node.group or "",
            address=node.address or "", instance_type=group.instance_types[0],
            lifecycle="on-demand" if group.capacity == "on-demand" else "spot",
            launched_at=started_at(node.pids.get("init")), state="running", pids=node.pids,
            index=node.index,
        )  # fmt: skip

    @staticmethod
    def alive(pids: dict[str, int]) -> bool:
        """An instance lives while its node's init does (the kernel ends the node with it);
        a daemon that died inside it, sshd included, is the node's supervisor's to restart."""
        init = pids.get("init")
        return init is not None and alive(init)

    def simulate(
        self,
        capacity: dict[str, int | None] | None = None,
        fail_code: str | None = None,
        fail_count: int | None = None,
        boot_delay: float | None = None,
    ) -> dict[str, Any]:
        with self.lock:
            sim = self.simulation
            for key, value in (capacity or {}).items():
                if value is None:
                    sim.capacity.pop(key, None)
                else:
                    sim.capacity[key] = value
            if fail_count is not None:
                sim.fail_count = fail_count
                sim.fail_code = fail_code or "InsufficientInstanceCapacity"
            if boot_delay is not None:
                sim.boot_delay = boot_delay
            self._save_simulation()
            return asdict(sim)

    def instance_at(self, address: str) -> Record | None:
        """The instance at ``address``: the service's own, else a static one, else the head."""
        with self.lock:
            mine = next((r for r in self.records.values() if r.address == address), None)
        if mine is not None:
            return mine
        state = self.fresh_state()
        if state is None:
            return None
        static = next((n for n in self.static_states(state) if n.address == address), None)
        if static is not None:
            return self.static_record(static)
        head = state.nodes.get(head_name(self.state.name))
        if head is not None and head.address == address and head.instance_id:
            return self.head_record(head)
        return None

    def head_record(self, node: NodeState) -> Record:
        head = self.spec.head
        return Record(
            instance_id=node.instance_id or "", node=node.name, group="",
            address=node.address or "", instance_type=head.instance_type,
            lifecycle="spot" if head.capacity == "spot" else "on-demand",
            launched_at=started_at(node.pids.get("init")), state="running", pids=node.pids,
            index=node.index,
        )  # fmt: skip

    def running_instance(self, node: str) -> Record | None:
        with self.lock:
            mine = next((r for r in self.records.values() if r.node == node), None)
        if mine is not None:
            return mine if mine.state == "running" and self.alive(mine.pids) else None
        static = next((n for n in self.static_states() if n.name == node), None)
        return self.static_record(static) if static is not None else None


def _delayed(boot: NodeBoot, delay: float) -> NodeBoot:
    """``boot`` whose boot script first waits ``delay`` seconds, as a slow instance would."""
    if not boot.user_data:
        return boot
    shebang, rest = boot.user_data.split("\n", 1)
    sleep = f"sleep {delay:g}  # simulated boot time\n"
    return dataclasses.replace(boot, user_data=f"{shebang}\n{sleep}{rest}")
