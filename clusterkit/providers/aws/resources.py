"""Creating what a cluster owns on AWS, one resource kind per method, each idempotent.

Every method first looks for its resource (by tag or by the cluster's name) and creates it
only when missing, then records its id in ``record`` (the state's ``network`` map) and saves:
``up`` can stop after any call, and ``up`` again (or ``down``) picks up from there.
"""

from __future__ import annotations

import base64
import ipaddress
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from clusterkit.errors import ProviderError
from clusterkit.providers.aws import names, policies
from clusterkit.providers.aws.errors import AwsError, aws_call
from clusterkit.providers.aws.session import Aws
from clusterkit.spec import ClusterSpec

# AWS keeps user-data to 16 KiB.
USER_DATA_LIMIT = 16 * 1024
CHECKPOINT_EXPIRY_DAYS = 30
# Debian 12's official image, through AWS's public parameter, when aws.image_id is not set.
DEFAULT_IMAGE_PARAM = "/aws/service/debian/release/12/latest/amd64"


@dataclass(frozen=True)
class Planned:
    """One resource ``up`` would create: kind and name (for ``up --dry-run``)."""

    kind: str
    name: str


class ClusterResources:
    """The AWS resources of one cluster; ``record`` holds their ids between calls."""

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

    def _set(self, key: str, value: str) -> str:
        self.record[key] = value
        self.done.add(key)
        self.save()
        return value

    def _filters(self, **extra: Sequence[str]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = [{"Name": f"tag:{names.TAG_CLUSTER}", "Values": [self.name]}]
        out += [{"Name": k.replace("_", "-"), "Values": list(v)} for k, v in extra.items()]
        return out

    # -- the order of `prepare` ------------------------------------------------------------

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

    # -- network ---------------------------------------------------------------------------

    def vpc(self) -> str:
        if self.spec.aws.vpc_id:
            return self._set("vpc_id", self.spec.aws.vpc_id)
        if "vpc_id" in self.done:
            return self.record["vpc_id"]
        ec2 = self.aws.ec2
        found = aws_call(
            "ec2 DescribeVpcs", "the cluster's VPC", ec2.describe_vpcs, Filters=self._filters()
        )["Vpcs"]
        if found:
            return self._set("vpc_id", found[0]["VpcId"])
        vpc = aws_call(
            "ec2 CreateVpc",
            f"VPC {names.VPC_CIDR}",
            ec2.create_vpc,
            CidrBlock=names.VPC_CIDR,
            TagSpecifications=names.tag_spec("vpc", self.name, names.prefix(self.name)),
        )["Vpc"]["VpcId"]
        return self._set("vpc_id", str(vpc))

    def subnets(self) -> list[str]:
        ec2 = self.aws.ec2
        if self.spec.aws.subnet_ids:
            ids = list(self.spec.aws.subnet_ids)
            got = aws_call(
                "ec2 DescribeSubnets", ", ".join(ids), ec2.describe_subnets, SubnetIds=ids
            )["Subnets"]
            vpcs = {s["VpcId"] for s in got}
            if len(vpcs) != 1 or (self.spec.aws.vpc_id and vpcs != {self.spec.aws.vpc_id}):
                raise ProviderError(
                    f"aws.subnet_ids: subnets {', '.join(ids)} are in VPC(s) "
                    f"{', '.join(sorted(vpcs))}; give subnets of one VPC (aws.vpc_id)"
                )
            self._set("vpc_id", vpcs.pop())
            self._set("head_subnet_cidr", _first(got, ids)["CidrBlock"])
            return self._subnets_set(ids)
        if "subnet_ids" in self.done:
            return self.record["subnet_ids"].split(",")
        vpc = self.vpc()
        found = aws_call(
            "ec2 DescribeSubnets",
            f"subnets of {vpc}",
            ec2.describe_subnets,
            Filters=self._filters(vpc_id=[vpc]),
        )["Subnets"]
        have = {s["AvailabilityZone"]: s for s in found}
        zones = aws_call(
            "ec2 DescribeAvailabilityZones",
            self.aws.region,
            ec2.describe_availability_zones,
            Filters=[{"Name": "state", "Values": ["available"]}],
        )
        wanted = sorted(z["ZoneName"] for z in zones["AvailabilityZones"])[: names.MAX_ZONES]
        cidrs = ipaddress.ip_network(names.VPC_CIDR).subnets(new_prefix=20)
        made = []
        for zone, cidr in zip(wanted, cidrs, strict=False):
            if zone in have:
                made.append(have[zone])
                continue
            subnet = aws_call(
                "ec2 CreateSubnet",
                f"{cidr} in {zone}",
                ec2.create_subnet,
                VpcId=vpc,
                CidrBlock=str(cidr),
                AvailabilityZone=zone,
                TagSpecifications=names.tag_spec(
                    "subnet", self.name, f"{names.prefix(self.name)}-{zone}"
                ),
            )["Subnet"]
            made.append(subnet)
        ids = [s["SubnetId"] for s in made]
        self._set("head_subnet_cidr", made[0]["CidrBlock"])
        return self._subnets_set(ids)

    def _subnets_set(self, ids: list[str]) -> list[str]:
        self._set("subnet_ids", ",".join(ids))
        return ids

    def head_address(self) -> str:
        """The head's fixed private address, so slurm.conf and every node know it up front."""
        net = ipaddress.ip_network(self.record["head_subnet_cidr"])
        return str(net.network_address + names.HEAD_HOST_OFFSET)

    def internet_route(self) -> None:
        """An internet gateway and a default route, in a VPC clusterkit made."""
        if self.spec.aws.vpc_id or self.spec.aws.subnet_ids or "igw_id" in self.done:
            return
        ec2 = self.aws.ec2
        vpc = self.vpc()
        found = aws_call(
            "ec2 DescribeInternetGateways",
            f"gateway of {vpc}",
            ec2.describe_internet_gateways,
            Filters=self._filters(),
        )
        gateways = found["InternetGateways"]
        if gateways:
            igw = gateways[0]["InternetGatewayId"]
        else:
            igw = aws_call(
                "ec2 CreateInternetGateway",
                vpc,
                ec2.create_internet_gateway,
                TagSpecifications=names.tag_spec(
                    "internet-gateway", self.name, names.prefix(self.name)
                ),
            )["InternetGateway"]["InternetGatewayId"]
        attached = gateways and any(a["VpcId"] == vpc for a in gateways[0].get("Attachments", []))
        if not attached:
            aws_call(
                "ec2 AttachInternetGateway",
                f"{igw} to {vpc}",
                ec2.attach_internet_gateway,
                InternetGatewayId=igw,
                VpcId=vpc,
            )
        tables = aws_call(
            "ec2 DescribeRouteTables",
            f"main route table of {vpc}",
            ec2.describe_route_tables,
            Filters=[
                {"Name": "vpc-id", "Values": [vpc]},
                {"Name": "association.main", "Values": ["true"]},
            ],
        )
        table = tables["RouteTables"][0]
        if not any(r.get("GatewayId") == igw for r in table.get("Routes", [])):
            aws_call(
                "ec2 CreateRoute",
                table["RouteTableId"],
                ec2.create_route,
                RouteTableId=table["RouteTableId"],
                DestinationCidrBlock="0.0.0.0/0",
                GatewayId=igw,
            )
        self._set("igw_id", igw)

    def security_group(self) -> str:
        if "security_group_id" in self.done:
            return self.record["security_group_id"]
        ec2 = self.aws.ec2
        vpc = self.vpc()
        name = names.prefix(self.name)
        found = aws_call(
            "ec2 DescribeSecurityGroups",
            name,
            ec2.describe_security_groups,
            Filters=self._filters(vpc_id=[vpc]),
        )["SecurityGroups"]
        if found:
            group = found[0]["GroupId"]
        else:
            group = aws_call(
                "ec2 CreateSecurityGroup",
                name,
                ec2.create_security_group,
                GroupName=name,
                VpcId=vpc,
                Description=f"clusterkit {self.name}: all traffic inside, SSH from the admin",
                TagSpecifications=names.tag_spec("security-group", self.name, name),
            )["GroupId"]
        admin = self.spec.aws.admin_cidr or ""
        rules = [
            {"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": group}]},
            {
                "IpProtocol": "tcp",
                "FromPort": 22,
                "ToPort": 22,
                "IpRanges": [{"CidrIp": admin, "Description": "aws.admin_cidr"}],
            },
        ]
        for rule in rules:
            try:
                aws_call(
                    "ec2 AuthorizeSecurityGroupIngress",
                    group,
                    ec2.authorize_security_group_ingress,
                    GroupId=group,
                    IpPermissions=[rule],
                )
            except AwsError as exc:
                if exc.code != "InvalidPermission.Duplicate":
                    raise
        return self._set("security_group_id", group)

    def key_pair(self, public_key: str) -> str:
        """The cluster's SSH key as an EC2 key pair (the image's default user gets it)."""
        name = names.prefix(self.name)
        if "key_pair" in self.done:
            return name
        try:
            aws_call(
                "ec2 ImportKeyPair",
                name,
                self.aws.ec2.import_key_pair,
                KeyName=name,
                PublicKeyMaterial=public_key.encode(),
                TagSpecifications=names.tag_spec("key-pair", self.name, name),
            )
        except AwsError as exc:
            if exc.code != "InvalidKeyPair.Duplicate":
                raise
        return self._set("key_pair", name)

    # -- IAM -------------------------------------------------------------------------------

    def scope(self) -> policies.Scope:
        return policies.Scope(self.name, self.aws.region, self.aws.account, self.bucket_name())

    def iam(self) -> None:
        """A role and instance profile each for the head and for compute nodes."""
        scope = self.scope()
        for role, doc in (
            ("compute", policies.compute_policy(scope)),
            ("head", policies.head_policy(scope)),
        ):
            self._role(role, doc)

    def _role(self, role: str, policy: str) -> None:
        key = f"{role}_profile"
        if key in self.done:
            return
        iam = self.aws.client("iam")
        name = names.role_name(self.name, role)
        path = names.iam_path(self.name)
        tags = names.tags(self.name, role=role)
        self._create(
            "iam CreateRole",
            name,
            iam.create_role,
            "EntityAlreadyExists",
            RoleName=name,
            Path=path,
            Tags=tags,
            AssumeRolePolicyDocument=json.dumps(policies.EC2_TRUST),
            Description=f"clusterkit cluster {self.name}: {role} nodes",
        )
        aws_call(
            "iam PutRolePolicy",
            name,
            iam.put_role_policy,
            RoleName=name,
            PolicyName=name,
            PolicyDocument=policy,
        )
        self._create(
            "iam CreateInstanceProfile",
            name,
            iam.create_instance_profile,
            "EntityAlreadyExists",
            InstanceProfileName=name,
            Path=path,
            Tags=tags,
        )
        self._create(
            "iam AddRoleToInstanceProfile",
            name,
            iam.add_role_to_instance_profile,
            "LimitExceeded",
            InstanceProfileName=name,
            RoleName=name,
        )
        self._set(key, name)

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

    # -- checkpoints and interruption events -----------------------------------------------

    def bucket_name(self) -> str:
        return self.spec.aws.checkpoint_bucket or names.bucket_name(
            self.name, self.aws.account, self.aws.region
        )

    def bucket(self) -> None:
        """A private, encrypted bucket with a lifecycle rule, unless the spec names one."""
        if self.spec.aws.checkpoint_bucket or "bucket" in self.done:
            return
        s3 = self.aws.client("s3")
        name = self.bucket_name()
        params: dict[str, Any] = {"Bucket": name}
        if self.aws.region != "us-east-1":  # us-east-1 refuses its own name as a constraint
            params["CreateBucketConfiguration"] = {"LocationConstraint": self.aws.region}
        self._create("s3 CreateBucket", name, s3.create_bucket, "BucketAlreadyOwnedByYou", **params)
        aws_call(
            "s3 PutBucketTagging",
            name,
            s3.put_bucket_tagging,
            Bucket=name,
            Tagging={"TagSet": names.tags(self.name)},
        )
        aws_call(
            "s3 PutPublicAccessBlock",
            name,
            s3.put_public_access_block,
            Bucket=name,
            PublicAccessBlockConfiguration={
                "BlockPublicAcls": True,
                "IgnorePublicAcls": True,
                "BlockPublicPolicy": True,
                "RestrictPublicBuckets": True,
            },
        )
        aws_call(
            "s3 PutBucketEncryption",
            name,
            s3.put_bucket_encryption,
            Bucket=name,
            ServerSideEncryptionConfiguration={
                "Rules": [
                    {
                        "ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms"},
                        "BucketKeyEnabled": True,
                    }
                ]
            },
        )
        aws_call(
            "s3 PutBucketLifecycleConfiguration",
            name,
            s3.put_bucket_lifecycle_configuration,
            Bucket=name,
            LifecycleConfiguration={
                "Rules": [
                    {
                        "ID": "clusterkit-checkpoints",
                        "Status": "Enabled",
                        "Filter": {"Prefix": ""},
                        "Expiration": {"Days": CHECKPOINT_EXPIRY_DAYS},
                        "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
                    }
                ]
            },
        )
        self._set("bucket", name)

    def queue(self) -> str:
        if "queue_url" in self.done:
            return self.record["queue_url"]
        sqs = self.aws.client("sqs")
        name = names.queue_name(self.name)
        url = aws_call(
            "sqs CreateQueue",
            name,
            sqs.create_queue,
            QueueName=name,
            tags=names.tag_dict(self.name),
            Attributes={
                "Policy": policies.queue_policy(self.scope()),
                "SqsManagedSseEnabled": "true",
                "MessageRetentionPeriod": "3600",  # a notice is worth two minutes
            },
        )["QueueUrl"]
        return self._set("queue_url", str(url))

    def event_rules(self) -> None:
        if "event_rules" in self.done:
            return
        events = self.aws.client("events")
        queue_arn = self.scope().queue
        for kind, detail_type in names.EVENT_RULES.items():
            rule = names.rule_name(self.name, kind)
            aws_call(
                "events PutRule",
                rule,
                events.put_rule,
                Name=rule,
                EventPattern=policies.event_pattern(detail_type),
                State="ENABLED",
                Description=f"clusterkit {self.name}: {detail_type}",
                Tags=names.tags(self.name),
            )
            aws_call(
                "events PutTargets",
                rule,
                events.put_targets,
                Rule=rule,
                Targets=[{"Id": "queue", "Arn": queue_arn}],
            )
        self._set("event_rules", ",".join(names.EVENT_RULES))

    # -- secrets and launch templates (once keys exist) ------------------------------------

    def secret_names(self) -> set[str]:
        """The cluster's parameters, found by its tag."""
        pages = (
            self.aws.client("ssm")
            .get_paginator("describe_parameters")
            .paginate(ParameterFilters=[{"Key": f"tag:{names.TAG_CLUSTER}", "Values": [self.name]}])
        )
        return {
            p["Name"]
            for page in aws_call("ssm DescribeParameters", "the cluster's secrets", list, pages)
            for p in page["Parameters"]
        }

    def secrets(self, params: dict[str, str], have: set[str]) -> None:
        """SecureString parameters, tagged (the instance roles' condition reads the tag);
        those in ``have`` are overwritten (they keep their tags: none can go with Overwrite)."""
        ssm = self.aws.client("ssm")
        for name, value in params.items():
            extra: dict[str, Any] = (
                {"Overwrite": True} if name in have else {"Tags": names.tags(self.name)}
            )
            aws_call(
                "ssm PutParameter",
                name,
                ssm.put_parameter,
                Name=name,
                Value=value,
                Type="SecureString",
                **extra,
            )

    def delete_secrets(self, doomed: list[str]) -> None:
        ssm = self.aws.client("ssm")
        for start in range(0, len(doomed), 10):  # ten names a call
            batch = doomed[start : start + 10]
            aws_call("ssm DeleteParameters", ", ".join(batch), ssm.delete_parameters, Names=batch)

    def image(self) -> str:
        if self.spec.aws.image_id:
            return self.spec.aws.image_id
        if "image_id" in self.done:
            return self.record["image_id"]
        try:
            value = aws_call(
                "ssm GetParameter",
                DEFAULT_IMAGE_PARAM,
                self.aws.client("ssm").get_parameter,
                Name=DEFAULT_IMAGE_PARAM,
            )
        except AwsError as exc:
            raise ProviderError(
                f"aws.image_id: not set, and the default Debian 12 image is not published in "
                f"{self.aws.region} ({exc.code}); set aws.image_id to a Debian 12 based image"
            ) from None
        return self._set("image_id", str(value["Parameter"]["Value"]))

    def launch_template(self, group: str, user_data: str) -> str:
        key = f"template:{group}"
        if key in self.done:
            return self.record[key]
        name = names.template_name(self.name, group)
        ec2 = self.aws.ec2
        found = aws_call(
            "ec2 DescribeLaunchTemplates",
            name,
            ec2.describe_launch_templates,
            Filters=self._filters(**{"launch-template-name": [name]}),
        )
        if found["LaunchTemplates"]:
            return self._set(key, found["LaunchTemplates"][0]["LaunchTemplateId"])
        template = aws_call(
            "ec2 CreateLaunchTemplate",
            name,
            ec2.create_launch_template,
            LaunchTemplateName=name,
            LaunchTemplateData=self.instance_data("compute", user_data),
            TagSpecifications=names.tag_spec("launch-template", self.name, name, group=group),
        )["LaunchTemplate"]["LaunchTemplateId"]
        return self._set(key, template)

    def instance_data(self, role: str, user_data: str) -> dict[str, Any]:
        """What every instance of ``role`` gets: image, profile, IMDSv2 only, boot script."""
        encoded = user_data.encode()
        if len(encoded) > USER_DATA_LIMIT:
            raise ProviderError(
                f"the {role} user-data is {len(encoded)} bytes, over AWS's 16 KiB: fewer nodes "
                "in the spec (known_hosts grows with them)"
            )
        # Every node gets a public address (its interface asks for one, so the subnets need
        # no setting): nodes reach AWS's APIs (SSM, S3) and package mirrors through the
        # gateway, and the security group admits nothing from outside but the admin's SSH.
        return {
            "ImageId": self.image(),
            "KeyName": self.record.get("key_pair", names.prefix(self.name)),
            "IamInstanceProfile": {"Name": names.role_name(self.name, role)},
            "MetadataOptions": {
                "HttpTokens": "required",  # IMDSv2 only
                "HttpEndpoint": "enabled",
                "HttpPutResponseHopLimit": 1,
                "InstanceMetadataTags": "enabled",  # the node reads its name from its tag
            },
            "NetworkInterfaces": [
                {
                    "DeviceIndex": 0,
                    "Groups": [self.security_group()],
                    "AssociatePublicIpAddress": True,
                    "DeleteOnTermination": True,
                }
            ],
            "UserData": base64.b64encode(encoded).decode(),
            "TagSpecifications": names.tag_spec("volume", self.name, names.prefix(self.name)),
        }


def _first(subnets: list[dict[str, Any]], order: list[str]) -> dict[str, Any]:
    by_id = {s["SubnetId"]: s for s in subnets}
    return by_id[order[0]]


def planned(spec: ClusterSpec) -> list[Planned]:
    """What ``up`` creates for ``spec``, in order (``up --dry-run``)."""
    p = names.prefix(spec.name)
    out = []
    if not spec.aws.vpc_id and not spec.aws.subnet_ids:
        out += [
            Planned("vpc", f"{p} ({names.VPC_CIDR})"),
            Planned("subnets", f"up to {names.MAX_ZONES}, one /20 per availability zone"),
            Planned("internet gateway", p),
        ]
    out += [
        Planned("security group", f"{p} (all traffic inside, SSH from {spec.aws.admin_cidr})"),
        Planned("key pair", p),
        Planned("iam role + instance profile", names.role_name(spec.name, "head")),
        Planned("iam role + instance profile", names.role_name(spec.name, "compute")),
    ]
    if not spec.aws.checkpoint_bucket:
        out.append(Planned("s3 bucket", f"{p}-ACCOUNT-REGION (private, encrypted, lifecycle)"))
    out.append(Planned("sqs queue", names.queue_name(spec.name)))
    out += [Planned("eventbridge rule", names.rule_name(spec.name, k)) for k in names.EVENT_RULES]
    out.append(Planned("ssm parameters", f"{names.param_root(spec.name)}/* (host keys, node key)"))
    out += [Planned("launch template", names.template_name(spec.name, g.name)) for g in spec.groups]
    return out
