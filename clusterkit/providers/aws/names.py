"""Names and tags of everything a cluster owns on AWS.

Every resource carries the tag ``clusterkit:cluster=NAME``; ``down`` finds them by it. Names
derive from the cluster's name too, and where a name is a prefix of another cluster's
(``ab`` and ``ab-x``), the tag decides.
"""

from __future__ import annotations

from typing import Any

from clusterkit.nodetools.cloud_aws import (
    TAG_BATCH,
    TAG_CLUSTER,
    TAG_GROUP,
    TAG_NODE,
    boot_prefix,
    keys_key,
)

__all__ = [
    "TAG_BATCH",
    "TAG_CLUSTER",
    "TAG_GROUP",
    "TAG_NODE",
    "TAG_ROLE",
    "boot_prefix",
    "keys_key",
]

TAG_ROLE = "clusterkit:role"
# The subnets clusterkit makes in a VPC of its own: /18s of this /16, one per zone. A /18
# holds 16,379 instances (AWS keeps five addresses): a group of thousands may land in one zone.
VPC_CIDR = "10.42.0.0/16"
SUBNET_PREFIX = 18
MAX_ZONES = 3
# The head's fixed address: this offset into the first subnet (AWS keeps .0 to .3).
HEAD_HOST_OFFSET = 10
EVENT_RULES = {
    "spot-interruption": "EC2 Spot Instance Interruption Warning",
    "rebalance": "EC2 Instance Rebalance Recommendation",
    "state-change": "EC2 Instance State-change Notification",
}


def tags(cluster: str, **extra: str) -> list[dict[str, str]]:
    """EC2-style tag list: the cluster's tag, a Name, and ``extra`` (``clusterkit:KEY``)."""
    out = [{"Key": TAG_CLUSTER, "Value": cluster}]
    out += [{"Key": f"clusterkit:{k}", "Value": v} for k, v in extra.items()]
    return out


def tag_spec(resource_type: str, cluster: str, name: str, **extra: str) -> list[dict[str, Any]]:
    return [
        {
            "ResourceType": resource_type,
            "Tags": [*tags(cluster, **extra), {"Key": "Name", "Value": name}],
        }
    ]


def tag_dict(cluster: str) -> dict[str, str]:
    return {TAG_CLUSTER: cluster}


def prefix(cluster: str) -> str:
    return f"clusterkit-{cluster}"


def iam_path(cluster: str) -> str:
    return f"/clusterkit/{cluster}/"


def role_name(cluster: str, role: str) -> str:
    return f"{prefix(cluster)}-{role}"


def template_name(cluster: str, group: str) -> str:
    return f"{prefix(cluster)}-{group}"


def queue_name(cluster: str) -> str:
    return f"{prefix(cluster)}-events"


def rule_name(cluster: str, kind: str) -> str:
    return f"{prefix(cluster)}-{kind}"


def bucket_name(cluster: str, account: str, region: str) -> str:
    """Globally unique through the account and region; at most 63 characters."""
    return f"{prefix(cluster)}-{account}-{region}"[:63]


def checkpoint_prefix(cluster: str) -> str:
    """Where the cluster's checkpoints live in its bucket (``{user}/{job}/`` below it); the
    nodes' roles may use nothing else of the bucket, which may be the spec's own."""
    return f"checkpoints/{cluster}/"


def param_root(cluster: str) -> str:
    return f"/clusterkit/{cluster}"


def head_key_param(cluster: str) -> str:
    return f"{param_root(cluster)}/head-host-key"


def node_key_param(cluster: str) -> str:
    return f"{param_root(cluster)}/node-key"
