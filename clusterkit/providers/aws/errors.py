"""AWS failures as clusterkit errors: one line naming the call, the resource, AWS's error
code and what to do. Capacity codes become ``CapacityError`` so callers can fall back."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
)
from botocore.parsers import ResponseParserError

from clusterkit.errors import CapacityError, ProviderError
from clusterkit.nodetools.cloud import CAPACITY_CODES
from clusterkit.nodetools.cloud_aws import RETRY_BUDGET_SECONDS, THROTTLING_CODES, backoff

# What a user can do about an error code; the default names the code's documentation.
DENIED = "the credentials lack this permission: grant it or use another profile"
HINTS = {
    "AccessDenied": DENIED,
    "AccessDeniedException": DENIED,
    "UnauthorizedOperation": DENIED,
    "AuthFailure": "the credentials are invalid or expired: refresh them (aws sso login, ...)",
    "ExpiredToken": "the credentials are expired: refresh them (aws sso login, ...)",
    "InvalidClientTokenId": "the credentials are invalid: check AWS_PROFILE / the access key",
    "VpcLimitExceeded": "the account's VPC quota is used up: set aws.vpc_id or raise the quota",
    "AddressLimitExceeded": "an account quota is used up: raise it or free some",
    "InvalidAMIID.NotFound": "the image does not exist in this region: check aws.image_id",
    "InvalidAMIID.Malformed": "aws.image_id is not an image id (ami-...)",
    "InvalidSubnetID.NotFound": "check aws.subnet_ids: they must exist in the region",
    "InvalidVpcID.NotFound": "check aws.vpc_id: it must exist in the region",
    "InvalidIPAddress.InUse": "the head's fixed address is taken in that subnet: free it or use "
    "another subnet",
    "BucketAlreadyExists": "the cluster's bucket name is taken by another account: name the "
    "cluster otherwise",
    "DependencyViolation": "something still uses it: run `clusterkit down` again in a minute",
}
for _code in CAPACITY_CODES:
    HINTS[_code] = (
        "no capacity of that kind now: add instance types to the group, allow on-demand "
        "(capacity: spot-then-on-demand), or try another region"
    )
for _code in THROTTLING_CODES:
    HINTS[_code] = "AWS is throttling this account: wait a minute and run the command again"


class AwsError(ProviderError):
    """An AWS call failed; ``code`` is AWS's error code (empty when there was none)."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code


class AwsCapacityError(AwsError, CapacityError):
    """AWS has no capacity of the requested kind; the next option may have some."""


def one_line(text: str) -> str:
    return " ".join(text.split())


def describe_error(call: str, resource: str, exc: BaseException) -> AwsError:
    """The ``ProviderError`` (or ``CapacityError``) for a failed AWS call."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", "Unknown"))
        message = one_line(str(error.get("Message", "")))
        hint = HINTS.get(code, f"see the AWS documentation of {code}")
        cls = AwsCapacityError if code in CAPACITY_CODES else AwsError
        return cls(f"AWS {call} on {resource} failed ({code}): {message}; {hint}", code)
    if isinstance(exc, NoCredentialsError):
        return AwsError(
            f"AWS {call} on {resource}: no AWS credentials found; configure the standard chain "
            "(AWS_PROFILE, `aws configure`, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)"
        )
    if isinstance(exc, NoRegionError):
        return AwsError(
            f"AWS {call} on {resource}: no region; set aws.region or AWS_DEFAULT_REGION"
        )
    if isinstance(exc, EndpointConnectionError):
        return AwsError(
            f"AWS {call} on {resource}: cannot reach {exc.kwargs.get('endpoint_url')}; "
            "check the network and AWS_ENDPOINT_URL"
        )
    return AwsError(f"AWS {call} on {resource} failed: {one_line(str(exc))}")


def aws_call(call: str, resource: str, fn: Callable[..., Any], *args: Any, **params: Any) -> Any:
    """``fn(*args, **params)``; any botocore failure becomes one clear ``ProviderError``.

    Clients made here retry throttled calls themselves (adaptive, 8 attempts); a call still
    throttled then is tried again with backoff until ``RETRY_BUDGET_SECONDS`` of waits (the
    teardown of thousands of instances waits minutes for EC2's terminate tokens)."""
    waited, tries = 0.0, 0
    while True:
        try:
            return fn(*args, **params)
        except (ClientError, BotoCoreError, ResponseParserError) as exc:
            if error_code(exc) in THROTTLING_CODES and waited < RETRY_BUDGET_SECONDS:
                pause = backoff(tries)
                time.sleep(pause)
                waited, tries = waited + pause, tries + 1
                continue
            raise describe_error(call, resource, exc) from None


def error_code(exc: BaseException) -> str | None:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", "")) or None
    return None
