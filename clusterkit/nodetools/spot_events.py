"""``ck-spot-events``: the head's consumer of EC2 interruption events from an SQS queue.

EventBridge rules deliver three kinds of ``aws.ec2`` events to the cluster's queue: "EC2 Spot
Instance Interruption Warning" (``detail``: ``instance-id``, ``instance-action``), "EC2
Instance Rebalance Recommendation" and "EC2 Instance State-change Notification". This loop
long-polls the queue, maps each event's instance id to its Slurm node (the cloud API's
``describe``, local or EC2) and calls the Spot agents' handler for it.

The node's own agent is the better handler (it can signal ``ck-run`` on the node): the
consumer waits ``DEFER_SECONDS`` after the event and acts only if the node is not drained for
that instance yet, that is when the agent is gone or late. A state change is recorded; the
reconciler deals with instances that end.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clusterkit.nodetools import events
from clusterkit.nodetools.cloud import Cloud
from clusterkit.nodetools.clouds import cloud_from_config, load_config
from clusterkit.nodetools.spot import CONFIG, REASON_PREFIX, Handler, Notice, SpotConfig
from clusterkit.nodetools.spot import parse_time as parse_rfc3339

SPOT_WARNING = "EC2 Spot Instance Interruption Warning"
REBALANCE = "EC2 Instance Rebalance Recommendation"
STATE_CHANGE = "EC2 Instance State-change Notification"
SPOT_LEAD_SECONDS = 120.0  # EC2 warns two minutes before it reclaims a Spot instance
DEFER_SECONDS = 6.0  # the node's agent polls every 2 s: let it act first
WAIT_SECONDS = 10  # SQS long poll


@dataclass(frozen=True)
class Ec2Event:
    kind: str  # notice | rebalance | state
    instance_id: str
    time: float  # when EventBridge saw it
    action: str = ""  # terminate | stop | hibernate (notice); the new state (state)


def parse_event(body: str) -> Ec2Event | None:
    """An EventBridge ``aws.ec2`` event from an SQS message body; None for anything else."""
    try:
        data = json.loads(body)
        kind = {SPOT_WARNING: "notice", REBALANCE: "rebalance", STATE_CHANGE: "state"}.get(
            data.get("detail-type", "")
        )
        detail = data["detail"]
        if kind is None or data.get("source") != "aws.ec2":
            return None
        action = detail.get("instance-action", "") if kind == "notice" else detail.get("state", "")
        return Ec2Event(kind, str(detail["instance-id"]), parse_rfc3339(data["time"]), action)
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


@dataclass
class Consumer:
    handler: Handler
    cloud: Cloud
    record: Callable[..., dict[str, Any]]
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], None] = time.sleep

    def consume(self, event: Ec2Event) -> str:
        """Act on one event; returns what was done (for the log and the tests)."""
        node = self._node_of(event.instance_id)
        base = {"instance": event.instance_id, "node": node, "kind": event.kind}
        if node is None:
            self.record("spot-events", "unknown-instance", **base)
            return "unknown-instance"
        if event.kind == "state":
            self.record("spot-events", "instance-state", **base, state=event.action)
            return "recorded"
        self.sleep(max(0.0, event.time + DEFER_SECONDS - self.clock()))
        reason = self.handler.slurm.node_reason(node)
        if reason.startswith(REASON_PREFIX) and f"({event.instance_id})" in reason:
            self.record("spot-events", "left-to-agent", **base)
            return "left-to-agent"
        if event.kind == "rebalance":
            notice = Notice(node, event.instance_id, "rebalance", event.time)
        else:
            end = event.time + SPOT_LEAD_SECONDS
            notice = Notice(node, event.instance_id, event.action or "terminate", end)
        self.record("spot-events", "handling", **base)
        self.handler.handle(notice)
        return "handled"

    def _node_of(self, instance_id: str) -> str | None:
        for inst in self.cloud.describe():
            if inst.instance_id == instance_id:
                return inst.node
        return None


def queue_client(queue: dict[str, Any]) -> Any:
    import boto3  # noqa: PLC0415 - only the head's consumer needs it

    return boto3.client(
        "sqs", region_name=queue.get("region") or None, endpoint_url=queue.get("endpoint_url")
    )


def run(consumer: Consumer, queue: dict[str, Any], once: bool = False) -> int:
    """Long-poll the queue forever (``once``: one poll); a message is deleted once handled."""
    sqs = None
    last_error = ""
    while True:
        try:
            sqs = sqs or queue_client(queue)
            reply = sqs.receive_message(
                QueueUrl=queue["url"], MaxNumberOfMessages=10, WaitTimeSeconds=WAIT_SECONDS
            )
            for message in reply.get("Messages", []):
                event = parse_event(message.get("Body", ""))
                if event is not None:
                    consumer.consume(event)
                sqs.delete_message(QueueUrl=queue["url"], ReceiptHandle=message["ReceiptHandle"])
            last_error = ""
        except Exception as exc:  # noqa: BLE001 - a consumer logs and tries again
            sqs = None  # credentials or endpoint may come later: a new client next time
            error = f"{type(exc).__name__}: {exc}"[-300:]
            if error != last_error:
                consumer.record("spot-events", "error", detail=error)
            last_error = error
            time.sleep(2)
        if once:
            return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ck-spot-events", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--once", action="store_true", help="one poll, then exit")
    args = parser.parse_args(argv)
    config = SpotConfig.load(args.config)
    queue = config.events_queue
    if not queue:
        print("ck-spot-events: no events_queue in the Spot settings", file=sys.stderr)
        return 2
    # On the head there are no jobs' processes to signal: local_processes=None.
    handler = Handler(config, local_processes=None)
    consumer = Consumer(handler, cloud_from_config(load_config()), events.record)
    events.record("spot-events", "started", queue=queue["url"])
    return run(consumer, queue, once=args.once)


if __name__ == "__main__":
    sys.exit(main())
