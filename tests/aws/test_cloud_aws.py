"""The head's cloud API on AWS (``AwsCloud``): instant fleets against the moto server, and
the one S3 object per batch that names its instances.

moto launches whatever it is asked for: it never throttles and never runs out of capacity.
Those answers are made here, through botocore's own ``before-call`` hook, which hands the
client a response instead of sending the request; everything else is moto's.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from botocore.awsrequest import AWSResponse

from clusterkit import cluster
from clusterkit.nodetools import cloud_aws
from clusterkit.nodetools.cloud import ON_DEMAND, SPOT, CloudError, Option
from clusterkit.nodetools.cloud_aws import AwsCloud
from clusterkit.nodetools.clouds import cloud_from_config
from clusterkit.providers.aws import session
from clusterkit.spec import load_spec
from tests.aws.conftest import REGION, Aws

NODES = [f"compute-dy-{i}" for i in range(1, 6)]
BUCKET = "awc-bucket"


@pytest.fixture
def group(aws: Aws) -> dict[str, Any]:
    """A launch template and two subnets, made with the test's own calls."""
    ec2 = aws.client("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
    subnets = [
        ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.9.{i}.0/24", AvailabilityZone=f"{REGION}{z}")[
            "Subnet"
        ]["SubnetId"]
        for i, z in enumerate("ab")
    ]
    template = ec2.create_launch_template(
        LaunchTemplateName="awc-compute",
        LaunchTemplateData={"ImageId": aws.image(), "MetadataOptions": {"HttpTokens": "required"}},
    )["LaunchTemplate"]["LaunchTemplateId"]
    s3 = aws.client("s3")
    s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
    return {"launch_template_id": template, "subnets": subnets}


def _cloud(group: dict[str, Any], cluster: str = "awc", bundles: int = 3) -> AwsCloud:
    backend = cloud_from_config(
        {"kind": "aws", "cluster": cluster, "region": REGION, "groups": {"compute": group},
         "bucket": BUCKET, "host_key_bundles": bundles}
    )  # fmt: skip
    assert isinstance(backend, AwsCloud)
    return backend


def _names(aws: Aws, cluster: str = "awc") -> dict[str, dict[str, str]]:
    """Every batch's names object in the bucket, merged: instance id -> {node, keys}."""
    s3 = aws.client("s3")
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"boot/{cluster}/names/")
    out: dict[str, dict[str, str]] = {}
    for obj in listed.get("Contents", []):
        out.update(json.loads(s3.get_object(Bucket=BUCKET, Key=obj["Key"])["Body"].read()))
    return out


def _answer(status: int, body: dict[str, Any]) -> tuple[AWSResponse, dict[str, Any]]:
    return AWSResponse("", status, {}, None), {**body, "ResponseMetadata": {}}


def _intercept(client: Any, operation: str, answer: Callable[[dict[str, Any]], Any]) -> None:
    """Let ``answer(params)`` reply to ``operation`` instead of moto (None: moto replies)."""

    def before_call(params: dict[str, Any], **_: Any) -> Any:
        return answer(params.get("body", {}))

    client.meta.events.register(f"before-call.ec2.{operation}", before_call)


def test_launch_names_a_batch_in_one_object_and_describe_reads_it(
    aws: Aws, group: dict[str, Any]
) -> None:
    cloud = _cloud(group)
    result = cloud.launch("compute", NODES, Option("c7i.2xlarge", SPOT))
    assert result.error is None and result.failed == ()
    assert sorted(i.node for i in result.instances) == NODES
    assert all(
        i.lifecycle == SPOT and i.address and i.state in ("pending", "running")
        for i in result.instances
    )
    # One fleet for the batch, one object naming its instances, one describe: no call per node.
    assert result.calls == 3
    ec2 = aws.client("ec2")
    reply = ec2.describe_instances(InstanceIds=[i.instance_id for i in result.instances])
    batches = set()
    for inst in (i for r in reply["Reservations"] for i in r["Instances"]):
        tags = {t["Key"]: t["Value"] for t in inst["Tags"]}
        assert tags["clusterkit:cluster"] == "awc" and tags["clusterkit:group"] == "compute"
        assert "clusterkit:node" not in tags  # names are not tags: a tag call per node
        batches.add(tags["clusterkit:batch"])
        assert inst["SubnetId"] in group["subnets"]
        assert inst["InstanceLifecycle"] == "spot"
    assert len(batches) == 1  # the fleet tagged every instance alike, at launch
    named = _names(aws)
    assert {i: e["node"] for i, e in named.items()} == {
        i.instance_id: i.node for i in result.instances
    }
    # Each names the bundle with its host key, from the node's name alone.
    assert all(
        e["keys"] == f"boot/awc/host-keys/{cloud_aws.bundle_of(e['node'], 3)}.json"
        for e in named.values()
    )
    fresh = _cloud(group)  # another process (the reconciler): reads the batch's object once
    described = fresh.describe()
    assert sorted(i.node for i in described) == NODES
    assert fresh.calls == 2  # one describe page, one names object
    fresh.describe()
    assert fresh.calls == 3
    # each instance's zone, so that the ledger costs it at its zone's Spot price
    zones = {i["InstanceId"]: i["Placement"]["AvailabilityZone"]
             for r in reply["Reservations"] for i in r["Instances"]}  # fmt: skip
    assert {i.instance_id: i.zone for i in described} == zones and all(zones.values())

    # Terminate two; ids of another cluster, or gone already, are left alone quietly.
    other = _cloud(group, "other").launch("compute", ["x-dy-1"], Option("c7i.2xlarge", SPOT))
    doomed = [i.instance_id for i in result.instances[:2]]
    cloud.terminate([*doomed, other.instances[0].instance_id, "i-0123456789abcdef0"])
    assert sorted(i.node for i in cloud.describe()) == NODES[2:]
    assert [i.node for i in _cloud(group, "other").describe()] == ["x-dy-1"]
    cloud.terminate(doomed)  # again: not an error


def test_launch_goes_in_batches(group: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cloud_aws, "BATCH_SIZE", 2)
    cloud = _cloud(group)
    fleets: list[int] = []
    _intercept(cloud.ec2, "CreateFleet", lambda body: fleets.append(1))
    result = cloud.launch("compute", NODES, Option("c6i.2xlarge", ON_DEMAND))
    assert len(fleets) == 3  # 2 + 2 + 1
    assert len(result.instances) == 5 and all(i.lifecycle == ON_DEMAND for i in result.instances)


def test_throttled_calls_back_off_and_retry(group: dict[str, Any]) -> None:
    throttled = 2
    sleeps: list[float] = []

    def throttle(body: dict[str, Any]) -> Any:
        nonlocal throttled
        if throttled:
            throttled -= 1
            return _answer(503, {"Error": {"Code": "RequestLimitExceeded", "Message": "slow"}})
        return None

    cloud = _cloud(group)
    cloud.sleep = sleeps.append
    _intercept(cloud.ec2, "CreateFleet", throttle)
    result = cloud.launch("compute", NODES[:2], Option("c7i.2xlarge", SPOT))
    assert len(result.instances) == 2 and result.error is None
    assert len(sleeps) == 2
    assert (
        sleeps[0] <= cloud_aws.BACKOFF_BASE_SECONDS
        and sleeps[1] <= 2 * cloud_aws.BACKOFF_BASE_SECONDS
    )
    assert result.calls == 3 + 1 + 1  # three fleet calls, the names object, a describe


def test_new_instances_ec2_does_not_list_yet_are_looked_for_again(group: dict[str, Any]) -> None:
    cloud = _cloud(group)
    sleeps: list[float] = []
    cloud.sleep = sleeps.append
    looks = 0

    def not_yet(body: dict[str, Any]) -> Any:
        nonlocal looks
        looks += 1
        return _answer(200, {"Reservations": []}) if looks == 1 else None  # eventual consistency

    _intercept(cloud.ec2, "DescribeInstances", not_yet)
    result = cloud.launch("compute", NODES[:2], Option("c7i.2xlarge", SPOT))
    assert result.error is None and sorted(i.node for i in result.instances) == NODES[:2]
    assert looks == 2 and sleeps == [1.0]


def test_transient_answers_are_tried_again_a_few_times(group: dict[str, Any]) -> None:
    from botocore.parsers import ResponseParserError

    answers: list[Any] = [
        _answer(500, {"Error": {"Code": "InternalError", "Message": "oops"}}),
        ResponseParserError("Unable to parse response, invalid XML received: <!doctype html>"),
    ]

    def flaky(body: dict[str, Any]) -> Any:
        if not answers:
            return None
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    cloud = _cloud(group)
    cloud.sleep = lambda s: None
    _intercept(cloud.ec2, "CreateFleet", flaky)
    result = cloud.launch("compute", NODES[:2], Option("c7i.2xlarge", SPOT))
    assert result.error is None and len(result.instances) == 2
    # A broken answer every time: a few tries, then one line naming the call.
    _intercept(
        cloud.ec2,
        "CreateFleet",
        lambda body: (_ for _ in ()).throw(
            ResponseParserError("Unable to parse response, invalid XML received: <!doctype html>")
        ),
    )
    result = cloud.launch("compute", NODES[2:3], Option("c7i.2xlarge", SPOT))
    assert result.error is not None and result.error.code == "Unavailable"
    assert result.error.message.startswith("create_fleet: Unable to parse response")
    assert result.calls == cloud_aws.TRANSIENT_TRIES


def test_a_call_throttled_past_the_budget_fails_naming_it(
    group: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cloud_aws, "RETRY_BUDGET_SECONDS", 3.0)
    sleeps: list[float] = []
    cloud = _cloud(group)
    cloud.sleep = sleeps.append
    slow = _answer(503, {"Error": {"Code": "RequestLimitExceeded", "Message": "slow"}})
    _intercept(cloud.ec2, "CreateFleet", lambda body: slow)
    result = cloud.launch("compute", NODES[:2], Option("c7i.2xlarge", SPOT))
    assert result.instances == () and result.error is not None
    assert result.error.code == "RequestLimitExceeded"
    assert "create_fleet: still throttled after" in result.error.message
    assert 3.0 <= sum(sleeps) < 3.0 + cloud_aws.BACKOFF_CAP_SECONDS
    assert max(sleeps) <= cloud_aws.BACKOFF_CAP_SECONDS


def test_instances_that_cannot_be_named_are_ended(aws: Aws, group: dict[str, Any]) -> None:
    cloud = _cloud(group)
    denied = _answer(403, {"Error": {"Code": "AccessDenied", "Message": "no"}})
    cloud.s3.meta.events.register("before-call.s3.PutObject", lambda **_: denied)
    result = cloud.launch("compute", NODES[:2], Option("c7i.2xlarge", SPOT))
    assert result.instances == () and result.failed == tuple(NODES[:2])
    assert result.error is not None and result.error.code == "AccessDenied"
    ec2 = aws.client("ec2")
    f = [{"Name": "tag:clusterkit:cluster", "Values": ["awc"]}]
    states = [i["State"]["Name"] for r in ec2.describe_instances(Filters=f)["Reservations"]
              for i in r["Instances"]]  # fmt: skip
    assert len(states) == 2 and set(states) <= {"shutting-down", "terminated"}


def test_capacity_errors_keep_aws_code_and_partial_results(aws: Aws, group: dict[str, Any]) -> None:
    cloud = _cloud(group)
    real = aws.client("ec2")

    def partly(body: dict[str, Any]) -> Any:
        # EC2 gives what it has and says why the rest is missing.
        # The fleet's tags, as CreateFleet puts them on what it launches.
        keys = [k for k, v in body.items() if k.endswith(".Key") and v == "clusterkit:batch"]
        batch = body[keys[0].removesuffix(".Key") + ".Value"]
        made = real.run_instances(
            ImageId=aws.image(),
            MinCount=2,
            MaxCount=2,
            TagSpecifications=[
                {
                    "ResourceType": "instance",
                    "Tags": [
                        {"Key": "clusterkit:cluster", "Value": "awc"},
                        {"Key": "clusterkit:batch", "Value": batch},
                    ],
                }
            ],
        )
        ids = [i["InstanceId"] for i in made["Instances"]]
        return _answer(
            200,
            {
                "Instances": [{"InstanceIds": ids, "Lifecycle": "spot"}],
                "Errors": [
                    {
                        "ErrorCode": "InsufficientInstanceCapacity",
                        "ErrorMessage": "no c7i.2xlarge in eu-west-1a",
                    }
                ],
            },
        )

    _intercept(cloud.ec2, "CreateFleet", partly)
    result = cloud.launch("compute", NODES, Option("c7i.2xlarge", SPOT))
    assert len(result.instances) == 2 and len(result.failed) == 3
    assert result.error is not None and result.error.code == "InsufficientInstanceCapacity"


def test_a_bad_template_is_a_cloud_error_with_its_code(group: dict[str, Any]) -> None:
    cloud = _cloud(group)
    cloud.groups["compute"] = {**group, "launch_template_id": "lt-0123456789abcdef0"}
    result = cloud.launch("compute", NODES[:1], Option("c7i.2xlarge", SPOT))
    assert result.instances == () and result.failed == (NODES[0],)
    assert result.error is not None
    assert result.error.code.startswith("InvalidLaunchTemplate")
    with pytest.raises(CloudError, match="UnknownGroup"):
        cloud._fleet("nope", 1, Option("c7i.2xlarge", SPOT), "b")


def test_up_falls_back_from_spot_to_on_demand(aws: Aws, monkeypatch: pytest.MonkeyPatch) -> None:
    """No Spot capacity for any type: a spot-then-on-demand group's static nodes come up on
    demand, after every Spot option was tried in order."""
    path = aws.spec("awf", static=2, dynamic=0)
    text = path.read_text().replace('"min"', '"capacity": "spot-then-on-demand", "min"')
    path.write_text(text)
    asked: list[str] = []

    def no_spot(body: dict[str, Any]) -> Any:
        kind = body.get("TargetCapacitySpecification.DefaultTargetCapacityType")
        itype = body.get("LaunchTemplateConfigs.1.Overrides.1.InstanceType")
        asked.append(f"{itype}/{kind}")
        if kind == "spot":
            return _answer(
                200,
                {
                    "Instances": [],
                    "Errors": [
                        {"ErrorCode": "InsufficientInstanceCapacity", "ErrorMessage": "none"}
                    ],
                },
            )
        return None

    def hook(params: dict[str, Any], model: Any, **_: Any) -> Any:
        return no_spot(params.get("body", {})) if model.name == "CreateFleet" else None

    monkeypatch.setattr(session, "EVENT_HOOKS", [("before-call.ec2.CreateFleet", hook)])
    state = cluster.up(load_spec(path), configure=False)
    assert asked == ["c7i.2xlarge/spot", "c6i.2xlarge/spot", "c7i.2xlarge/on-demand"]
    computes = [n for n in state.nodes.values() if n.role == "compute"]
    assert len(computes) == 2
    ec2 = aws.client("ec2")
    reply = ec2.describe_instances(InstanceIds=[n.instance_id for n in computes])
    assert all("InstanceLifecycle" not in i for r in reply["Reservations"] for i in r["Instances"])
    cluster.down("awf")
    assert aws.tagged("awf") == {}
