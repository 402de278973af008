"""EC2 interruption events from an SQS queue drain the right node of a real local cluster.

The two worlds joined: a moto server (EventBridge and SQS over real HTTP) listens on the
cluster bridge's host address, an EventBridge rule sends "EC2 Spot Instance Interruption
Warning" events to a queue, and the cluster's head reads that queue with ``ck-spot-events``.
``put_events`` with a compute node's instance id then drains that node in Slurm. The node's
metadata shows no notice, so its own agent does nothing: the head's consumer acts alone.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

from tests.driver import Clusterkit
from tests.local_residue import residue

NAME = "spotsqs"
SUBNET = "10.250.201.0/24"
HOST = "10.250.201.1"  # the host's end of the cluster bridge
REGION = "eu-west-1"
QUEUE = f"{NAME}-events"
WARNING = "EC2 Spot Instance Interruption Warning"
CREDENTIALS = "[default]\naws_access_key_id = testing\naws_secret_access_key = testing\n"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def world(ck: Clusterkit) -> Iterator[tuple[Clusterkit, Any, Any]]:
    port = free_port()
    endpoint = f"http://{HOST}:{port}"
    spec = {
        "name": NAME,
        "groups": [{"name": "compute", "min": 2, "max": 2, "cpus": 1}],
        "local": {"subnet": SUBNET},
        "spot": {"events_queue_url": f"{endpoint}/123456789012/{QUEUE}",
                 "events_region": REGION, "events_endpoint_url": endpoint},
    }  # fmt: skip
    path = ck.write_spec(spec)
    ck.run("up", "-f", str(path), timeout=600)
    server = ThreadedMotoServer(ip_address=HOST, port=port, verbose=False)
    server.start()
    try:
        kwargs = {"region_name": REGION, "endpoint_url": endpoint,
                  "aws_access_key_id": "testing", "aws_secret_access_key": "testing"}  # fmt: skip
        sqs, events = boto3.client("sqs", **kwargs), boto3.client("events", **kwargs)
        arn = sqs.get_queue_attributes(
            QueueUrl=sqs.create_queue(QueueName=QUEUE)["QueueUrl"], AttributeNames=["QueueArn"]
        )["Attributes"]["QueueArn"]
        events.put_rule(Name="spot", EventPattern=json.dumps(
            {"source": ["aws.ec2"], "detail-type": [WARNING]}))  # fmt: skip
        events.put_targets(Rule="spot", Targets=[{"Id": "queue", "Arn": arn}])
        # The head's consumer finds its credentials the standard way (moto's dummy keys).
        ck.run("ssh", NAME, "--", "mkdir -p ~/.aws && cat > ~/.aws/credentials",
               input=CREDENTIALS)  # fmt: skip
        yield ck, events, sqs
    finally:
        server.stop()
        ck.run("down", NAME)
        assert residue(ck, NAME) == []


def head(ck: Clusterkit, command: str) -> str:
    return ck.run("ssh", NAME, "--", command, timeout=120).stdout


def test_put_events_drains_the_right_node(world: tuple[Clusterkit, Any, Any]) -> None:
    ck, events, _ = world
    nodes = {n["name"]: n for n in ck.status(NAME)["nodes"]}
    target = nodes["compute-st-2"]["instance_id"]
    assert target and target != nodes["compute-st-1"]["instance_id"]
    sent = events.put_events(Entries=[{
        "Source": "aws.ec2", "DetailType": WARNING,
        "Detail": json.dumps({"instance-id": target, "instance-action": "terminate"}),
    }])  # fmt: skip
    assert sent["FailedEntryCount"] == 0
    deadline = time.monotonic() + 60
    reasons: dict[str, str] = {}
    while time.monotonic() < deadline:
        out = head(ck, "sinfo -h -N -p compute -o '%N|%t|%E'")
        reasons = {line.split("|")[0]: line for line in out.splitlines()}
        if "spot:terminate" in reasons.get("compute-st-2", ""):
            break
        time.sleep(1)
    assert f"({target})" in reasons["compute-st-2"], reasons
    assert "spot:" not in reasons["compute-st-1"]  # only the node the event names
    log = head(ck, "cat /var/log/clusterkit/events.jsonl")
    consumer = [json.loads(line) for line in log.splitlines() if '"spot-events"' in line]
    assert any(e["action"] == "handling" and e["node"] == "compute-st-2" for e in consumer)
