"""The local cloud service: one cluster's stand-in for the EC2 API.

``up`` starts it on this machine for each local cluster. The head's power-saving programs and
reconciler reach it over a Unix socket (``/var/lib/clusterkit/cloud/cloud.sock`` in the head,
``/run/clusterkit/cloud/NAME/cloud.sock`` here), one JSON request per connection:

- ``launch``  {group, nodes, instance_type, lifecycle} -> {instances, partial_error?}
- ``terminate`` {instance_ids} -> {}
- ``describe`` -> {instances}: the cluster's live compute instances, static ones included
- ``simulate`` {capacity?, fail?, boot_delay?} -> {simulation}: what ``clusterkit cloud`` sets

Like EC2 it can refuse: a capacity per instance type (and capacity kind) and a number of
launches to fail with a given error code make the failure paths real. A boot delay holds each
new node's boot script back, as a real instance takes time to boot. It launches nodes through
``LocalProvider``, so a dynamic node is exactly what ``up`` makes of a static one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import grp
import json
import os
import socket
import socketserver
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from clusterkit.errors import ClusterkitError, ProviderError, StateError
from clusterkit.nodetools.cloud import LocalCloud
from clusterkit.plan import NodePlan, plan_nodes
from clusterkit.providers.base import NodeBoot
from clusterkit.providers.local.node import alive, kill_pids
from clusterkit.state import (
    ClusterState,
    NodeState,
    atomic_write,
    cluster_lock,
    load_state,
    spec_of,
)
from clusterkit.trust import ClusterTrust

SOCKET_ROOT = Path("/run/clusterkit/cloud")
IN_HEAD = Path("/var/lib/clusterkit/cloud")  # where the head sees the socket's directory
MODULE = "clusterkit.providers.local.cloud"
START_TIMEOUT_SECONDS = 10.0


def socket_dir(cluster: str) -> Path:
    return SOCKET_ROOT / cluster


def socket_path(cluster: str) -> Path:
    return socket_dir(cluster) / "cloud.sock"


def client(cluster: str) -> LocalCloud:
    """The host's client of cluster ``cluster``'s service."""
    return LocalCloud(str(socket_path(cluster)), timeout=30.0)


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
        # Imported here: the provider imports this module to start and stop the service.
        from clusterkit.providers.local.provider import LocalProvider  # noqa: PLC0415

        self.state = load_state(name)
        self.spec = spec_of(self.state)
        self.provider = LocalProvider(self.state, self.spec)
        self.plans = {n.name: n for n in plan_nodes(self.spec) if n.role == "compute"}
        self.dir = self.state.dir / "cloud"
        self.dir.mkdir(exist_ok=True)
        self.lock = threading.Lock()
        self.records: dict[str, Record] = self._load_records()
        self.simulation = self._load_simulation()

    # -- persistence -----------------------------------------------------------------------

    def _load_records(self) -> dict[str, Record]:
        path = self.dir / "instances.json"
        if not path.exists():
            return {}
        return {k: Record(**v) for k, v in json.loads(path.read_text(encoding="utf-8")).items()}

    def _save_records(self) -> None:
        data = {k: asdict(v) for k, v in self.records.items()}
        atomic_write(self.dir / "instances.json", json.dumps(data, indent=1))

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
            new = [self._reserve(p, instance_type, lifecycle) for p in chosen]
            self._save_records()
        self._stop([r.node_state("dynamic") for r in old])
        boots = self._boots(chosen)
        with ThreadPoolExecutor(max_workers=8) as pool:
            started = list(pool.map(lambda r: self._start(r, boots[r.node]), new))
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

    def _boots(self, plans: list[NodePlan]) -> dict[str, NodeBoot]:
        """What each node boots with: what ``up`` gives a static node, plus the boot delay."""
        from clusterkit.cluster import node_boots, trusted_nodes  # noqa: PLC0415 - cycle

        trust = ClusterTrust(self.state.name, self.state.dir)
        boots = node_boots(self.spec, trust, trusted_nodes(self.spec, self.provider, trust), plans)
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
        return mine + [self._static_record(n) for n in self._static_states() if n.name not in taken]

    def _static_states(self) -> list[NodeState]:
        """Static computes ``up`` launched, alive (from the cluster's state, read fresh)."""
        try:
            state = load_state(self.state.name)
        except StateError:
            return []
        return [
            n for n in state.nodes.values()
            if n.role == "compute" and n.instance_id and self._alive(n.pids)
        ]  # fmt: skip

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
        self.wfile.write(json.dumps(reply).encode())


class _Server(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True

    def __init__(self, path: str, service: CloudService) -> None:
        self.service = service
        super().__init__(path, _Handler)


def serve(name: str) -> None:
    """Run cluster ``name``'s service until killed."""
    service = CloudService(name)
    path = socket_path(name)
    path.unlink(missing_ok=True)
    server = _Server(str(path), service)
    _share_with_slurm(path)
    server.serve_forever()


def _share_with_slurm(path: Path) -> None:
    """The head's programs run as SlurmUser: the socket is theirs to use, no one else's."""
    try:
        gid = grp.getgrnam("slurm").gr_gid
    except KeyError:
        return
    for target, mode in ((path.parent, 0o750), (path, 0o660)):
        os.chown(target, 0, gid)
        os.chmod(target, mode)


# ---------------------------------------------------------------------------------------------
# Starting and stopping it (from the provider)


def prepare_dir(cluster: str) -> Path:
    directory = socket_dir(cluster)
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o750)  # noqa: S103 - group slurm: the head's programs connect
    return directory


def start(state: ClusterState) -> int:
    """Start the service of ``state``'s cluster unless it runs; return its pid."""
    running = service_pids(state.name)
    if running and _answers(state.name):
        return running[0]
    kill_pids(running)
    import subprocess  # noqa: PLC0415

    (state.dir / "logs").mkdir(parents=True, exist_ok=True)
    with open(state.dir / "logs" / "cloud.log", "ab") as log:
        child = subprocess.Popen(
            [sys.executable, "-m", MODULE, state.name],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
            env={**os.environ, "CLUSTERKIT_HOME": str(state.dir.parent.parent)},
        )  # fmt: skip
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if _answers(state.name):
            return child.pid
        if child.poll() is not None:
            break
        time.sleep(0.05)
    kill_pids([child.pid])
    raise ProviderError(
        f"the local cloud service of {state.name} did not start; see {state.dir}/logs/cloud.log"
    )


def _answers(cluster: str) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(2)
            sock.connect(str(socket_path(cluster)))
        return True
    except OSError:
        return False


def service_pids(cluster: str) -> list[int]:
    """Processes serving cluster ``cluster`` (found by command line: works without state)."""
    wanted = [b"-m", MODULE.encode(), cluster.encode()]
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as fh:
                argv = fh.read().split(b"\0")
        except OSError:
            continue
        if argv[1:4] == wanted:
            found.append(int(entry.name))
    return found


def stop(cluster: str) -> list[str]:
    """End the service and remove its socket directory; returns what was removed."""
    removed = []
    pids = service_pids(cluster)
    if pids:
        kill_pids(pids)
        removed.append(f"cloud service (pid {', '.join(map(str, pids))})")
    directory = socket_dir(cluster)
    if directory.exists():
        for child in directory.iterdir():
            child.unlink()
        directory.rmdir()
        removed.append(f"dir {directory}")
    return removed


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(f"usage: python -m {MODULE} CLUSTER", file=sys.stderr)
        return 2
    serve(args[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
