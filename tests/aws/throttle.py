"""EC2's request throttling in front of a moto server: the token buckets EC2 documents, and
``RequestLimitExceeded`` answered as EC2 answers it (HTTP 503, its XML error document).

Source of the figures: "Request throttling for the Amazon EC2 API", Amazon EC2 Developer
Guide (https://docs.aws.amazon.com/ec2/latest/devguide/ec2-api-throttling.html). EC2 keeps a
bucket per account, Region and API action ("limits are applied to individual API actions,
not API action categories"), sized by the action's category:

- non-mutating actions (Describe*, Get*, List*): 100 tokens, refilled at 20 per second;
- unfiltered and unpaginated non-mutating actions (DescribeInstances and a few others,
  called with neither a filter nor pagination): 50 tokens, 10 per second;
- mutating actions: 50 tokens, 5 per second; the resource-intensive ones the same;
- actions with buckets of their own: RunInstances 5/2, TerminateInstances 100/5, CreateTags
  and DeleteTags 100/10.

Some actions also take resource tokens, one per instance: RunInstances 1,000 tokens, 2 per
second; TerminateInstances 1,000 and 20. The guide names no figure for CreateFleet: here it
is a mutating action whose instances take RunInstances' resource tokens (an instant fleet
launches instances as RunInstances does).

``Ec2Throttle(scale=0.1)`` divides every bucket's size by ten and keeps the refill rates:
a test cluster of 64 nodes then meets the limits a cluster of 640 would, and waits for
tokens at EC2's real rates. ``scale=1`` is EC2 itself (the benchmark's setting).

Only EC2 is throttled; every other service's calls pass. The layer keeps a count of the
calls it let through and of those it refused, per action, at ``GET /_throttle/stats``
(``POST /_throttle/reset`` empties the counts and refills the buckets).
"""

from __future__ import annotations

import io
import json
import logging
import threading
import time
import urllib.parse
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import BaseWSGIServer, make_server

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WsgiApp = Callable[[Environ, StartResponse], Iterable[bytes]]

NON_MUTATING = (100, 20.0)
UNFILTERED = (50, 10.0)
MUTATING = (50, 5.0)
OWN_BUCKETS = {
    "RunInstances": (5, 2.0),
    "StartInstances": (5, 2.0),
    "TerminateInstances": (100, 5.0),
    "CreateTags": (100, 10.0),
    "DeleteTags": (100, 10.0),
}
UNFILTERED_ACTIONS = frozenset({
    "DescribeInstances", "DescribeInstanceStatus", "DescribeNetworkInterfaces",
    "DescribeSecurityGroups", "DescribeSnapshots", "DescribeSpotInstanceRequests",
    "DescribeVolumes",
})  # fmt: skip
INSTANCE_TOKENS = {"launch": (1000, 2.0), "terminate": (1000, 20.0)}
NON_MUTATING_PREFIXES = ("Describe", "Get", "List", "Search")


@dataclass
class TokenBucket:
    """``capacity`` tokens at most, ``refill`` more each second."""

    capacity: float
    refill: float
    clock: Callable[[], float] = time.monotonic
    tokens: float = field(init=False)
    stamp: float = field(init=False)

    def __post_init__(self) -> None:
        self.tokens = self.capacity
        self.stamp = self.clock()

    def level(self) -> float:
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.refill)
        self.stamp = now
        return self.tokens


def filtered_or_paginated(params: dict[str, str]) -> bool:
    """Whether a describe call names what it wants (filters or ids) or pages: EC2 then
    takes its tokens from the larger bucket."""
    return any(
        key.startswith(("Filter.", "InstanceId.", "GroupId.", "VolumeId.", "SnapshotId."))
        or key in ("MaxResults", "NextToken")
        for key in params
    )


def instance_count(action: str, params: dict[str, str]) -> tuple[str, int] | None:
    """The resource bucket an action draws on and how many tokens it takes."""
    if action == "RunInstances":
        return "launch", int(params.get("MaxCount") or params.get("MinCount") or 1)
    if action == "CreateFleet":
        return "launch", int(params.get("TargetCapacitySpecification.TotalTargetCapacity", 1))
    if action == "TerminateInstances":
        return "terminate", sum(1 for key in params if key.startswith("InstanceId."))
    return None


def request_bucket(action: str, params: dict[str, str]) -> tuple[int, float]:
    """The (size, refill) of the bucket EC2 takes an ``action`` call's token from."""
    if action in OWN_BUCKETS:
        return OWN_BUCKETS[action]
    if action.startswith(NON_MUTATING_PREFIXES):
        if action in UNFILTERED_ACTIONS and not filtered_or_paginated(params):
            return UNFILTERED
        return NON_MUTATING
    return MUTATING


class Ec2Throttle:
    """EC2's buckets for one account and Region; ``admit`` takes a call's tokens or refuses."""

    def __init__(self, scale: float = 1.0, clock: Callable[[], float] = time.monotonic):
        if not 0 < scale <= 1:
            raise ValueError(f"scale {scale}: must be in (0, 1]")
        self.scale = scale
        self.clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[str, TokenBucket] = {}
        self.passed: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()

    def _bucket(self, key: str, size: float, refill: float) -> TokenBucket:
        if key not in self._buckets:
            self._buckets[key] = TokenBucket(max(1.0, size * self.scale), refill, self.clock)
        return self._buckets[key]

    def admit(self, action: str, params: dict[str, str]) -> bool:
        """Take the call's tokens (a request token, and its instances' resource tokens) if
        every bucket holds them; else take none and refuse it."""
        with self._lock:
            size, refill = request_bucket(action, params)  # unfiltered calls: a bucket apart
            wanted = [(self._bucket(f"request:{action}:{size}", size, refill), 1.0)]
            resource = instance_count(action, params)
            if resource is not None:
                kind, count = resource
                # A request for more than the bucket holds waits for a full bucket, not forever.
                bucket = self._bucket(f"instances:{kind}", *INSTANCE_TOKENS[kind])
                wanted.append((bucket, min(float(count), bucket.capacity)))
            if all(bucket.level() >= need for bucket, need in wanted):
                for bucket, need in wanted:
                    bucket.tokens -= need
                self.passed[action] += 1
                return True
            self.refused[action] += 1
            return False

    def stats(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {"passed": dict(self.passed), "refused": dict(self.refused)}

    def reset(self) -> None:
        with self._lock:
            self._buckets.clear()
            self.passed.clear()
            self.refused.clear()


def ec2_call(environ: Environ, body: bytes) -> tuple[str, dict[str, str]] | None:
    """(action, parameters) of an EC2 Query API request, or None for any other request."""
    auth = environ.get("HTTP_AUTHORIZATION", "")
    if "/ec2/aws4_request" not in auth:  # SigV4's scope names the service
        return None
    params = dict(urllib.parse.parse_qsl(body.decode("utf-8", "replace")))
    action = params.pop("Action", "")
    return (action, params) if action else None


LIMIT_EXCEEDED = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error>'
    "<Code>RequestLimitExceeded</Code><Message>Request limit exceeded.</Message>"
    "</Error></Errors><RequestID>{request}</RequestID></Response>"
)


class ThrottledApp:
    """WSGI middleware: EC2 calls pass through ``throttle`` to ``app``."""

    def __init__(self, app: WsgiApp, throttle: Ec2Throttle) -> None:
        self.app = app
        self.throttle = throttle

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/_throttle/stats":
            return _reply(start_response, "200 OK", json.dumps(self.throttle.stats()))
        if path == "/_throttle/reset":
            self.throttle.reset()
            return _reply(start_response, "200 OK", "{}")
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(body)  # for moto, which reads it again
        call = ec2_call(environ, body)
        if call is not None and not self.throttle.admit(*call):
            text = LIMIT_EXCEEDED.format(request=uuid.uuid4())
            return _reply(start_response, "503 Service Unavailable", text, "text/xml")
        return self.app(environ, start_response)


def _reply(
    start_response: StartResponse, status: str, text: str, kind: str = "application/json"
) -> Iterator[bytes]:
    data = text.encode()
    start_response(status, [("Content-Type", kind), ("Content-Length", str(len(data)))])
    yield data


class ThrottledMotoServer:
    """A moto server on ``host`` behind ``throttle``, in a thread of this process."""

    def __init__(self, host: str, throttle: Ec2Throttle) -> None:
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise
        self.throttle = throttle
        app = ThrottledApp(DomainDispatcherApplication(create_backend_app), throttle)
        self._server: BaseWSGIServer = make_server(
            host, 0, app, threaded=True, request_handler=MotoRequestHandler
        )
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://{self._server.host}:{self._server.port}"

    def start(self) -> ThrottledMotoServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join()
