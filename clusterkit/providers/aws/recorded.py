"""What every AWS resource method of a cluster shares: the ids it recorded, and the rule that
a recorded id is trusted only once found or made again by this run.

Every method first looks for its resource (by tag or by the cluster's name) and creates it
only when missing, then records its id in ``record`` (the state's ``network`` map) and saves:
``up`` can stop after any call, and ``up`` again (or ``down``) picks up from there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from clusterkit.providers.aws import names
from clusterkit.providers.aws.errors import AwsError, aws_call
from clusterkit.providers.aws.session import Aws
from clusterkit.spec import ClusterSpec


class Recorded:
    """The base of a cluster's resource methods; ``record`` holds their ids between calls."""

    def __init__(
        self, aws: Aws, spec: ClusterSpec, record: dict[str, str], save: Callable[[], None]
    ) -> None:
        self.aws = aws
        self.spec = spec
        self.name = spec.name
        self.record = record
        self.save = save
        # What this object made or found: recorded ids are only trusted once checked here,
        # so an `up` after resources vanished (or a crash) makes them again.
        self.done: set[str] = set()

    def own_bucket_name(self) -> str:
        """The cluster's own bucket: its boot material, and checkpoints unless the spec
        names a bucket for them."""
        return names.bucket_name(self.name, self.aws.account, self.aws.region)

    def _set(self, key: str, value: str) -> str:
        self.record[key] = value
        self.done.add(key)
        self.save()
        return value

    def _filters(self, **extra: Sequence[str]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = [{"Name": f"tag:{names.TAG_CLUSTER}", "Values": [self.name]}]
        out += [{"Name": k.replace("_", "-"), "Values": list(v)} for k, v in extra.items()]
        return out

    def _create(
        self, call: str, resource: str, fn: Callable[..., Any], exists: str, **params: Any
    ) -> Any:
        """A create call that may find its resource there already (``up`` run again)."""
        try:
            return aws_call(call, resource, fn, **params)
        except AwsError as exc:
            if exc.code != exists:
                raise
            return None
