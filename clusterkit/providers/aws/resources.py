"""Creating what a cluster owns on AWS: ``ClusterResources``, one resource kind per method,
each idempotent, and ``planned``, what ``up`` would create (``up --dry-run``).

The methods live by kind of resource: the network (``network``), IAM, storage and events
(``services``), and what instances launch with (``launchdata``), on the recording every
method shares (``recorded``). This module puts them together in the order ``prepare`` makes
them.
"""

from __future__ import annotations

from dataclasses import dataclass

from clusterkit.providers.aws import names
from clusterkit.providers.aws.launchdata import LaunchResources
from clusterkit.providers.aws.services import ServiceResources
from clusterkit.spec import ClusterSpec


@dataclass(frozen=True)
class Planned:
    """One resource ``up`` would create: kind and name (for ``up --dry-run``)."""

    kind: str
    name: str


class ClusterResources(LaunchResources, ServiceResources):
    """The AWS resources of one cluster; ``record`` holds their ids between calls."""

    def prepare(self) -> None:
        """Everything nodes share, in dependency order."""
        self.vpc()
        self.subnets()
        self.internet_route()
        self.security_group()
        self.iam()
        self.bucket()
        self.queue()
        self.event_rules()


def planned(spec: ClusterSpec) -> list[Planned]:
    """What ``up`` creates for ``spec``, in order (``up --dry-run``)."""
    p = names.prefix(spec.name)
    out = []
    if not spec.aws.vpc_id and not spec.aws.subnet_ids:
        out += [
            Planned("vpc", f"{p} ({names.VPC_CIDR})"),
            Planned(
                "subnets",
                f"up to {names.MAX_ZONES}, one /{names.SUBNET_PREFIX} per availability zone",
            ),
            Planned("internet gateway", p),
        ]
    out += [
        Planned("security group", f"{p} (all traffic inside, SSH from {spec.aws.admin_cidr})"),
        Planned("key pair", p),
        Planned("iam role + instance profile", names.role_name(spec.name, "head")),
        Planned("iam role + instance profile", names.role_name(spec.name, "compute")),
    ]
    held = "boot material" + ("" if spec.aws.checkpoint_bucket else ", checkpoints")
    out.append(Planned("s3 bucket", f"{p}-ACCOUNT-REGION (private, encrypted: {held})"))
    out.append(Planned("sqs queue", names.queue_name(spec.name)))
    out += [Planned("eventbridge rule", names.rule_name(spec.name, k)) for k in names.EVENT_RULES]
    out.append(
        Planned("ssm parameters", f"{names.param_root(spec.name)}/* (head host key, node key)")
    )
    out += [Planned("launch template", names.template_name(spec.name, g.name)) for g in spec.groups]
    return out
