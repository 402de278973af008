"""IAM documents of a cluster: least privilege, scoped by the cluster's tag and names.

The head may launch instances only if they carry the cluster's tag, terminate only instances
that carry it, read only its own queue and secrets, use only its own bucket, and hand only
the compute role to the instances it launches; in the bucket, it names the batches it
launches. Compute nodes may read the node key, their boot material in the cluster's own
bucket (names, host keys and certificates) and use the cluster's checkpoints; nothing else.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from clusterkit.providers.aws import names

EC2_TRUST = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Principal": {"Service": "ec2.amazonaws.com"},
            "Action": "sts:AssumeRole",
        }
    ],
}


@dataclass(frozen=True)
class Scope:
    """Where a cluster's resources live: enough to write their ARNs."""

    cluster: str
    region: str
    account: str
    bucket: str  # where checkpoints go: the spec's bucket, else the cluster's own
    own_bucket: str  # the cluster's own, which holds its boot material
    topic: str | None = None  # the SNS topic notifications go to (notify.sns_topic_arn)

    def ec2(self, kind: str) -> str:
        return f"arn:aws:ec2:{self.region}:{self.account}:{kind}/*"

    @property
    def queue(self) -> str:
        return f"arn:aws:sqs:{self.region}:{self.account}:{names.queue_name(self.cluster)}"

    def rule(self, kind: str) -> str:
        name = names.rule_name(self.cluster, kind)
        return f"arn:aws:events:{self.region}:{self.account}:rule/{name}"

    def role(self, role: str) -> str:
        path = names.iam_path(self.cluster)
        return f"arn:aws:iam::{self.account}:role{path}{names.role_name(self.cluster, role)}"

    def param(self, name: str) -> str:
        """The ARN of parameter ``name`` (``/clusterkit/...``); a path's too."""
        return f"arn:aws:ssm:{self.region}:{self.account}:parameter{name}"

    @property
    def own_tag(self) -> dict[str, str]:
        return {names.TAG_CLUSTER: self.cluster}


def _doc(*statements: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


def _secrets(s: Scope, sid: str, resources: list[str]) -> dict[str, Any]:
    return {
        "Sid": sid,
        "Effect": "Allow",
        "Action": ["ssm:GetParameter", "ssm:GetParameters", "ssm:GetParametersByPath"],
        "Resource": resources,
        "Condition": {"StringEquals": {f"ssm:ResourceTag/{names.TAG_CLUSTER}": s.cluster}},
    }


def _bucket(s: Scope) -> list[dict[str, Any]]:
    """What ``ck-checkpoint``'s S3 store does, under the cluster's prefix only: list, read,
    write (multipart too, aborted on failure) and delete checkpoints."""
    prefix = names.checkpoint_prefix(s.cluster)
    return [
        {
            "Sid": "ListCheckpoints",
            "Effect": "Allow",
            "Action": "s3:ListBucket",
            "Resource": f"arn:aws:s3:::{s.bucket}",
            "Condition": {"StringLike": {"s3:prefix": f"{prefix}*"}},
        },
        {
            "Sid": "UseCheckpoints",
            "Effect": "Allow",
            "Action": [
                "s3:GetObject",
                "s3:PutObject",
                "s3:DeleteObject",
                "s3:AbortMultipartUpload",
            ],
            "Resource": f"arn:aws:s3:::{s.bucket}/{prefix}*",
        },
    ]


def _boot(s: Scope, sid: str, actions: list[str], under: str) -> dict[str, Any]:
    return {
        "Sid": sid,
        "Effect": "Allow",
        "Action": actions,
        "Resource": f"arn:aws:s3:::{s.own_bucket}/{names.boot_prefix(s.cluster)}{under}*",
    }


def head_policy(s: Scope) -> str:
    launch_from = [
        s.ec2(kind)
        for kind in (
            "subnet",
            "security-group",
            "network-interface",
            "volume",
            "key-pair",
            "fleet",
            "spot-instances-request",
        )
    ] + [f"arn:aws:ec2:{s.region}::image/*"]
    tagged = {"StringEquals": {f"aws:RequestTag/{names.TAG_CLUSTER}": s.cluster}}
    own = {"StringEquals": {f"ec2:ResourceTag/{names.TAG_CLUSTER}": s.cluster}}
    return _doc(
        {
            "Sid": "LaunchOnlyTaggedInstances",
            "Effect": "Allow",
            "Action": ["ec2:RunInstances", "ec2:CreateFleet"],
            "Resource": s.ec2("instance"),
            "Condition": tagged,
        },
        {
            "Sid": "LaunchFromClusterTemplates",
            "Effect": "Allow",
            "Action": ["ec2:RunInstances", "ec2:CreateFleet"],
            "Resource": s.ec2("launch-template"),
            "Condition": own,
        },
        {
            "Sid": "LaunchInto",
            "Effect": "Allow",
            "Action": ["ec2:RunInstances", "ec2:CreateFleet"],
            "Resource": launch_from,
        },
        {
            "Sid": "TagAtLaunch",
            "Effect": "Allow",
            "Action": "ec2:CreateTags",
            "Resource": "*",
            "Condition": {"StringEquals": {"ec2:CreateAction": ["RunInstances", "CreateFleet"]}},
        },
        {
            "Sid": "TerminateOwnInstances",
            "Effect": "Allow",
            "Action": "ec2:TerminateInstances",
            "Resource": s.ec2("instance"),
            "Condition": own,
        },
        {
            "Sid": "Describe",  # Describe* calls support no resource-level permissions
            "Effect": "Allow",
            "Action": [
                "ec2:DescribeInstances",
                "ec2:DescribeInstanceStatus",
                "ec2:DescribeFleets",
                "ec2:DescribeLaunchTemplates",
                "ec2:DescribeLaunchTemplateVersions",
                "ec2:DescribeSubnets",
                "ec2:DescribeSpotPriceHistory",
            ],
            "Resource": "*",
        },
        {
            "Sid": "PassOnlyTheComputeRole",
            "Effect": "Allow",
            "Action": "iam:PassRole",
            "Resource": s.role("compute"),
        },
        {
            "Sid": "ConsumeInterruptionEvents",
            "Effect": "Allow",
            "Action": [
                "sqs:ReceiveMessage",
                "sqs:DeleteMessage",
                "sqs:ChangeMessageVisibility",
                "sqs:GetQueueAttributes",
                "sqs:GetQueueUrl",
            ],
            "Resource": s.queue,
        },
        # The head reads its own host key only: compute nodes never see it.
        _secrets(s, "ReadOwnHostKey", [s.param(names.head_key_param(s.cluster))]),
        # The resume program names each batch it launches (one object per fleet call).
        _boot(s, "NameBatches", ["s3:PutObject", "s3:GetObject"], "names/"),
        *_bucket(s),
        *_notify(s),
    )


def _notify(s: Scope) -> list[dict[str, Any]]:
    """Publishing to the spec's one topic, where there is one (the head's notifications)."""
    if not s.topic:
        return []
    return [{"Sid": "PublishNotifications", "Effect": "Allow", "Action": "sns:Publish",
             "Resource": s.topic}]  # fmt: skip


def compute_policy(s: Scope) -> str:
    readable = [s.param(names.node_key_param(s.cluster))]
    return _doc(
        _secrets(s, "ReadComputeSecrets", readable),
        _boot(s, "ReadBootMaterial", ["s3:GetObject"], ""),
        *_bucket(s),
    )


def queue_policy(s: Scope) -> str:
    """Only the cluster's own EventBridge rules may send to its queue."""
    return _doc(
        {
            "Sid": "OnlyTheClusterRules",
            "Effect": "Allow",
            "Principal": {"Service": "events.amazonaws.com"},
            "Action": "sqs:SendMessage",
            "Resource": s.queue,
            "Condition": {"ArnEquals": {"aws:SourceArn": [s.rule(k) for k in names.EVENT_RULES]}},
        }
    )


def event_pattern(detail_type: str) -> str:
    return json.dumps({"source": ["aws.ec2"], "detail-type": [detail_type]})
