"""``down`` on AWS: find everything tagged ``clusterkit:cluster=NAME`` and delete it in
dependency order (instances before what they use, the VPC last).

No state is needed: every kind of resource is found by its tag (or, where an API cannot
filter by tag, by the cluster's name and then checked for the tag). A resource already gone
is not an error, so ``down`` is idempotent and works from any partial ``up``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from clusterkit.providers.aws import names
from clusterkit.providers.aws.errors import AwsError, aws_call
from clusterkit.providers.aws.session import Aws

# Codes meaning "already gone": down goes on.
GONE = frozenset(
    {
        "NoSuchBucket",
        "NoSuchEntity",
        "ResourceNotFoundException",
        "ParameterNotFound",
        "AWS.SimpleQueueService.NonExistentQueue",
        "QueueDoesNotExist",
        "InvalidVpcID.NotFound",
        "InvalidSubnetID.NotFound",
        "InvalidGroup.NotFound",
        "InvalidInternetGatewayID.NotFound",
        "InvalidKeyPair.NotFound",
        "InvalidLaunchTemplateId.NotFound",
        "InvalidLaunchTemplateName.NotFoundException",
        "InvalidInstanceID.NotFound",
        "Gateway.NotAttached",
        "InvalidFleetId.NotFound",
    }
)
# ENIs of terminated instances linger a little; what depends on them is retried.
DEPENDENCY_RETRIES = 30
TERMINATE_WAIT_SECONDS = 600.0  # as the instance_terminated waiter this replaced: 120 x 5 s
TERMINATE_POLL_SECONDS = 5.0
DEPENDENCY_WAIT_SECONDS = 2.0


class Teardown:
    def __init__(self, aws: Aws, cluster: str) -> None:
        self.aws = aws
        self.cluster = cluster
        self.removed: list[str] = []

    def run(self) -> list[str]:
        for step in (
            self.instances,
            self.fleets,
            self.launch_templates,
            self.event_rules,
            self.queue,
            self.bucket,
            self.parameters,
            self.instance_profiles,
            self.roles,
            self.key_pairs,
            self.security_groups,
            self.subnets,
            self.internet_gateways,
            self.vpcs,
        ):
            step()
        return self.removed

    # -- helpers ---------------------------------------------------------------------------

    def _filters(self) -> list[dict[str, Any]]:
        return [{"Name": f"tag:{names.TAG_CLUSTER}", "Values": [self.cluster]}]

    def _delete(
        self, what: str, call: str, fn: Callable[..., Any], retry: bool = False, **params: Any
    ) -> None:
        """Delete one resource; gone already is fine; ``retry`` waits out dependencies."""
        for attempt in range(DEPENDENCY_RETRIES if retry else 1):
            try:
                aws_call(call, what, fn, **params)
                self.removed.append(what)
                return
            except AwsError as exc:
                if exc.code in GONE:
                    return
                if exc.code != "DependencyViolation" or attempt + 1 == DEPENDENCY_RETRIES:
                    raise
                time.sleep(DEPENDENCY_WAIT_SECONDS)

    def _tagged(self, tags: list[dict[str, str]] | dict[str, str] | None) -> bool:
        if isinstance(tags, dict):
            return tags.get(names.TAG_CLUSTER) == self.cluster
        return any(t["Key"] == names.TAG_CLUSTER and t["Value"] == self.cluster for t in tags or [])

    # -- EC2 -------------------------------------------------------------------------------

    def _live_instances(self) -> list[str]:
        """The cluster's instances not yet terminated: a page per thousand."""
        pages = self.aws.ec2.get_paginator("describe_instances").paginate(
            Filters=[
                *self._filters(),
                {
                    "Name": "instance-state-name",
                    "Values": ["pending", "running", "stopping", "stopped", "shutting-down"],
                },
            ],
            PaginationConfig={"PageSize": 1000},
        )
        return [
            i["InstanceId"]
            for page in aws_call("ec2 DescribeInstances", "the cluster's instances", list, pages)
            for r in page["Reservations"]
            for i in r["Instances"]
        ]

    def instances(self) -> None:
        ec2 = self.aws.ec2
        ids = self._live_instances()
        for start in range(0, len(ids), 1000):
            batch = ids[start : start + 1000]
            aws_call(
                "ec2 TerminateInstances",
                f"{len(batch)} instances",
                ec2.terminate_instances,
                InstanceIds=batch,
            )
        if ids:
            # Security group, subnets and VPC can go only once the instances are gone. Asked
            # by tag, a page per thousand (a waiter would send every id in one request).
            deadline = time.monotonic() + TERMINATE_WAIT_SECONDS
            while left := self._live_instances():
                if time.monotonic() > deadline:
                    raise AwsError(
                        f"{len(left)} of the cluster's instances are not terminated after "
                        f"{TERMINATE_WAIT_SECONDS:.0f}s ({', '.join(left[:3])}...); run "
                        "`clusterkit down` again"
                    )
                time.sleep(TERMINATE_POLL_SECONDS)
            self.removed += [f"instance {i}" for i in ids]

    def fleets(self) -> None:
        ec2 = self.aws.ec2
        found = aws_call("ec2 DescribeFleets", "the cluster's fleets", ec2.describe_fleets)
        ids = [
            f["FleetId"]
            for f in found.get("Fleets", [])
            if self._tagged(f.get("Tags")) and not f.get("FleetState", "").startswith("deleted")
        ]
        for start in range(0, len(ids), 25):  # DeleteFleets takes 25 instant fleets a call
            batch = ids[start : start + 25]
            try:
                aws_call(
                    "ec2 DeleteFleets",
                    f"{len(batch)} fleets",
                    ec2.delete_fleets,
                    FleetIds=batch,
                    TerminateInstances=True,  # required for instant fleets
                )
            except AwsError as exc:
                # moto answers this for an instant fleet whose instances it cannot find; the
                # instances go by their tag in the next step either way.
                if exc.code != "InvalidParameterCombination":
                    raise
                continue
            self.removed += [f"fleet {i}" for i in batch]

    def launch_templates(self) -> None:
        ec2 = self.aws.ec2
        found = aws_call(
            "ec2 DescribeLaunchTemplates",
            "the cluster's templates",
            ec2.describe_launch_templates,
            Filters=self._filters(),
        )
        for t in found["LaunchTemplates"]:
            self._delete(
                f"launch template {t['LaunchTemplateName']}",
                "ec2 DeleteLaunchTemplate",
                ec2.delete_launch_template,
                LaunchTemplateId=t["LaunchTemplateId"],
            )

    def key_pairs(self) -> None:
        ec2 = self.aws.ec2
        found = aws_call(
            "ec2 DescribeKeyPairs",
            "the cluster's key pair",
            ec2.describe_key_pairs,
            Filters=self._filters(),
        )
        for k in found["KeyPairs"]:
            self._delete(
                f"key pair {k['KeyName']}",
                "ec2 DeleteKeyPair",
                ec2.delete_key_pair,
                KeyName=k["KeyName"],
            )

    def security_groups(self) -> None:
        ec2 = self.aws.ec2
        found = aws_call(
            "ec2 DescribeSecurityGroups",
            "the cluster's security group",
            ec2.describe_security_groups,
            Filters=self._filters(),
        )
        for g in found["SecurityGroups"]:
            self._delete(
                f"security group {g['GroupId']}",
                "ec2 DeleteSecurityGroup",
                ec2.delete_security_group,
                retry=True,
                GroupId=g["GroupId"],
            )

    def subnets(self) -> None:
        ec2 = self.aws.ec2
        found = aws_call(
            "ec2 DescribeSubnets",
            "the cluster's subnets",
            ec2.describe_subnets,
            Filters=self._filters(),
        )
        for s in found["Subnets"]:
            self._delete(
                f"subnet {s['SubnetId']}",
                "ec2 DeleteSubnet",
                ec2.delete_subnet,
                retry=True,
                SubnetId=s["SubnetId"],
            )

    def internet_gateways(self) -> None:
        ec2 = self.aws.ec2
        found = aws_call(
            "ec2 DescribeInternetGateways",
            "the cluster's gateway",
            ec2.describe_internet_gateways,
            Filters=self._filters(),
        )
        for g in found["InternetGateways"]:
            igw = g["InternetGatewayId"]
            for attachment in g.get("Attachments", []):
                self._delete(
                    f"attachment {igw}/{attachment['VpcId']}",
                    "ec2 DetachInternetGateway",
                    ec2.detach_internet_gateway,
                    retry=True,
                    InternetGatewayId=igw,
                    VpcId=attachment["VpcId"],
                )
            self._delete(
                f"internet gateway {igw}",
                "ec2 DeleteInternetGateway",
                ec2.delete_internet_gateway,
                InternetGatewayId=igw,
            )

    def vpcs(self) -> None:
        ec2 = self.aws.ec2
        found = aws_call(
            "ec2 DescribeVpcs", "the cluster's VPC", ec2.describe_vpcs, Filters=self._filters()
        )
        for v in found["Vpcs"]:
            self._delete(
                f"vpc {v['VpcId']}", "ec2 DeleteVpc", ec2.delete_vpc, retry=True, VpcId=v["VpcId"]
            )

    # -- events, queue, bucket, parameters -------------------------------------------------

    def event_rules(self) -> None:
        events = self.aws.client("events")
        found = aws_call(
            "events ListRules",
            "the cluster's rules",
            events.list_rules,
            NamePrefix=f"{names.prefix(self.cluster)}-",
        )
        for rule in found["Rules"]:
            tags = aws_call(
                "events ListTagsForResource",
                rule["Name"],
                events.list_tags_for_resource,
                ResourceARN=rule["Arn"],
            )["Tags"]
            if not self._tagged(tags):
                continue  # another cluster whose name starts with this one's
            targets = aws_call(
                "events ListTargetsByRule",
                rule["Name"],
                events.list_targets_by_rule,
                Rule=rule["Name"],
            )["Targets"]
            if targets:
                aws_call(
                    "events RemoveTargets",
                    rule["Name"],
                    events.remove_targets,
                    Rule=rule["Name"],
                    Ids=[t["Id"] for t in targets],
                )
            self._delete(
                f"event rule {rule['Name']}",
                "events DeleteRule",
                events.delete_rule,
                Name=rule["Name"],
            )

    def queue(self) -> None:
        sqs = self.aws.client("sqs")
        name = names.queue_name(self.cluster)
        try:
            url = aws_call("sqs GetQueueUrl", name, sqs.get_queue_url, QueueName=name)["QueueUrl"]
        except AwsError as exc:
            if exc.code in GONE:
                return
            raise
        tags = aws_call("sqs ListQueueTags", name, sqs.list_queue_tags, QueueUrl=url)
        if self._tagged(tags.get("Tags", {})):
            self._delete(f"queue {name}", "sqs DeleteQueue", sqs.delete_queue, QueueUrl=url)

    def bucket(self) -> None:
        s3 = self.aws.client("s3")
        name = names.bucket_name(self.cluster, self.aws.account, self.aws.region)
        try:
            tags = aws_call("s3 GetBucketTagging", name, s3.get_bucket_tagging, Bucket=name)
        except AwsError as exc:
            if exc.code in GONE or exc.code == "NoSuchTagSet":
                return
            raise
        if not self._tagged(tags.get("TagSet")):
            return
        pages = s3.get_paginator("list_object_versions").paginate(Bucket=name)
        for page in aws_call("s3 ListObjectVersions", name, list, pages):
            doomed = [
                {"Key": o["Key"], "VersionId": o["VersionId"]}
                for o in page.get("Versions", []) + page.get("DeleteMarkers", [])
            ]
            if doomed:
                aws_call(
                    "s3 DeleteObjects",
                    name,
                    s3.delete_objects,
                    Bucket=name,
                    Delete={"Objects": doomed, "Quiet": True},
                )
        self._delete(f"bucket {name}", "s3 DeleteBucket", s3.delete_bucket, Bucket=name)

    def parameters(self) -> None:
        ssm = self.aws.client("ssm")
        pages = ssm.get_paginator("describe_parameters").paginate(
            ParameterFilters=[{"Key": f"tag:{names.TAG_CLUSTER}", "Values": [self.cluster]}]
        )
        found = [
            p["Name"]
            for page in aws_call("ssm DescribeParameters", "the cluster's parameters", list, pages)
            for p in page["Parameters"]
        ]
        for start in range(0, len(found), 10):  # DeleteParameters takes ten at a time
            batch = found[start : start + 10]
            aws_call(
                "ssm DeleteParameters",
                f"{len(batch)} parameters",
                ssm.delete_parameters,
                Names=batch,
            )
            self.removed += [f"parameter {n}" for n in batch]

    # -- IAM: found by the cluster's own path ----------------------------------------------

    def instance_profiles(self) -> None:
        iam = self.aws.client("iam")
        found = aws_call(
            "iam ListInstanceProfiles",
            names.iam_path(self.cluster),
            iam.list_instance_profiles,
            PathPrefix=names.iam_path(self.cluster),
        )
        for profile in found["InstanceProfiles"]:
            name = profile["InstanceProfileName"]
            for role in profile.get("Roles", []):
                self._delete(
                    f"role {role['RoleName']} in {name}",
                    "iam RemoveRoleFromInstanceProfile",
                    iam.remove_role_from_instance_profile,
                    InstanceProfileName=name,
                    RoleName=role["RoleName"],
                )
            self._delete(
                f"instance profile {name}",
                "iam DeleteInstanceProfile",
                iam.delete_instance_profile,
                InstanceProfileName=name,
            )

    def roles(self) -> None:
        iam = self.aws.client("iam")
        found = aws_call(
            "iam ListRoles",
            names.iam_path(self.cluster),
            iam.list_roles,
            PathPrefix=names.iam_path(self.cluster),
        )
        for role in found["Roles"]:
            name = role["RoleName"]
            inline = aws_call("iam ListRolePolicies", name, iam.list_role_policies, RoleName=name)
            for policy in inline["PolicyNames"]:
                self._delete(
                    f"policy {policy}",
                    "iam DeleteRolePolicy",
                    iam.delete_role_policy,
                    RoleName=name,
                    PolicyName=policy,
                )
            self._delete(f"role {name}", "iam DeleteRole", iam.delete_role, RoleName=name)


def destroy(aws: Aws, cluster: str) -> list[str]:
    return Teardown(aws, cluster).run()


def discover(aws: Aws) -> list[str]:
    """Names of clusters with tagged VPCs or instances in this region."""
    ec2 = aws.ec2
    key = [{"Name": "tag-key", "Values": [names.TAG_CLUSTER]}]
    vpcs = aws_call("ec2 DescribeVpcs", "clusterkit VPCs", ec2.describe_vpcs, Filters=key)["Vpcs"]
    found = {t["Value"] for v in vpcs for t in v.get("Tags", []) if t["Key"] == names.TAG_CLUSTER}
    reply = aws_call(
        "ec2 DescribeInstances",
        "clusterkit instances",
        ec2.describe_instances,
        Filters=[
            *key,
            {
                "Name": "instance-state-name",
                "Values": ["pending", "running", "stopping", "stopped"],
            },
        ],
    )
    for r in reply["Reservations"]:
        for i in r["Instances"]:
            found |= {t["Value"] for t in i.get("Tags", []) if t["Key"] == names.TAG_CLUSTER}
    return sorted(found)
