"""Providers: where a cluster's nodes come from (``local`` namespaces or ``aws`` EC2)."""

from __future__ import annotations

from clusterkit.errors import SpecError
from clusterkit.providers.base import Provider


def provider_class(kind: str) -> type[Provider]:
    if kind == "local":
        from clusterkit.providers.local.provider import LocalProvider  # noqa: PLC0415 - lazy

        return LocalProvider
    if kind == "aws":
        from clusterkit.providers.aws.provider import AwsProvider  # noqa: PLC0415 - lazy

        return AwsProvider
    raise SpecError("provider", [f"{kind!r} is not a provider; use 'local' or 'aws'"])


KINDS = ("local", "aws")


def provider_classes() -> list[type[Provider]]:
    """Every provider, in the order ``clusterkit list`` shows them."""
    return [provider_class(kind) for kind in KINDS]
