"""What the cluster's instances launch with, once its keys exist: the SSM secrets and the
host-key bundles they read, the image, each group's launch template and every instance's
launch data (profile, IMDSv2 only, network interface, user-data within AWS's 16 KiB).
"""

from __future__ import annotations

import base64
from typing import Any

from clusterkit.errors import ProviderError
from clusterkit.providers.aws import names
from clusterkit.providers.aws.errors import AwsError, aws_call
from clusterkit.providers.aws.network import NetworkResources

# AWS keeps user-data to 16 KiB.
USER_DATA_LIMIT = 16 * 1024
# Debian 12's official image, through AWS's public parameter, when aws.image_id is not set.
DEFAULT_IMAGE_PARAM = "/aws/service/debian/release/12/latest/amd64"


class LaunchResources(NetworkResources):
    """The launch-time resource methods of ``ClusterResources`` (the security group is the
    network's)."""

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

    def boot_objects(self, objects: dict[str, str]) -> None:
        """The compute nodes' host-key bundles (``{key: JSON}``) in the cluster's own bucket;
        bundles of an earlier ``up`` that are not among them go (the node count changed)."""
        s3 = self.aws.client("s3")
        bucket = self.own_bucket_name()
        for key, body in objects.items():
            aws_call("s3 PutObject", key, s3.put_object, Bucket=bucket, Key=key,
                     Body=body.encode(), ContentType="application/json")  # fmt: skip
        prefix = names.keys_key(self.name, 0).rsplit("/", 1)[0] + "/"
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        stale = [
            {"Key": o["Key"]}
            for page in aws_call("s3 ListObjectsV2", prefix, list, pages)
            for o in page.get("Contents", [])
            if o["Key"] not in objects
        ]
        for start in range(0, len(stale), 1000):  # DeleteObjects takes a thousand at a time
            aws_call("s3 DeleteObjects", prefix, s3.delete_objects, Bucket=bucket,
                     Delete={"Objects": stale[start : start + 1000], "Quiet": True})  # fmt: skip

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
                f"the {role} user-data is {len(encoded)} bytes, over AWS's 16 KiB: fewer users "
                "or tenants in the spec (the boot script mounts each one's directory)"
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
