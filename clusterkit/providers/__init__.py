"""Providers: where a cluster's nodes come from (``local`` namespaces or ``aws`` EC2)."""

from __future__ import annotations

from clusterkit.errors import SpecError
from clusterkit.providers.base import Provider


def provider_class(kind: str) -> type[Provider]:
    if kind == "local":
        from clusterkit.providers.local.provider import LocalProvider  # noqa: PLC0415 - lazy

        return LocalProvider
    raise SpecError("provider", [f"{kind!r} is not available in this version; use 'local'"])
