"""The cluster's network on AWS: its VPC, subnets, internet route, security group and key
pair (or the VPC and subnets the spec names), each made only when missing.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from clusterkit.errors import ProviderError
from clusterkit.providers.aws import names
from clusterkit.providers.aws.errors import AwsError, aws_call
from clusterkit.providers.aws.recorded import Recorded


class NetworkResources(Recorded):
    """The network resource methods of ``ClusterResources``."""

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
        cidrs = ipaddress.ip_network(names.VPC_CIDR).subnets(new_prefix=names.SUBNET_PREFIX)
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


def _first(subnets: list[dict[str, Any]], order: list[str]) -> dict[str, Any]:
    by_id = {s["SubnetId"]: s for s in subnets}
    return by_id[order[0]]
