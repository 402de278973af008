"""AWS failures become one line naming the call, the resource, AWS's code and what to do."""

from __future__ import annotations

import time

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

from clusterkit.errors import CapacityError, ProviderError
from clusterkit.providers.aws.errors import describe_error
from clusterkit.providers.aws.provider import group_options
from clusterkit.spec import GroupSpec


def _client_error(code: str, message: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": message}}, "CreateFleet")


def test_capacity_codes_are_capacity_errors_with_a_way_out() -> None:
    err = describe_error(
        "ec2 CreateFleet",
        "group gpu",
        _client_error(
            "InsufficientInstanceCapacity", "We currently do not have\nsufficient capacity."
        ),
    )
    assert isinstance(err, CapacityError) and err.code == "InsufficientInstanceCapacity"
    text = str(err)
    assert "\n" not in text
    assert text.startswith(
        "AWS ec2 CreateFleet on group gpu failed (InsufficientInstanceCapacity): "
        "We currently do not have sufficient capacity.; "
    )
    assert "spot-then-on-demand" in text


def test_other_codes_are_provider_errors_naming_the_code() -> None:
    err = describe_error("iam CreateRole", "clusterkit-x-head", _client_error("AccessDenied", "no"))
    assert not isinstance(err, CapacityError) and isinstance(err, ProviderError)
    assert "(AccessDenied)" in str(err) and "permission" in str(err)
    odd = describe_error("ec2 X", "y", _client_error("SomethingNew", "what"))
    assert str(odd).endswith("see the AWS documentation of SomethingNew")


def test_missing_credentials_and_endpoint_say_what_to_set() -> None:
    assert "AWS_PROFILE" in str(describe_error("sts GetCallerIdentity", "a", NoCredentialsError()))
    down = EndpointConnectionError(endpoint_url="http://127.0.0.1:9")
    assert "AWS_ENDPOINT_URL" in str(describe_error("ec2 DescribeVpcs", "b", down))


def test_group_options_try_every_spot_type_before_on_demand() -> None:
    group = GroupSpec(name="g", instance_types=("a", "b"), capacity="spot-then-on-demand")
    assert [(o.instance_type, o.lifecycle) for o in group_options(group)] == [
        ("a", "spot"),
        ("b", "spot"),
        ("a", "on-demand"),
        ("b", "on-demand"),
    ]
    spot_only = GroupSpec(name="g", instance_types=("a",), capacity="spot")
    assert [o.lifecycle for o in group_options(spot_only)] == ["spot"]


def test_a_call_still_throttled_after_botocores_tries_waits_within_a_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from clusterkit.providers.aws import errors

    sleeps: list[float] = []
    monkeypatch.setattr(time, "sleep", sleeps.append)
    refusals = 3

    def terminate() -> str:
        nonlocal refusals
        if refusals:
            refusals -= 1
            raise _client_error("RequestLimitExceeded", "Request limit exceeded.")
        return "done"

    assert errors.aws_call("ec2 TerminateInstances", "1000 instances", terminate) == "done"
    assert len(sleeps) == 3
    monkeypatch.setattr(errors, "RETRY_BUDGET_SECONDS", 2.0)
    sleeps.clear()

    def never() -> str:
        raise _client_error("RequestLimitExceeded", "Request limit exceeded.")

    with pytest.raises(ProviderError, match=r"TerminateInstances on 1000 instances failed "
                       r"\(RequestLimitExceeded\)"):  # fmt: skip
        errors.aws_call("ec2 TerminateInstances", "1000 instances", never)
    assert 2.0 <= sum(sleeps) < 2.0 + 20  # one wait past the budget at most


def test_an_answer_that_is_not_aws_is_one_line_too() -> None:
    from botocore.parsers import ResponseParserError

    from clusterkit.providers.aws.errors import aws_call

    def broken() -> None:
        raise ResponseParserError("Unable to parse response (syntax error), invalid XML received")

    with pytest.raises(ProviderError, match=r"^AWS ec2 CreateFleet on compute failed: Unable"):
        aws_call("ec2 CreateFleet", "compute", broken)
