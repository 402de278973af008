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

Requests go to ``cloudinstances`` (launch, terminate, describe, simulate) and ``cloudnotices``
(interrupt); what they keep is ``cloudrecords``. The service is also the cluster's instance
metadata service (``imds``): on ``169.254.169.254:80`` on the cluster's bridge each node reads
its own instance's metadata, and the notices sent by ``interrupt``. This module is the
process: its two servers, the dispatch of requests, and the keeper that runs the server as
its child and starts it again when it dies (nothing on the head can restart it).
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import signal
import socketserver
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from clusterkit.errors import ClusterkitError, ProviderError
from clusterkit.nodetools import events
from clusterkit.providers.local import imds, net
from clusterkit.providers.local.cloud import MODULE, socket_path
from clusterkit.providers.local.cloudinstances import Instances, Refused
from clusterkit.providers.local.cloudnotices import Interruptions
from clusterkit.state import cluster_dir


class CloudService:
    """One cluster's service: its instances and the interruptions sent to them."""

    def __init__(self, name: str) -> None:
        self.instances = Instances(name)
        self.interruptions = Interruptions(self.instances)

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        action = request.pop("action", None)
        if action == "launch":
            return self.instances.launch(**request)
        if action == "terminate":
            self.instances.terminate(request.get("instance_ids", []))
            return {}
        if action == "describe":
            return {"instances": [r.public() for r in self.instances.describe()]}
        if action == "simulate":
            return {"simulation": self.instances.simulate(**request)}
        if action == "interrupt":
            return self.interruptions.interrupt(**request)
        raise Refused("InvalidAction", f"unknown action {action!r}")


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
    service.interruptions.resume()
    server.serve_forever()


def _metadata_server(service: CloudService) -> imds.MetadataServer:
    bridge = net.bridge_name(service.instances.state.name)
    try:
        return imds.MetadataServer(
            (imds.METADATA_ADDRESS, imds.METADATA_PORT),
            service.interruptions.metadata,
            device=bridge,
        )
    except OSError as exc:
        raise ProviderError(
            f"the metadata service of {service.instances.state.name} cannot listen on "
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


SERVE = "--serve"  # the server itself; without it, the keeper that restarts the server
START_FAILED = 3  # the server's exit code when it cannot start: the keeper stops too
KEEPER_BACKOFF_SECONDS = (0.2, 1.0, 5.0, 30.0)  # after 1, 2, 3, 4+ deaths within a minute


def keep(name: str) -> int:
    """Run the server as a child and start it again whenever it dies (the head's programs
    cannot restart a process on this machine). SIGTERM ends both."""
    child: subprocess.Popen[bytes] | None = None
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.terminate()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    deaths: list[float] = []
    log = cluster_dir(name) / "cloud" / "events.jsonl"
    while not stopping:
        child = subprocess.Popen([sys.executable, "-m", MODULE, name, SERVE])
        code = child.wait()
        if stopping or code in (0, START_FAILED):  # asked to, or a start-up error for `up`
            return code
        now = time.monotonic()
        deaths = [t for t in deaths if now - t < 60.0] + [now]
        wait = KEEPER_BACKOFF_SECONDS[min(len(deaths), len(KEEPER_BACKOFF_SECONDS)) - 1]
        events.record("cloud", "service restarted", path=log, exit=code, next_in=wait)
        time.sleep(wait)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (1, 2) or args[1:] not in ([], [SERVE]):
        print(f"usage: python -m {MODULE} CLUSTER [{SERVE}]", file=sys.stderr)
        return 2
    if args[1:] != [SERVE]:
        return keep(args[0])
    try:
        serve(args[0])
    except ClusterkitError as exc:
        print(f"{time.strftime('%FT%T')} {exc}", file=sys.stderr, flush=True)
        return START_FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main())
