"""boto3 sessions and clients from the standard chain: credentials, region, endpoint.

Nothing here reads credentials itself: boto3 finds them (environment, profile, instance
role, ...), and also the endpoint (``AWS_ENDPOINT_URL`` and its per-service forms), which is
how tests and anyone else point clusterkit at another endpoint such as a moto server.
``EVENT_HOOKS`` lets a caller watch every API call (the benchmark counts them that way).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError

from clusterkit.errors import ProviderError

# (event name, handler) registered on every session made here, e.g. ("before-call", count).
EVENT_HOOKS: list[tuple[str, Callable[..., Any]]] = []

# Adaptive retries ride out throttling on every call clusterkit makes from this machine...
CLIENT_CONFIG = Config(
    retries={"mode": "adaptive", "max_attempts": 8}, user_agent_extra="clusterkit"
)
# ...but those of the head's cloud backend, run from here too, which retries on its own
# within a bounded wait (retries stacked on retries would make that bound meaningless).
BARE_CONFIG = Config(
    retries={"mode": "standard", "total_max_attempts": 1}, user_agent_extra="clusterkit"
)


@functools.cache
def _shared_session() -> boto3.session.Session:
    """One session per process: its loader parses each service's model once (a quarter of
    a second per client otherwise). Regions are given per client, never set on it."""
    return boto3.session.Session()


class Aws:
    """The clients of one region, made on first use and shared."""

    def __init__(self, region: str | None = None) -> None:
        try:
            self.session = _shared_session()
        except BotoCoreError as exc:
            raise ProviderError(f"AWS session: {exc}; check your AWS profile settings") from None
        self._region = region or self.session.region_name
        if not self._region:
            raise ProviderError(
                "no AWS region: set aws.region in the spec, AWS_DEFAULT_REGION, or a profile region"
            )

    @property
    def region(self) -> str:
        return str(self._region)

    @functools.cache  # noqa: B019 - one client per service for the life of this object
    def client(self, service: str, *, retries: bool = True) -> Any:
        """The service's client; ``retries=False``: one that leaves retries to the caller."""
        config = CLIENT_CONFIG if retries else BARE_CONFIG
        client = self.session.client(service, region_name=self._region, config=config)
        for name, handler in EVENT_HOOKS:
            client.meta.events.register(name, handler)
        return client

    @property
    def ec2(self) -> Any:
        return self.client("ec2")

    @functools.cached_property
    def account(self) -> str:
        from clusterkit.providers.aws.errors import aws_call  # noqa: PLC0415 - cycle

        reply = aws_call(
            "sts GetCallerIdentity", "this account", self.client("sts").get_caller_identity
        )
        return str(reply["Account"])

    @property
    def endpoint_url(self) -> str | None:
        """The EC2 endpoint when it is not AWS's own (for the head's cloud.json)."""
        url = str(self.ec2.meta.endpoint_url)
        return None if url.endswith(".amazonaws.com") else url
