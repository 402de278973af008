"""The instance metadata service (IMDSv2) and the cloud service's simulated interruptions.

The HTTP server runs on 127.0.0.1 with a fake mapping of source addresses to instances, so
no root or bridge is needed; the real thing, on 169.254.169.254 bound to a cluster's bridge,
is exercised by tests/integration/test_imds.py. The cloud service's interruptions run
against a cluster state in a temporary home, with its terminations recorded, not carried out.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from clusterkit.nodetools import events
from clusterkit.providers.local import imds
from clusterkit.providers.local.cloudinstances import Refused
from clusterkit.providers.local.cloudsvc import CloudService
from clusterkit.spec import parse_spec
from clusterkit.state import ClusterState, NodeState

TTL = imds.TTL_HEADER
TOKEN = imds.TOKEN_HEADER


def metadata(**changes: Any) -> imds.InstanceMetadata:
    base = imds.InstanceMetadata(
        instance_id="i-0123456789abcdef0", instance_type="c7i.large",
        local_ipv4="10.250.0.3", hostname="compute-st-1", lifecycle="spot",
    )  # fmt: skip
    return dataclasses.replace(base, **changes)


class Served:
    """A metadata server on 127.0.0.1; ``instances`` maps source addresses to answers."""

    def __init__(self) -> None:
        self.instances: dict[str, imds.InstanceMetadata] = {"127.0.0.1": metadata()}
        self.server = imds.MetadataServer(("127.0.0.1", 0), self.instances.get)
        self.port = self.server.server_address[1]

    def request(
        self, method: str, path: str, headers: dict[str, str] | None = None
    ) -> tuple[int, str, http.client.HTTPResponse]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            conn.request(method, path, headers=headers or {})
            response = conn.getresponse()
            return response.status, response.read().decode(), response
        finally:
            conn.close()

    def token(self, ttl: str = "60") -> str:
        status, body, _ = self.request("PUT", imds.TOKEN_PATH, {TTL: ttl})
        assert status == 200, body
        return body

    def get(self, path: str, token: str | None = None) -> tuple[int, str]:
        token = self.token() if token is None else token
        status, body, _ = self.request("GET", path, {TOKEN: token})
        return status, body


@pytest.fixture
def served() -> Iterator[Served]:
    s = Served()
    thread = threading.Thread(target=s.server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield s
    s.server.shutdown()
    s.server.server_close()


# ---------------------------------------------------------------------------------------------
# The token flow


def test_a_token_opens_the_metadata(served: Served) -> None:
    status, token, response = served.request("PUT", imds.TOKEN_PATH, {TTL: "21600"})
    assert status == 200 and len(token) >= 40
    assert response.getheader(TTL) == "21600"
    assert response.getheader("Content-Type") == "text/plain"
    assert served.get("/latest/meta-data/instance-id", token) == (200, "i-0123456789abcdef0")
    assert served.token() != token  # every token is new


@pytest.mark.parametrize("headers", [{}, {TOKEN: ""}, {TOKEN: "made-up"}])
def test_a_get_without_a_valid_token_is_401(served: Served, headers: dict[str, str]) -> None:
    status, _, _ = served.request("GET", "/latest/meta-data/instance-id", headers)
    assert status == 401


@pytest.mark.parametrize("ttl", [None, "0", "21601", "-5", "ten", "1.5", ""])
def test_a_token_request_with_a_bad_ttl_is_400(served: Served, ttl: str | None) -> None:
    status, _, _ = served.request("PUT", imds.TOKEN_PATH, {} if ttl is None else {TTL: ttl})
    assert status == 400


def test_the_ttl_bounds_are_accepted(served: Served) -> None:
    assert served.token("1") and served.token("21600")


def test_a_token_expires(served: Served) -> None:
    clock = [1000.0]
    served.server.tokens = imds.Tokens(clock=lambda: clock[0])
    token = served.token("10")
    assert served.get("/latest/meta-data/hostname", token)[0] == 200
    clock[0] += 10
    assert served.get("/latest/meta-data/hostname", token)[0] == 401


def test_a_token_is_good_only_for_the_address_it_was_issued_to() -> None:
    tokens = imds.Tokens()
    token = tokens.issue("10.250.0.3", 60)
    assert tokens.valid("10.250.0.3", token)
    assert not tokens.valid("10.250.0.4", token)


def test_tokens_of_one_address_are_bounded() -> None:
    tokens = imds.Tokens()
    issued = [tokens.issue("10.250.0.3", 60) for _ in range(imds.MAX_TOKENS_PER_SOURCE + 3)]
    assert len(tokens.by_source["10.250.0.3"]) == imds.MAX_TOKENS_PER_SOURCE
    assert not tokens.valid("10.250.0.3", issued[0]) and tokens.valid("10.250.0.3", issued[-1])


@pytest.mark.parametrize(
    ("method", "path"), [("PUT", imds.TOKEN_PATH), ("GET", "/latest/meta-data/instance-id")]
)
def test_a_forwarded_request_is_403(served: Served, method: str, path: str) -> None:
    headers = {"X-Forwarded-For": "10.0.0.1", TTL: "60", TOKEN: served.token()}
    assert served.request(method, path, headers)[0] == 403


def test_an_address_that_is_no_node_gets_404(served: Served) -> None:
    token = served.token()
    served.instances.clear()
    assert served.request("PUT", imds.TOKEN_PATH, {TTL: "60"})[0] == 404
    assert served.get("/latest/meta-data/instance-id", token)[0] == 404


def test_a_put_elsewhere_is_404(served: Served) -> None:
    assert served.request("PUT", "/latest/meta-data/instance-id", {TTL: "60"})[0] == 404


# ---------------------------------------------------------------------------------------------
# What the metadata says


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("instance-id", "i-0123456789abcdef0"),
        ("instance-type", "c7i.large"),
        ("local-ipv4", "10.250.0.3"),
        ("hostname", "compute-st-1"),
        ("placement/availability-zone", "local-1a"),
        ("placement/", "availability-zone"),
        ("placement", "availability-zone"),
        ("instance-life-cycle", "spot"),
    ],
)
def test_each_path(served: Served, path: str, expected: str) -> None:
    status, body, response = served.request(
        "GET", f"/latest/meta-data/{path}", {TOKEN: served.token()}
    )
    assert (status, body) == (200, expected)
    assert response.getheader("Content-Type") == "text/plain"


@pytest.mark.parametrize("path", ["/latest/meta-data/", "/latest/meta-data"])
def test_the_listing(served: Served, path: str) -> None:
    assert served.get(path) == (200, "\n".join([
        "hostname", "instance-id", "instance-life-cycle", "instance-type", "local-ipv4",
        "placement/",
    ]))  # fmt: skip


@pytest.mark.parametrize(
    "path",
    [
        "/latest/meta-data/ami-id",
        "/latest/meta-data/instance-id/x",
        "/latest/user-data",
        "/",
        "/latest/meta-datax",
    ],
)
def test_unknown_paths_are_404(served: Served, path: str) -> None:
    assert served.get(path)[0] == 404


def test_an_interruption_notice(served: Served) -> None:
    path = "/latest/meta-data/spot/instance-action"
    assert served.get(path)[0] == 404
    when = 1795348800.0  # 2026-11-22T12:00:00Z
    served.instances["127.0.0.1"] = metadata(instance_action=("hibernate", when + 0.9))
    status, body = served.get(path)
    assert status == 200
    assert body == '{"action": "hibernate", "time": "2026-11-22T12:00:00Z"}'
    assert json.loads(body) == {"action": "hibernate", "time": "2026-11-22T12:00:00Z"}
    assert "spot/" in served.get("/latest/meta-data/")[1].splitlines()
    assert served.get("/latest/meta-data/spot/") == (200, "instance-action")


def test_a_rebalance_recommendation(served: Served) -> None:
    path = "/latest/meta-data/events/recommendations/rebalance"
    assert served.get(path)[0] == 404
    served.instances["127.0.0.1"] = metadata(rebalance_at=1795348800.0)
    assert served.get(path) == (200, '{"noticeTime": "2026-11-22T12:00:00Z"}')
    assert served.get("/latest/meta-data/events/") == (200, "recommendations/")
    assert served.get("/latest/meta-data/spot/instance-action")[0] == 404


def test_each_source_sees_its_own_instance() -> None:
    mine, other = metadata(), metadata(instance_id="i-other", hostname="compute-st-2")
    assert imds.resolve(mine.entries(), "instance-id") == "i-0123456789abcdef0"
    assert imds.resolve(other.entries(), "hostname") == "compute-st-2"
    assert imds.resolve(mine.entries(), "nope") is None


# ---------------------------------------------------------------------------------------------
# The cloud service: metadata per node, interruptions, and their persistence

CLUSTER = "svc"
SUBNET = "10.250.9"


def write_state(home: Path, st1_instance: str = "i-st1") -> ClusterState:
    spec = parse_spec({"name": CLUSTER, "groups": [{
        "name": "compute", "min": 1, "max": 2, "instance_types": ["c7i.large"],
    }]})  # fmt: skip
    me = {"init": os.getpid(), "sshd": os.getpid()}  # alive, so the nodes count as running
    nodes = {
        "svc-head": NodeState(name="svc-head", role="head", address=f"{SUBNET}.2",
                              instance_id="i-head", pids=me, status="running"),
        "compute-st-1": NodeState(name="compute-st-1", role="compute", group="compute",
                                  index=1, address=f"{SUBNET}.3", instance_id=st1_instance,
                                  pids=me, status="running"),
    }  # fmt: skip
    state = ClusterState(
        name=CLUSTER, provider="local", nodes=nodes, spec=spec.model_dump(mode="json"),
        network={"subnet": f"{SUBNET}.0/24"},
    )  # fmt: skip
    state.save()
    return state


class Service:
    """A cloud service on a written state; ``ended`` lists the nodes it terminated."""

    def __init__(self, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.service = CloudService(CLUSTER)
        self.ended: list[tuple[str, str | None]] = []
        monkeypatch.setattr(
            self.service.instances.provider, "terminate",
            lambda node: self.ended.append((node.name, node.instance_id)),
        )  # fmt: skip

    def events(self) -> list[dict[str, object]]:
        return list(events.read(self.service.interruptions.events))


@pytest.fixture
def service(ck_home: Path, monkeypatch: pytest.MonkeyPatch) -> Service:
    write_state(ck_home)
    return Service(ck_home, monkeypatch)


def wait_for(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_the_service_answers_each_node_with_its_own_instance(service: Service) -> None:
    head = service.service.interruptions.metadata(f"{SUBNET}.2")
    st1 = service.service.interruptions.metadata(f"{SUBNET}.3")
    assert head is not None and st1 is not None
    assert (head.instance_id, head.hostname, head.lifecycle, head.instance_type) == (
        "i-head", "svc-head", "on-demand", "m7i.large",
    )  # fmt: skip
    assert (st1.instance_id, st1.hostname, st1.lifecycle, st1.instance_type) == (
        "i-st1", "compute-st-1", "spot", "c7i.large",
    )  # fmt: skip
    # compute-dy-1: powered down
    assert service.service.interruptions.metadata(f"{SUBNET}.4") is None
    assert service.service.interruptions.metadata("10.0.0.9") is None


@pytest.mark.parametrize(
    ("node", "action", "seconds", "code"),
    [
        ("svc-head", "terminate", 5, "UnsupportedOperation"),
        ("compute-dy-1", "terminate", 5, "IncorrectInstanceState"),
        ("compute-st-9", "terminate", 5, "InvalidParameterValue"),
        ("compute-st-1", "reboot", 5, "InvalidParameterValue"),
        ("compute-st-1", "terminate", -1, "InvalidParameterValue"),
        ("compute-st-1", "terminate", "5", "InvalidParameterValue"),
    ],
)
def test_interruptions_refused(
    service: Service, node: str, action: str, seconds: object, code: str
) -> None:
    with pytest.raises(Refused) as info:
        service.service.interruptions.interrupt(node, action, seconds)  # type: ignore[arg-type]
    assert info.value.code == code
    assert service.service.instances.notices == {} and service.events() == []


def interrupt(service: Service, action: str, seconds: float) -> dict[str, object]:
    """An interruption as the Unix socket's clients send it."""
    request = {"action": "interrupt", "node": "compute-st-1", "instance_action": action}
    return service.service.handle(request | {"in_seconds": seconds})


def test_a_notice_shows_in_the_metadata_then_ends_the_instance(service: Service) -> None:
    before = time.time()
    reply = interrupt(service, "stop", 0.5)
    assert reply["instance_id"] == "i-st1" and reply["action"] == "stop"
    seen = service.service.interruptions.metadata(f"{SUBNET}.3")
    assert seen is not None and seen.instance_action is not None
    assert seen.instance_action[0] == "stop"
    assert before + 0.5 <= seen.instance_action[1] <= time.time() + 0.5
    assert reply["time"] == imds.rfc3339(seen.instance_action[1])
    assert service.ended == []
    wait_for(lambda: service.ended == [("compute-st-1", "i-st1")])
    wait_for(lambda: len(service.events()) == 2)
    sent, ended = service.events()
    assert (sent["action"], sent["node"], sent["instance_id"], sent["instance_action"]) == (
        "spot-notice-sent", "compute-st-1", "i-st1", "stop",
    )  # fmt: skip
    assert sent["action_time"] == reply["time"] and sent["source"] == "cloud"
    assert (ended["action"], ended["instance_id"], ended["instance_action"]) == (
        "spot-terminated", "i-st1", "stop",
    )  # fmt: skip
    assert service.service.instances.notices == {}


def test_a_second_notice_to_the_same_instance_is_refused(service: Service) -> None:
    interrupt(service, "terminate", 60)
    with pytest.raises(Refused) as info:
        interrupt(service, "terminate", 1)
    assert info.value.code == "IncorrectInstanceState" and "i-st1" in info.value.message


def test_a_rebalance_recommendation_ends_nothing(service: Service) -> None:
    reply = interrupt(service, "rebalance", 0)
    seen = service.service.interruptions.metadata(f"{SUBNET}.3")
    assert seen is not None and seen.rebalance_at is not None and seen.instance_action is None
    assert reply["time"] == imds.rfc3339(seen.rebalance_at)
    assert [e["action"] for e in service.events()] == ["rebalance-sent"]
    time.sleep(0.2)
    assert service.ended == []


def test_notices_survive_a_restart_and_a_pending_end_is_carried_out(
    ck_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_state(ck_home)
    first = Service(ck_home, monkeypatch)
    # it dies first
    monkeypatch.setattr(first.service.interruptions, "_schedule", lambda notice: None)
    interrupt(first, "rebalance", 0)
    interrupt(first, "terminate", 0.3)
    time.sleep(0.4)
    assert first.ended == []
    second = Service(ck_home, monkeypatch)
    seen = second.service.interruptions.metadata(f"{SUBNET}.3")
    assert seen is not None and seen.rebalance_at is not None
    assert seen.instance_action is not None and seen.instance_action[0] == "terminate"
    second.service.interruptions.resume()
    wait_for(lambda: second.ended == [("compute-st-1", "i-st1")])


def test_a_node_launched_again_meanwhile_is_left_alone(ck_home: Path, service: Service) -> None:
    interrupt(service, "terminate", 0.3)
    write_state(ck_home, st1_instance="i-new")  # the node is a new instance now
    time.sleep(0.6)
    assert service.ended == []
    assert [e["action"] for e in service.events()] == ["spot-notice-sent"]
    assert service.service.instances.notices == {}
    seen = service.service.interruptions.metadata(f"{SUBNET}.3")
    assert seen is not None and seen.instance_id == "i-new" and seen.instance_action is None


def test_a_launch_that_fails_unexpectedly_leaves_no_pending_record(service: Service) -> None:
    def broken(plans: object) -> None:
        raise ImportError("half-installed")

    service.service.instances._boots = broken  # type: ignore[method-assign,assignment]
    with pytest.raises(ImportError):
        service.service.instances.launch("compute", ["compute-dy-1"], "c7i.large", "spot")
    assert service.service.instances.records == {}
    assert service.service.interruptions.metadata(f"{SUBNET}.4") is None
