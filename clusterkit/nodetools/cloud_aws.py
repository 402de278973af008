"""The AWS backend of the head's cloud API: EC2 ``CreateFleet`` (type ``instant``).

``AwsCloud.launch`` asks for one instance per node in batches, of exactly one ``Option``
(instance type and capacity kind) across every subnet of the group, Spot with the
``price-capacity-optimized`` strategy; throttled calls are retried with exponential backoff.
The fallback to the next option is the business of the caller, which gets the provider's own
error code back (``InsufficientInstanceCapacity``, ...), and partial results.

Instances carry the tags ``clusterkit:cluster``, ``clusterkit:group`` and ``clusterkit:node``;
the last one differs per instance, so it is set right after the fleet call (a fleet tags all
its instances alike). boto3 is imported when a backend is made: the controller has it, and so
has the AWS node image, but node tools must import without it (standard library only).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Any

from clusterkit.nodetools.cloud import (
    ON_DEMAND,
    SPOT,
    Cloud,
    CloudError,
    Instance,
    LaunchResult,
    Option,
)

TAG_CLUSTER = "clusterkit:cluster"
TAG_GROUP = "clusterkit:group"
TAG_NODE = "clusterkit:node"

# Instances per CreateFleet call: one call per batch keeps the price-capacity-optimized
# choice over the whole batch, and a large batch that fails loses only that batch.
BATCH_SIZE = 100
# Codes that mean "slow down", for EC2 and the other APIs the head calls.
THROTTLING_CODES = frozenset({
    "RequestLimitExceeded", "Throttling", "ThrottlingException", "TooManyRequestsException",
})  # fmt: skip
MAX_TRIES = 6
BACKOFF_BASE_SECONDS = 0.5
ALIVE_STATES = ["pending", "running", "stopping", "stopped", "shutting-down"]


def client_error_code(exc: Exception) -> str | None:
    """The AWS error code of a botocore ``ClientError``, or None for any other exception."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = response.get("Error", {}).get("Code")
        return str(code) if code else None
    return None


def backoff(tries: int) -> float:
    """Full-jitter exponential backoff: AWS's advice for throttled callers."""
    return random.uniform(0, BACKOFF_BASE_SECONDS * 2**tries)  # noqa: S311 - jitter, not crypto


def batches(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class AwsCloud(Cloud):
    """One cluster's compute instances on EC2.

    ``groups`` maps a group to its launch template id and subnets (from cloud.json).
    """

    def __init__(
        self,
        cluster: str,
        groups: dict[str, dict[str, Any]],
        *,
        region: str | None = None,
        endpoint_url: str | None = None,
        ec2: Any = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.cluster = cluster
        self.groups = groups
        self.sleep = sleep
        from botocore.exceptions import BotoCoreError, ClientError  # noqa: PLC0415 - lazily

        self._aws_errors = (BotoCoreError, ClientError)
        if ec2 is None:
            import boto3  # noqa: PLC0415 - lazily: node tools import without boto3
            from botocore.config import Config  # noqa: PLC0415

            # Retries are ours (counted, with backoff), not botocore's hidden ones.
            config = Config(retries={"total_max_attempts": 1, "mode": "standard"})
            ec2 = boto3.client("ec2", region_name=region, endpoint_url=endpoint_url, config=config)
        self.ec2 = ec2
        self.calls = 0

    # -- calls with backoff ----------------------------------------------------------------

    def call(self, operation: str, **params: Any) -> dict[str, Any]:
        """One EC2 call, retried with backoff while throttled; errors become ``CloudError``."""
        for tries in range(MAX_TRIES):
            self.calls += 1
            try:
                reply: dict[str, Any] = getattr(self.ec2, operation)(**params)
                return reply
            except self._aws_errors as exc:
                code = client_error_code(exc)
                if code is None:
                    raise CloudError("Unavailable", f"{operation}: {exc}") from exc
                if code in THROTTLING_CODES and tries + 1 < MAX_TRIES:
                    self.sleep(backoff(tries))
                    continue
                message = getattr(exc, "response", {}).get("Error", {}).get("Message", str(exc))
                raise CloudError(code, f"{operation}: {message}") from exc
        raise AssertionError("unreachable")  # the loop returns or raises

    # -- the Cloud API ---------------------------------------------------------------------

    def launch(self, group: str, nodes: Sequence[str], option: Option) -> LaunchResult:
        start_calls = self.calls
        made: list[Instance] = []
        error: CloudError | None = None
        for batch in batches(nodes, BATCH_SIZE):
            try:
                ids, error = self._fleet(group, len(batch), option)
                made += self._name(group, batch, ids, option)
            except CloudError as exc:
                error = exc
            if error is not None:
                break  # the next batch would meet the same shortage
        return LaunchResult.of(nodes, made, error, calls=self.calls - start_calls)

    def _fleet(self, group: str, count: int, option: Option) -> tuple[list[str], CloudError | None]:
        """One instant fleet of ``count`` instances; returns their ids and the first error."""
        settings = self.groups.get(group)
        if settings is None:
            raise CloudError("UnknownGroup", f"group {group!r} is not in cloud.json")
        spot = option.lifecycle == SPOT
        tags = [
            {"Key": TAG_CLUSTER, "Value": self.cluster},
            {"Key": TAG_GROUP, "Value": group},
        ]
        params: dict[str, Any] = {
            "Type": "instant",
            "TargetCapacitySpecification": {
                "TotalTargetCapacity": count,
                "DefaultTargetCapacityType": "spot" if spot else "on-demand",
            },
            "LaunchTemplateConfigs": [
                {
                    "LaunchTemplateSpecification": {
                        "LaunchTemplateId": settings["launch_template_id"],
                        "Version": "$Latest",
                    },
                    "Overrides": [
                        {"InstanceType": option.instance_type, "SubnetId": subnet}
                        for subnet in settings["subnets"]
                    ],
                }
            ],
            "TagSpecifications": [
                {"ResourceType": "instance", "Tags": tags},
                {"ResourceType": "fleet", "Tags": tags},
            ],
        }
        if spot:
            params["SpotOptions"] = {"AllocationStrategy": "price-capacity-optimized"}
        else:
            params["OnDemandOptions"] = {"AllocationStrategy": "lowest-price"}
        reply = self.call("create_fleet", **params)
        ids = [i for entry in reply.get("Instances", []) for i in entry.get("InstanceIds", [])]
        errors = reply.get("Errors", [])
        first = None
        if errors and len(ids) < count:
            first = CloudError(
                errors[0].get("ErrorCode", "Unknown"),
                f"create_fleet: {errors[0].get('ErrorMessage', '')}",
            )
        return ids, first

    def _name(
        self, group: str, nodes: Sequence[str], ids: list[str], option: Option
    ) -> list[Instance]:
        """Give each new instance its node's tag; return them as ``Instance``s."""
        pairs = list(zip(nodes, ids, strict=False))
        for node, instance_id in pairs:
            self.call(
                "create_tags",
                Resources=[instance_id],
                Tags=[{"Key": TAG_NODE, "Value": node}, {"Key": "Name", "Value": node}],
            )
        if not pairs:
            return []
        described = {i["InstanceId"]: i for i in self._instances(InstanceIds=[i for _, i in pairs])}
        return [
            _instance(described[i], node, group, option.lifecycle)
            for node, i in pairs
            if i in described
        ]

    def terminate(self, instance_ids: Sequence[str]) -> None:
        if not instance_ids:
            return
        # Only ids that still exist and are this cluster's: terminating an unknown id fails
        # the whole call, and an id of another cluster must never be touched.
        mine = [
            i["InstanceId"]
            for i in self._instances(
                Filters=[
                    {"Name": "instance-id", "Values": list(instance_ids)},
                    {"Name": f"tag:{TAG_CLUSTER}", "Values": [self.cluster]},
                ]
            )
            if i["State"]["Name"] != "terminated"
        ]
        for batch in batches(mine, 1000):
            self.call("terminate_instances", InstanceIds=list(batch))

    def describe(self) -> list[Instance]:
        found = self._instances(
            Filters=[
                {"Name": f"tag:{TAG_CLUSTER}", "Values": [self.cluster]},
                {"Name": "tag-key", "Values": [TAG_GROUP]},
                {"Name": "instance-state-name", "Values": ALIVE_STATES},
            ]
        )
        return [_instance(i) for i in found]

    def _instances(self, **params: Any) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            reply = self.call(
                "describe_instances", **params, **({"NextToken": token} if token else {})
            )
            out += [i for r in reply.get("Reservations", []) for i in r.get("Instances", [])]
            token = reply.get("NextToken")
            if not token:
                return out


def _instance(
    data: dict[str, Any], node: str | None = None, group: str | None = None, lifecycle: str = ""
) -> Instance:
    tags = {t["Key"]: t["Value"] for t in data.get("Tags", [])}
    launched = data.get("LaunchTime")
    return Instance(
        instance_id=data["InstanceId"],
        node=node or tags.get(TAG_NODE, ""),
        group=group or tags.get(TAG_GROUP, ""),
        address=data.get("PrivateIpAddress", ""),
        instance_type=data.get("InstanceType", ""),
        lifecycle=lifecycle or (SPOT if data.get("InstanceLifecycle") == "spot" else ON_DEMAND),
        state=data["State"]["Name"],
        launched_at=launched.timestamp() if isinstance(launched, datetime) else 0.0,
        zone=str(data.get("Placement", {}).get("AvailabilityZone", "")),
    )


def aws_cloud_from_config(config: dict[str, Any]) -> AwsCloud:
    """The backend of a head's ``cloud.json`` with ``kind: aws``."""
    return AwsCloud(
        cluster=config["cluster"],
        groups=config.get("groups", {}),
        region=config.get("region"),
        endpoint_url=config.get("endpoint_url"),
    )
