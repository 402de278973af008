"""The local cloud service: one cluster's stand-in for the EC2 API.

``up`` starts it on this machine for each local cluster. The head's power-saving programs and
reconciler reach it over a Unix socket (``/var/lib/clusterkit/cloud/cloud.sock`` in the head,
``/run/clusterkit/cloud/NAME/cloud.sock`` here), one JSON request per connection:

- ``launch``  {group, nodes, instance_type, lifecycle} -> {instances, partial_error?}
- ``terminate`` {instance_ids} -> {}
- ``describe`` -> {instances}: the cluster's live compute instances, static ones included
- ``simulate`` {capacity?, fail?, boot_delay?} -> {simulation}: what ``clusterkit cloud`` sets
- ``interrupt`` {node, instance_action, in_seconds} -> {node, instance_id, action, time}: a
  simulated Spot interruption notice (``terminate|stop|hibernate``: the instance ends
  ``in_seconds`` later) or a rebalance recommendation (``rebalance``), what ``clusterkit
  interrupt`` sends (``instance_action``, EC2's word: ``action`` names the request)

Like EC2 it can refuse: a capacity per instance type (and capacity kind) and a number of
launches to fail with a given error code make the failure paths real. A boot delay holds each
new node's boot script back, as a real instance takes time to boot. It launches nodes through
``LocalProvider``, so a dynamic node is exactly what ``up`` makes of a static one.

It is also the cluster's instance metadata service (``imds``): on ``169.254.169.254:80`` on
the cluster's bridge each node reads its own instance's metadata, and the notices sent by
``interrupt``. Notices are kept with the instances, so a restarted service still shows them
and still ends an instance whose time has come. Interruptions are logged, as the head logs
its actions, in ``cloud/events.jsonl`` of the cluster's state directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import grp
import json
import os
import socketserver
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from clusterkit.boot import NodeBoot, node_boots, trusted_nodes
from clusterkit.errors import ClusterkitError, ProviderError, StateError
from clusterkit.nodetools import events
from clusterkit.plan import NodePlan, head_name, plan_nodes
from clusterkit.providers.base import REBALANCE
from clusterkit.providers.local import imds, net
from clusterkit.providers.local.cloud import (
    EVENT_SOURCE,
    MAX_NOTICE_SECONDS,
    MODULE,
    NOTICE_ACTIONS,
    socket_path,
)
from clusterkit.providers.local.node import alive
from clusterkit.providers.local.provider import LocalProvider
from clusterkit.state import (
    ClusterState,
    NodeState,
    atomic_write,
    cluster_lock,
    load_state,
    spec_of,
)
from clusterkit.trust import ClusterTrust

# ---------------------------------------------------------------------------------------------
# What the service keeps: instances and the simulation settings


@dataclass
class Simulation:
    capacity: dict[str, int] = field(default_factory=dict)  # "TYPE" or "TYPE:LIFECYCLE" -> max
    fail_code: str = ""
    fail_count: int = 0
    boot_delay: float = 0.0

    def limit(self, instance_type: str, lifecycle: str) -> int | None:
        keyed = self.capacity.get(f"{instance_type}:{lifecycle}")
        return keyed if keyed is not None else self.capacity.get(instance_type)


@dataclass
class Record:
    """One instance the service launched (a dynamic node, or a static node it replaced)."""

    instance_id: str
    node: str
    group: str
    address: str
    instance_type: str
    lifecycle: str
    launched_at: float
    state: str = "pending"
    pids: dict[str, int] = field(default_factory=dict)
    index: int = 0

    def public(self) -> dict[str, Any]:
        data = asdict(self)
        del data["pids"], data["index"]
        return data

    def node_state(self, kind: str) -> NodeState:
        return NodeState(
            name=self.node, role="compute", group=self.group, kind=kind,
            index=self.index, address=self.address, instance_id=self.instance_id,
            pids=self.pids, status="running",
        )  # fmt: skip


@dataclass
class Notice:
    """What has been sent to one instance: an interruption notice, a rebalance recommendation.

    Keyed by instance id, not node: a node launched again is a new instance, and the notice
    (and the termination it announces) stays with the old one.
    """

    instance_id: str
    node: str
    action: str | None = None  # terminate | stop | hibernate, once a notice is sent
    at: float | None = None  # when the instance ends
    rebalance_at: float | None = None  # when a rebalance recommendation was sent


class Refused(Exception):
    """A request the service turns down with an EC2-style error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# ---------------------------------------------------------------------------------------------
# The service


class CloudService:
    def __init__(self, name: str) -> None:
        self.state = load_state(name)
        self.spec = spec_of(self.state)
        self.provider = LocalProvider(self.state, self.spec)
        self.plans = {n.name: n for n in plan_nodes(self.spec) if n.role == "compute"}
        self.dir = self.state.dir / "cloud"
        self.dir.mkdir(exist_ok=True)
        self.lock = threading.Lock()
        self.records: dict[str, Record] = self._load_records()
        self.notices: dict[str, Notice] = self._load_notices()
        self.simulation = self._load_simulation()
        self.events = self.dir / "events.jsonl"

    # -- persistence -----------------------------------------------------------------------

    def _load_records(self) -> dict[str, Record]:
        path = self.dir / "instances.json"
        if not path.exists():
            return {}
        return {k: Record(**v) for k, v in json.loads(path.read_text(encoding="utf-8")).items()}

    def _load_notices(self) -> dict[str, Notice]:
        path = self.dir / "notices.json"
        if not path.exists():
            return {}
        return {k: Notice(**v) for k, v in json.loads(path.read_text(encoding="utf-8")).items()}

    def _save_records(self) -> None:
        """The instances and the notices sent to them (called with ``self.lock`` held)."""
        data = {k: asdict(v) for k, v in self.records.items()}
        atomic_write(self.dir / "instances.json", json.dumps(data, indent=1))
        notices = {k: asdict(v) for k, v in self.notices.items()}
        atomic_write(self.dir / "notices.json", json.dumps(notices, indent=1))

    def _load_simulation(self) -> Simulation:
        path = self.dir / "simulation.json"
        if path.exists():
            return Simulation(**json.loads(path.read_text(encoding="utf-8")))
        return Simulation(boot_delay=float(self.spec.local.boot_delay_seconds))

    def _save_simulation(self) -> None:
        atomic_write(self.dir / "simulation.json", json.dumps(asdict(self.simulation)))

    # -- requests --------------------------------------------------------------------------

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        action = request.pop("action", None)
        if action == "launch":
            return self.launch(**request)
        if action == "terminate":
            self.terminate(request.get("instance_ids", []))
            return {}
        if action == "describe":
            return {"instances": [r.public() for r in self.describe()]}
        if action == "simulate":
            return {"simulation": self.simulate(**request)}
        if action == "interrupt":
            return self.interrupt(**request)
        raise Refused("InvalidAction", f"unknown action {action!r}")

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
            self._save_records()
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
            self._save_records()
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
            self._save_records()

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
            self._save_records()
        statics = {n.instance_id: n for n in self._static_states()}
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
                if r.state != "pending" and not self._alive(r.pids)
            ]  # fmt: skip
            for rec in dead:
                del self.records[rec.instance_id]
            if dead:
                self._save_records()
            mine = list(self.records.values())
        self._stop([r.node_state("dynamic") for r in dead])
        taken = {r.node for r in mine}
        found = mine + [
            self._static_record(n) for n in self._static_states() if n.name not in taken
        ]
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
                self._save_records()

    def _static_states(self, state: ClusterState | None = None) -> list[NodeState]:
        """Static computes ``up`` launched, alive (from the cluster's state, read fresh)."""
        state = state or self._fresh_state()
        if state is None:
            return []
        return [
            n for n in state.nodes.values()
            if n.role == "compute" and n.instance_id and self._alive(n.pids)
        ]  # fmt: skip

    def _fresh_state(self) -> ClusterState | None:
        try:
            return load_state(self.state.name)
        except StateError:
            return None

    def _static_record(self, node: NodeState) -> Record:
        group = next(g for g in self.spec.groups if g.name == node.group)
        return Record(
            instance_id=node.instance_id or "", node=node.name, group=node.group or "",
            address=node.address or "", instance_type=group.instance_types[0],
            lifecycle="on-demand" if group.capacity == "on-demand" else "spot",
            launched_at=0.0, state="running", pids=node.pids, index=node.index,
        )  # fmt: skip

    @staticmethod
    def _alive(pids: dict[str, int]) -> bool:
        return bool(pids) and all(alive(p) for p in pids.values())

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

    # -- metadata and interruptions --------------------------------------------------------

    def metadata(self, source: str) -> imds.InstanceMetadata | None:
        """What the node at address ``source`` reads in its metadata; None: no node there."""
        rec = self._instance_at(source)
        if rec is None:
            return None
        with self.lock:
            notice = self.notices.get(rec.instance_id)
        action = None
        if notice is not None and notice.action is not None and notice.at is not None:
            action = (notice.action, notice.at)
        return imds.InstanceMetadata(
            instance_id=rec.instance_id, instance_type=rec.instance_type,
            local_ipv4=rec.address, hostname=rec.node, lifecycle=rec.lifecycle,
            instance_action=action, rebalance_at=notice.rebalance_at if notice else None,
        )  # fmt: skip

    def _instance_at(self, address: str) -> Record | None:
        """The instance at ``address``: the service's own, else a static one, else the head."""
        with self.lock:
            mine = next((r for r in self.records.values() if r.address == address), None)
        if mine is not None:
            return mine
        state = self._fresh_state()
        if state is None:
            return None
        static = next((n for n in self._static_states(state) if n.address == address), None)
        if static is not None:
            return self._static_record(static)
        head = state.nodes.get(head_name(self.state.name))
        if head is not None and head.address == address and head.instance_id:
            return self._head_record(head)
        return None

    def _head_record(self, node: NodeState) -> Record:
        head = self.spec.head
        return Record(
            instance_id=node.instance_id or "", node=node.name, group="",
            address=node.address or "", instance_type=head.instance_type,
            lifecycle="spot" if head.capacity == "spot" else "on-demand",
            launched_at=0.0, state="running", pids=node.pids, index=node.index,
        )  # fmt: skip

    def interrupt(self, node: str, instance_action: str, in_seconds: float = 0.0) -> dict[str, Any]:
        """Send ``node``'s instance a Spot interruption notice, or a rebalance recommendation.

        A notice ends the instance ``in_seconds`` later, as ``terminate`` would: by instance
        id, so a node launched again meanwhile (a new instance) is left alone.
        """
        action = instance_action
        rec = self._interruptible(node, action, in_seconds)
        now = time.time()
        with self.lock:
            notice = self.notices.get(rec.instance_id) or Notice(rec.instance_id, node)
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
            self.notices[rec.instance_id] = notice
            self._save_records()
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
        if node == head_name(self.state.name):
            raise Refused("UnsupportedOperation", f"{node} is the head node: never interrupted")
        if node not in self.plans:
            raise Refused(
                "InvalidParameterValue", f"{node} is not a compute node of {self.state.name}"
            )
        rec = self._running_instance(node)
        if rec is None:
            raise Refused(
                "IncorrectInstanceState",
                f"{node} has no running instance (a powered-down node has none)",
            )
        return rec

    def _running_instance(self, node: str) -> Record | None:
        with self.lock:
            mine = next((r for r in self.records.values() if r.node == node), None)
        if mine is not None:
            return mine if mine.state == "running" and self._alive(mine.pids) else None
        static = next((n for n in self._static_states() if n.name == node), None)
        return self._static_record(static) if static is not None else None

    def resume_interruptions(self) -> None:
        """Every notice sent before a restart still ends its instance (at once if overdue)."""
        with self.lock:
            pending = [n for n in self.notices.values() if n.at is not None]
        for notice in pending:
            self._schedule(notice)

    def _schedule(self, notice: Notice) -> None:
        delay = max(0.0, (notice.at or 0.0) - time.time())
        timer = threading.Timer(delay, self._carry_out, args=(notice.instance_id,))
        timer.daemon = True
        timer.start()

    def _carry_out(self, instance_id: str) -> None:
        """End an instance whose notice has run out, exactly as ``terminate`` does."""
        with self.lock:
            notice = self.notices.get(instance_id)
            live = instance_id in self.records
        if notice is None or notice.action is None:
            return  # ended by other means meanwhile (terminate dropped the notice)
        live = live or any(n.instance_id == instance_id for n in self._static_states())
        try:
            self.terminate([instance_id])
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


def _delayed(boot: NodeBoot, delay: float) -> NodeBoot:
    """``boot`` whose boot script first waits ``delay`` seconds, as a slow instance would."""
    if not boot.user_data:
        return boot
    shebang, rest = boot.user_data.split("\n", 1)
    sleep = f"sleep {delay:g}  # simulated boot time\n"
    return dataclasses.replace(boot, user_data=f"{shebang}\n{sleep}{rest}")


class _Handler(socketserver.StreamRequestHandler):
    server: _Server

    def handle(self) -> None:
        try:
            request = json.loads(self.rfile.read() or b"{}")
            reply = self.server.service.handle(request)
        except Refused as exc:
            reply = {"error": {"code": exc.code, "message": exc.message}}
        except Exception as exc:  # noqa: BLE001 - the caller gets the error, the service lives
            reply = {"error": {"code": "InternalError", "message": f"{type(exc).__name__}: {exc}"}}
        # ``start`` only checks that the socket answers: it leaves without reading.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.wfile.write(json.dumps(reply).encode())


class _Server(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True

    def __init__(self, path: str, service: CloudService) -> None:
        self.service = service
        super().__init__(path, _Handler)


def serve(name: str) -> None:
    """Run cluster ``name``'s service until killed."""
    service = CloudService(name)
    # The metadata service first: if it cannot listen, the service fails to start (and
    # `up` says so) rather than answering on its socket without it.
    metadata = _metadata_server(service)
    threading.Thread(target=metadata.serve_forever, name="imds", daemon=True).start()
    path = socket_path(name)
    path.unlink(missing_ok=True)
    server = _Server(str(path), service)
    _share_with_slurm(path)
    service.resume_interruptions()
    server.serve_forever()


def _metadata_server(service: CloudService) -> imds.MetadataServer:
    bridge = net.bridge_name(service.state.name)
    try:
        return imds.MetadataServer(
            (imds.METADATA_ADDRESS, imds.METADATA_PORT), service.metadata, device=bridge
        )
    except OSError as exc:
        raise ProviderError(
            f"the metadata service of {service.state.name} cannot listen on "
            f"{imds.METADATA_ADDRESS}:{imds.METADATA_PORT} on {bridge} ({exc}); "
            f"`clusterkit up` puts the address on the bridge"
        ) from exc


def _share_with_slurm(path: Path) -> None:
    """The head's programs run as SlurmUser: the socket is theirs to use, no one else's."""
    try:
        gid = grp.getgrnam("slurm").gr_gid
    except KeyError:
        return
    for target, mode in ((path.parent, 0o750), (path, 0o660)):
        os.chown(target, 0, gid)
        os.chmod(target, mode)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(f"usage: python -m {MODULE} CLUSTER", file=sys.stderr)
        return 2
    try:
        serve(args[0])
    except ClusterkitError as exc:
        print(f"{time.strftime('%FT%T')} {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
