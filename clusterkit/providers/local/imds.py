"""The instance metadata service of a local cluster: EC2's IMDSv2, answered per node.

The cluster's cloud service runs it on ``169.254.169.254:80``, bound to the cluster's bridge,
and tells nodes apart by the source address of each request, as EC2 does. Only IMDSv2 is
served (a session token is required, as with ``HttpTokens=required``):

- ``PUT /latest/api/token`` with ``X-aws-ec2-metadata-token-ttl-seconds: 1..21600``
  returns a token; a GET without a valid token of the same source address gets 401;
- any request with ``X-Forwarded-For`` gets 403 (EC2 refuses what a proxy relays);
- ``GET /latest/meta-data/...``: the instance's id, type, address, host name, zone and
  life cycle; ``spot/instance-action`` and ``events/recommendations/rebalance`` are 404
  until an interruption notice or a rebalance recommendation is sent to the instance.

It is standard library only; what each node sees comes from a ``lookup`` function, so the
server is tested on its own with a fake one.
"""

from __future__ import annotations

import json
import secrets
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

METADATA_ADDRESS = "169.254.169.254"
METADATA_PORT = 80
AVAILABILITY_ZONE = "local-1a"

TOKEN_PATH = "/latest/api/token"  # noqa: S105 - a path, not a secret
META_DATA = "/latest/meta-data"
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"  # noqa: S105 - a header name
MAX_TTL_SECONDS = 21600
# A node that asks for a new token on every poll must not grow the table without bound.
MAX_TOKENS_PER_SOURCE = 64
MAX_BODY_BYTES = 4096


def rfc3339(ts: float) -> str:
    """UTC, to the second, as EC2 writes times in metadata: ``2026-11-22T12:00:00Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


@dataclass(frozen=True)
class InstanceMetadata:
    """What one instance's metadata says; ``None`` notices are 404."""

    instance_id: str
    instance_type: str
    local_ipv4: str
    hostname: str
    lifecycle: str  # spot | on-demand
    availability_zone: str = AVAILABILITY_ZONE
    instance_action: tuple[str, float] | None = None  # (terminate|stop|hibernate, when)
    rebalance_at: float | None = None  # when a rebalance recommendation was sent

    def entries(self) -> dict[str, str]:
        """Every leaf under ``/latest/meta-data/``, by its path there."""
        found = {
            "instance-id": self.instance_id,
            "instance-type": self.instance_type,
            "local-ipv4": self.local_ipv4,
            "hostname": self.hostname,
            "placement/availability-zone": self.availability_zone,
            "instance-life-cycle": self.lifecycle,
        }
        if self.instance_action is not None:
            action, when = self.instance_action
            found["spot/instance-action"] = json.dumps({"action": action, "time": rfc3339(when)})
        if self.rebalance_at is not None:
            found["events/recommendations/rebalance"] = json.dumps(
                {"noticeTime": rfc3339(self.rebalance_at)}
            )
        return found


# The instance a source address belongs to, or None: not a node of this cluster.
Lookup = Callable[[str], InstanceMetadata | None]


def resolve(entries: dict[str, str], path: str) -> str | None:
    """The answer to ``meta-data/PATH``: a leaf's value, a directory's listing, or None.

    A listing names what is directly under the directory, sub-directories with a trailing
    slash, one per line, as EC2 lists them.
    """
    if path in entries:
        return entries[path]
    prefix = path.strip("/") + "/" if path.strip("/") else ""
    names = set()
    for key in entries:
        if key.startswith(prefix):
            first, sep, _ = key[len(prefix) :].partition("/")
            names.add(first + sep)
    return "\n".join(sorted(names)) if names else None


class Tokens:
    """Session tokens, each valid for the source address it was issued to until it expires."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.lock = threading.Lock()
        self.by_source: dict[str, dict[str, float]] = {}  # source -> token -> expiry

    def issue(self, source: str, ttl: int) -> str:
        token = secrets.token_urlsafe(42)
        now = self.clock()
        with self.lock:
            mine = self.by_source.setdefault(source, {})
            for old in [t for t, expiry in mine.items() if expiry <= now]:
                del mine[old]
            while len(mine) >= MAX_TOKENS_PER_SOURCE:
                del mine[next(iter(mine))]  # the oldest
            mine[token] = now + ttl
        return token

    def valid(self, source: str, token: str) -> bool:
        with self.lock:
            expiry = self.by_source.get(source, {}).get(token)
        return expiry is not None and expiry > self.clock()


def parse_ttl(value: str | None) -> int | None:
    """The TTL a token request asks for, or None when it is missing or out of range."""
    if value is None or not value.strip().isdigit():
        return None
    ttl = int(value)
    return ttl if 1 <= ttl <= MAX_TTL_SECONDS else None


class _Handler(BaseHTTPRequestHandler):
    server: MetadataServer
    server_version = "EC2ws"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    timeout = 10  # an idle kept-alive connection does not hold a thread for long

    def do_PUT(self) -> None:
        self._discard_body()
        caller = self._caller()
        if caller is None:
            return
        source, _ = caller
        if urlsplit(self.path).path != TOKEN_PATH:
            self._reply(404, "Not Found")
            return
        ttl = parse_ttl(self.headers.get(TTL_HEADER))
        if ttl is None:
            self._reply(400, "Bad Request")
            return
        token = self.server.tokens.issue(source, ttl)
        self._reply(200, token, {TTL_HEADER: str(ttl)})

    def do_GET(self) -> None:
        caller = self._caller()
        if caller is None:
            return
        source, metadata = caller
        token = self.headers.get(TOKEN_HEADER, "")
        if not self.server.tokens.valid(source, token):
            self._reply(401, "Unauthorized")
            return
        path = urlsplit(self.path).path
        answer = None
        if path == META_DATA or path.startswith(META_DATA + "/"):
            answer = resolve(metadata.entries(), path[len(META_DATA) :].lstrip("/"))
        if answer is None:
            self._reply(404, "Not Found")
            return
        self._reply(200, answer)

    def _caller(self) -> tuple[str, InstanceMetadata] | None:
        """The caller's address and instance when it may be answered; else reply, None."""
        if self.headers.get("X-Forwarded-For") is not None:
            self._reply(403, "Forbidden")
            return None
        source = str(self.client_address[0])
        metadata = self.server.lookup(source)
        if metadata is None:
            self._reply(404, "Not Found")  # not a node of this cluster
            return None
        return source, metadata

    def _discard_body(self) -> None:
        length = self.headers.get("Content-Length", "0")
        size = int(length) if length.isdigit() else 0
        if size > MAX_BODY_BYTES:
            self.close_connection = True
            return
        if size:
            self.rfile.read(size)

    def _reply(self, status: int, body: str, headers: dict[str, str] | None = None) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        """Silent: every node polls every 2 s; a line per request would drown the log."""


class MetadataServer(ThreadingHTTPServer):
    """The metadata service; with ``device`` its socket hears only that interface.

    ``SO_BINDTODEVICE`` is what lets every cluster's service bind ``169.254.169.254:80``
    at once: sockets bound to different devices do not clash on the same address and port.
    """

    def __init__(self, address: tuple[str, int], lookup: Lookup, device: str | None = None) -> None:
        self.lookup = lookup
        self.device = device
        self.tokens = Tokens()
        super().__init__(address, _Handler)

    def handle_error(self, request: object, client_address: object) -> None:
        """A node that gave up waiting (its curl timed out) is not an error of the service;
        anything else is logged as socketserver does."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)  # type: ignore[arg-type]

    def server_bind(self) -> None:
        if self.device:
            # Before bind: the bind is checked against sockets bound to the same device only.
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, self.device.encode())
        # Not HTTPServer.server_bind: its getfqdn() would ask DNS about the address.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)
