"""clusterkit under EC2's request limits: the moto server of these tests sits behind
``tests/aws/throttle.py`` (EC2's documented token buckets, sizes divided by ten), so a
cluster of a few dozen nodes meets the limits a cluster of hundreds would. ``up`` and
``down`` must ride the refusals out, and the layer must really refuse (or the test proves
nothing)."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from clusterkit.nodetools.clouds import cloud_from_config
from tests.aws.conftest import REGION, Aws
from tests.aws.throttle import (
    MUTATING,
    NON_MUTATING,
    OWN_BUCKETS,
    UNFILTERED,
    Ec2Throttle,
    ThrottledMotoServer,
    request_bucket,
)

SCALE = 0.1
NODES = 40


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    """This module's moto server, behind the throttling layer (the ``aws`` fixture uses it)."""
    server = ThrottledMotoServer("127.0.0.1", Ec2Throttle(scale=SCALE)).start()
    yield server.endpoint
    server.stop()


def layer(aws: Aws, what: str) -> dict[str, Any]:
    method = "GET" if what == "stats" else "POST"
    url = f"{aws.endpoint}/_throttle/{what}"
    request = urllib.request.Request(url, method=method)  # noqa: S310 - 127.0.0.1
    with urllib.request.urlopen(request, timeout=10) as reply:  # noqa: S310 - 127.0.0.1
        data: dict[str, Any] = json.loads(reply.read())
    return data


def bare_ec2() -> Any:
    """An EC2 client that does not retry: every refusal reaches the test."""
    config = Config(retries={"total_max_attempts": 1, "mode": "standard"})
    return boto3.client("ec2", region_name=REGION, config=config)


# ---------------------------------------------------------------------------------------------
# The layer itself


def test_actions_take_the_buckets_the_guide_gives_them() -> None:
    assert request_bucket("DescribeInstances", {}) == UNFILTERED
    assert request_bucket("DescribeInstances", {"Filter.1.Name": "tag:x"}) == NON_MUTATING
    assert request_bucket("DescribeInstances", {"MaxResults": "1000"}) == NON_MUTATING
    assert request_bucket("DescribeSubnets", {}) == NON_MUTATING
    assert request_bucket("CreateFleet", {}) == MUTATING
    assert request_bucket("CreateTags", {}) == OWN_BUCKETS["CreateTags"]


def test_a_bucket_refills_at_its_rate_and_a_launch_takes_one_token_per_instance() -> None:
    now = [0.0]
    throttle = Ec2Throttle(scale=SCALE, clock=lambda: now[0])
    tags = [throttle.admit("CreateTags", {}) for _ in range(11)]
    assert tags == [True] * 10 + [False]  # 100 tokens / 10
    now[0] += 0.1  # 10 tokens a second
    assert throttle.admit("CreateTags", {})
    assert not throttle.admit("CreateTags", {})
    # 100 instance tokens (1,000 / 10), refilled at 2 a second; a refused fleet takes none
    fleet = {"TargetCapacitySpecification.TotalTargetCapacity": "60"}
    assert throttle.admit("CreateFleet", fleet)
    assert not throttle.admit("CreateFleet", fleet)
    now[0] += 10.0  # 40 + 20 = 60 tokens
    assert throttle.admit("CreateFleet", fleet)
    assert throttle.stats() == {
        "passed": {"CreateTags": 11, "CreateFleet": 2},
        "refused": {"CreateTags": 2, "CreateFleet": 1},
    }


def test_ec2_is_answered_as_ec2_answers_a_caller_over_its_limit(aws: Aws) -> None:
    layer(aws, "reset")
    ec2 = bare_ec2()
    size, refill = UNFILTERED[0] * SCALE, UNFILTERED[1]
    start, passed = time.monotonic(), 0
    while True:  # the bucket refills meanwhile: the first refusal comes after size or more
        try:
            ec2.describe_instances()
        except ClientError as exc:
            error = exc.response
            break
        passed += 1
        assert passed <= size + 1 + (time.monotonic() - start) * refill, "never refused"
    assert passed >= size
    assert error["Error"]["Code"] == "RequestLimitExceeded"
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 503
    ec2.describe_instances(MaxResults=5)  # paginated: another, larger bucket
    boto3.client("s3", region_name=REGION).list_buckets()  # not EC2: never throttled
    assert layer(aws, "stats") == {
        "passed": {"DescribeInstances": passed + 1},
        "refused": {"DescribeInstances": 1},
    }


def drain(call: Any) -> None:
    """Make ``call`` until the layer refuses it: its bucket is empty."""
    ec2 = bare_ec2()
    for _ in range(10_000):
        try:
            call(ec2)
        except ClientError as exc:
            assert exc.response["Error"]["Code"] == "RequestLimitExceeded"
            return
    raise AssertionError("the layer never refused")


# ---------------------------------------------------------------------------------------------
# clusterkit under the limits


def test_up_and_down_of_a_cluster_ride_out_throttling(aws: Aws) -> None:
    spec = aws.spec("thr", static=NODES, dynamic=0)
    layer(aws, "reset")
    # The account is busy: other callers emptied its buckets just before `up`. (A cluster
    # this size alone no longer meets the limits: its calls grow with batches, not nodes.)
    drain(lambda ec2: ec2.describe_vpcs(MaxResults=5))
    drain(lambda ec2: ec2.delete_key_pair(KeyName="ck-no-such-key"))
    aws.run("up", "-f", str(spec), "--no-configure")
    up = layer(aws, "stats")
    # Every node came up named, as the head's programs see them (names by batch, not tags).
    config = json.loads((aws.home / "clusters" / "thr" / "rendered" / "cloud.json").read_text())
    names = sorted(i.node for i in cloud_from_config(config).describe())
    assert names == sorted(f"compute-st-{i}" for i in range(1, NODES + 1))
    assert sum(up["refused"].values()) > 0, f"nothing was throttled, so nothing was tested: {up}"
    # EC2 calls of the launch: one fleet and no call per node.
    assert up["passed"].get("CreateFleet") == 1 and "CreateTags" not in up["passed"], up
    layer(aws, "reset")
    aws.run("down", "thr")
    assert aws.tagged("thr") == {}
