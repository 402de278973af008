"""The AWS backend of the head's cloud API: EC2 ``CreateFleet`` (type ``instant``).

``AwsCloud.launch`` asks for one instance per node in batches, of exactly one ``Option``
(instance type and capacity kind) across every subnet of the group, Spot with the
``price-capacity-optimized`` strategy; throttled calls are retried with backoff and jitter
within a bounded total wait. The fallback to the next option is the business of the caller,
which gets the provider's own error code back (``InsufficientInstanceCapacity``, ...), and
partial results.

Calls grow with batches, not nodes. A fleet tags all its instances alike at launch
(``TagSpecifications``): ``clusterkit:cluster``, ``clusterkit:group`` and a batch id
``clusterkit:batch``. Which instance is which node is one S3 object per batch in the
cluster's bucket (``boot/CLUSTER/names/BATCH.json``, instance id -> node), written right
after the fleet call: a booting node reads its name there, and ``describe`` reads each batch
once. boto3 is imported when a backend is made: the controller has it, and so has the AWS
node image, but node tools must import without it (standard library only).
"""

from __future__ import annotations

import json
import random
import secrets
import time
import zlib
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
TAG_NODE = "clusterkit:node"  # the head's, set at launch; compute nodes' names are per batch
TAG_BATCH = "clusterkit:batch"

# Instances per CreateFleet call: one call per batch keeps the price-capacity-optimized
# choice over the whole batch, 1,000 nodes take two fleets (and two name objects), and a
# batch that fails on capacity loses at most this many nodes to the next option.
BATCH_SIZE = 500
# Codes that mean "slow down", for EC2 and the other APIs the head calls.
THROTTLING_CODES = frozenset({
    "RequestLimitExceeded", "Throttling", "ThrottlingException", "TooManyRequestsException",
})  # fmt: skip
# Throttled calls are retried until this much time has passed in waits, then fail naming
# the call: EC2's buckets refill at a few tokens a second, so minutes ride out any burst
# (a fleet of 500 waits 250 s for its instance tokens once the account's 1,000 are spent).
RETRY_BUDGET_SECONDS = 600.0
# Answers that may succeed when asked again (AWS's and botocore's transient errors, and an
# answer that is not AWS's at all, such as a proxy's error page): a few tries, not minutes.
TRANSIENT_CODES = frozenset({
    "InternalError", "InternalFailure", "ServiceUnavailable", "Unavailable", "RequestTimeout",
    "RequestTimeoutException", "PriorRequestNotComplete", "ResponseParserError",
})  # fmt: skip
TRANSIENT_TRIES = 5
BACKOFF_BASE_SECONDS = 0.5
BACKOFF_CAP_SECONDS = 20.0
ALIVE_STATES = ["pending", "running", "stopping", "stopped", "shutting-down"]
NEW_INSTANCE_LOOKS = 4  # describes of a launch's new instances, 1 + 2 + 3 s apart at most


def client_error_code(exc: Exception) -> str | None:
    """The AWS error code of a botocore ``ClientError``, or None for any other exception."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = response.get("Error", {}).get("Code")
        return str(code) if code else None
    return None


def backoff(tries: int) -> float:
    """Full-jitter exponential backoff, capped: AWS's advice for throttled callers."""
    bound = min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2**tries)
    return random.uniform(0, bound)  # noqa: S311 - jitter, not crypto


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]


def boot_prefix(cluster: str) -> str:
    """Where the cluster's boot material lives in its own bucket."""
    return f"boot/{cluster}/"


def names_key(cluster: str, batch: str) -> str:
    """The object naming one batch's instances: ``{instance id: {node, keys}}``, ``keys``
    being the object with that node's host key."""
    return f"{boot_prefix(cluster)}names/{batch}.json"


def keys_key(cluster: str, bundle: int) -> str:
    """The object holding the host keys and certificates of the nodes of one bundle."""
    return f"{boot_prefix(cluster)}host-keys/{bundle}.json"


# Host keys travel in bundles of about this many nodes: a bundle is one object to write at
# ``up`` and one to read per booting node (about 1.2 KB a node).
BUNDLE_NODES = 500


def bundle_count(nodes: int) -> int:
    return max(1, -(-nodes // BUNDLE_NODES))


def bundle_of(node: str, bundles: int) -> int:
    """The bundle holding ``node``'s host key: from its name alone, so whoever names a
    node (``up`` here, the resume program on the head) can tell it without a lookup."""
    return zlib.crc32(node.encode()) % bundles


def new_batch_id() -> str:
    return secrets.token_hex(8)


def batches(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class AwsCloud(Cloud):
    """One cluster's compute instances on EC2.

    ``groups`` maps a group to its launch template id and subnets (from cloud.json);
    ``bucket`` is the cluster's own, where the batches' names live, and ``bundles`` the
    number of host-key bundles ``up`` wrote there.
    """

    def __init__(
        self,
        cluster: str,
        groups: dict[str, dict[str, Any]],
        *,
        bucket: str,
        bundles: int = 1,
        region: str | None = None,
        endpoint_url: str | None = None,
        ec2: Any = None,
        s3: Any = None,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        self.cluster = cluster
        self.groups = groups
        self.bucket = bucket
        self.bundles = bundles
        self.sleep = sleep or time.sleep  # looked up now: a benchmark's clock may stand in
        from botocore.exceptions import BotoCoreError, ClientError  # noqa: PLC0415 - lazily
        from botocore.parsers import ResponseParserError  # noqa: PLC0415

        # ResponseParserError is no BotoCoreError: an answer that was not AWS's XML or JSON.
        self._aws_errors = (BotoCoreError, ClientError, ResponseParserError)
        if ec2 is None or s3 is None:
            import boto3  # noqa: PLC0415 - lazily: node tools import without boto3
            from botocore.config import Config  # noqa: PLC0415

            # Retries are ours (counted, with backoff), not botocore's hidden ones.
            config = Config(retries={"total_max_attempts": 1, "mode": "standard"})
            at = {"region_name": region, "endpoint_url": endpoint_url, "config": config}
            ec2 = ec2 if ec2 is not None else boto3.client("ec2", **at)
            s3 = s3 if s3 is not None else boto3.client("s3", **at)
        self.ec2 = ec2
        self.s3 = s3
        self.calls = 0
        self._names: dict[str, dict[str, str]] = {}  # batch -> {instance id: node}

    # -- calls with backoff ----------------------------------------------------------------

    def call(self, operation: str, *, client: Any = None, **params: Any) -> dict[str, Any]:
        """One call (EC2's unless ``client``), retried with backoff while throttled, for at
        most ``RETRY_BUDGET_SECONDS`` of waits; errors become ``CloudError``."""
        waited = 0.0
        tries = 0
        while True:
            tries += 1
            self.calls += 1
            try:
                reply: dict[str, Any] = getattr(client or self.ec2, operation)(**params)
                return reply
            except self._aws_errors as exc:
                code = client_error_code(exc) or type(exc).__name__
                if code in TRANSIENT_CODES and tries < TRANSIENT_TRIES:
                    self.sleep(backoff(tries - 1))
                    continue
                if client_error_code(exc) is None:
                    raise CloudError("Unavailable", f"{operation}: {_one_line(exc)}") from exc
                if code in THROTTLING_CODES:
                    if waited < RETRY_BUDGET_SECONDS:
                        pause = backoff(tries - 1)
                        self.sleep(pause)
                        waited += pause
                        continue
                    raise CloudError(
                        code,
                        f"{operation}: still throttled after {tries} tries and {waited:.0f}s of "
                        "waits; ask AWS to raise the account's EC2 request limits, or lower "
                        "ResumeRate",
                    ) from exc
                message = getattr(exc, "response", {}).get("Error", {}).get("Message", str(exc))
                raise CloudError(code, f"{operation}: {message}") from exc

    # -- the Cloud API ---------------------------------------------------------------------

    def launch(self, group: str, nodes: Sequence[str], option: Option) -> LaunchResult:
        start_calls = self.calls
        named: dict[str, str] = {}  # instance id -> node, of every batch
        launched: list[str] = []  # their batches
        error: CloudError | None = None
        for batch in batches(nodes, BATCH_SIZE):
            try:
                batch_id = new_batch_id()
                ids, error = self._fleet(group, len(batch), option, batch_id)
                pairs = self._name(batch, ids, batch_id)
                named |= pairs
                launched += [batch_id] if pairs else []
            except CloudError as exc:
                error = exc
            if error is not None:
                break  # the next batch would meet the same shortage
        made: list[Instance] = []
        if named:
            try:
                described = self._new_instances(launched, set(named))
                made = [_instance(described[i], n, group, option.lifecycle)
                        for i, n in named.items() if i in described]  # fmt: skip
            except CloudError as exc:
                error = error or exc
        return LaunchResult.of(nodes, made, error, calls=self.calls - start_calls)

    def _new_instances(self, batch_ids: list[str], ids: set[str]) -> dict[str, dict[str, Any]]:
        """The instances of the batches just launched, found by their batch tag: a page per
        thousand instances, not a call per batch. EC2 is eventually consistent: an instance
        it has just made may be missing at first, so a few more looks wait for it."""
        found: dict[str, dict[str, Any]] = {}
        for look in range(NEW_INSTANCE_LOOKS):
            if look:
                self.sleep(float(look))
            page = self._instances(
                Filters=[{"Name": f"tag:{TAG_BATCH}", "Values": batch_ids}], MaxResults=1000
            )
            found |= {i["InstanceId"]: i for i in page if i["InstanceId"] in ids}
            if len(found) == len(ids):
                break
        return found

    def _fleet(
        self, group: str, count: int, option: Option, batch_id: str
    ) -> tuple[list[str], CloudError | None]:
        """One instant fleet of ``count`` instances; returns their ids and the first error."""
        settings = self.groups.get(group)
        if settings is None:
            raise CloudError("UnknownGroup", f"group {group!r} is not in cloud.json")
        spot = option.lifecycle == SPOT
        tags = [
            {"Key": TAG_CLUSTER, "Value": self.cluster},
            {"Key": TAG_GROUP, "Value": group},
            {"Key": TAG_BATCH, "Value": batch_id},
            {"Key": "Name", "Value": f"{self.cluster}-{group}"},  # for the console
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

    def _name(self, nodes: Sequence[str], ids: list[str], batch_id: str) -> dict[str, str]:
        """Name the batch's instances in one object, the nodes in order; return the names.
        Instances that cannot be named would never boot: they are ended."""
        pairs = dict(zip(ids, nodes, strict=False))
        if not pairs:
            return {}
        named = {
            i: {"node": n, "keys": keys_key(self.cluster, bundle_of(n, self.bundles))}
            for i, n in pairs.items()
        }
        try:
            self.call(
                "put_object",
                client=self.s3,
                Bucket=self.bucket,
                Key=names_key(self.cluster, batch_id),
                Body=json.dumps(named).encode(),
                ContentType="application/json",
            )
        except CloudError:
            self.call("terminate_instances", InstanceIds=list(pairs))
            raise
        self._names[batch_id] = pairs
        return pairs

    def node_of(self, data: dict[str, Any]) -> str:
        """The node an instance (``DescribeInstances``'s) is: its node tag (the head's), else
        its batch's name object, read once per batch; "" while that object is not there."""
        tags: dict[str, str] = {t["Key"]: t["Value"] for t in data.get("Tags", [])}
        if TAG_NODE in tags:
            return tags[TAG_NODE]
        batch = tags.get(TAG_BATCH)
        if not batch:
            return ""
        if batch not in self._names:
            try:
                reply = self.call(
                    "get_object",
                    client=self.s3,
                    Bucket=self.bucket,
                    Key=names_key(self.cluster, batch),
                )
            except CloudError as exc:
                if exc.code in ("NoSuchKey", "404"):
                    return ""  # written just after the fleet call: the next look finds it
                raise
            named = json.loads(reply["Body"].read())
            self._names[batch] = {i: entry["node"] for i, entry in named.items()}
        return self._names[batch].get(data["InstanceId"], "")

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
                ],
                MaxResults=1000,
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
            ],
            MaxResults=1000,
        )
        return [_instance(i, self.node_of(i)) for i in found]

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
        bucket=config["bucket"],
        bundles=int(config.get("host_key_bundles", 1)),
        region=config.get("region"),
        endpoint_url=config.get("endpoint_url"),
    )
