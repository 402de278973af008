"""``up --dry-run`` changes nothing and prices the cluster; AWS errors are one clear line."""

from __future__ import annotations

import re

from clusterkit.prices import PriceBook, on_demand_table
from clusterkit.providers.aws import pricing
from clusterkit.providers.aws.session import Aws as Session
from tests.aws.conftest import REGION, Aws


def test_dry_run_lists_resources_prices_them_and_changes_nothing(aws: Aws) -> None:
    spec = aws.spec("awd", static=2, dynamic=2)
    result = aws.run("up", "-f", str(spec), "--dry-run")
    out = result.stdout
    for kind in (
        "vpc",
        "security group",
        "iam role",
        "s3 bucket",
        "sqs queue",
        "eventbridge rule",
        "launch template",
        "instance awd-head",
    ):
        assert f"would create: {kind}" in out, out
    match = re.search(r"hourly cost: ([0-9.]+) to ([0-9.]+) USD", out)
    assert match, out
    low, high = float(match[1]), float(match[2])

    # The same range from the test's own reading of the price sources.
    history = aws.client("ec2").describe_spot_price_history(
        InstanceTypes=["c7i.2xlarge", "c6i.2xlarge"]
    )["SpotPriceHistory"]
    spot = [float(p["SpotPrice"]) for p in history]
    head = on_demand_table().prices["m7i.large"]
    assert low == round(head + 2 * min(spot), 6)
    assert high == round(head + 4 * max(spot), 6)
    assert low < high

    assert aws.tagged("awd") == {}
    assert not (aws.home / "clusters" / "awd").exists()


def test_an_aws_error_is_one_line_naming_call_resource_and_code(aws: Aws) -> None:
    spec = aws.spec("awe", static=1, dynamic=0, subnet_ids=["subnet-0123456789abcdef0"])
    result = aws.run("up", "-f", str(spec), "--no-configure", check=False)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(
        "error: AWS ec2 DescribeSubnets on subnet-0123456789abcdef0 failed "
        "(InvalidSubnetID.NotFound): "
    )
    assert last.endswith("check aws.subnet_ids: they must exist in the region")  # what to do
    aws.run("down", "awe")
    assert aws.tagged("awe") == {}


def test_spot_prices_are_quoted_per_zone_with_their_mean(aws: Aws) -> None:
    history = aws.client("ec2").describe_spot_price_history(
        InstanceTypes=["c7i.2xlarge"], ProductDescriptions=["Linux/UNIX"]
    )["SpotPriceHistory"]
    by_zone: dict[str, float] = {}
    for p in sorted(history, key=lambda p: p["Timestamp"]):  # the latest in each zone
        by_zone[p["AvailabilityZone"]] = float(p["SpotPrice"])
    (quote,) = pricing.spot_quotes(Session(REGION), ["c7i.2xlarge"]).values()
    assert dict(quote.zones) == by_zone and len(by_zone) > 1
    assert quote.hourly == round(sum(by_zone.values()) / len(by_zone), 6)
    zone = sorted(by_zone)[0]
    book = PriceBook("USD", {("c7i.2xlarge", "spot"): quote})
    assert book.hourly("c7i.2xlarge", "spot", zone) == by_zone[zone]
    assert book.hourly("c7i.2xlarge", "spot") == quote.hourly  # no zone: the mean
    assert PriceBook.from_dict(book.as_dict()) == book  # as the ledger keeps it
