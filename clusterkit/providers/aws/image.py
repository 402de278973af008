"""Node images for AWS: ``clusterkit image list``, ``delete`` and ``clean``, and what every
image command shares: the tags, the session, ending builder instances, ``ImageError``.

Everything a build makes carries ``clusterkit:image-build=ID``; an image also carries
``clusterkit:image=node`` and the recipe's id, so ``image list`` finds clusterkit's images
and ``image clean`` finds a builder left by a build that was killed. The recipe is
``imagerecipe``; ``image build`` is ``imagebuild``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from clusterkit.errors import ProviderError
from clusterkit.providers.aws.errors import aws_call
from clusterkit.providers.aws.session import Aws
from clusterkit.spec import ClusterSpec

TAG_IMAGE = "clusterkit:image"
TAG_BUILD = "clusterkit:image-build"
TAG_RECIPE = "clusterkit:recipe"
TAG_BASE = "clusterkit:base-image"


class ImageError(ProviderError):
    """A build failed; what it made is deleted (``builder`` names its instance, if any)."""


@dataclass(frozen=True)
class ImageInfo:
    image_id: str
    name: str
    state: str
    created: str
    recipe: str
    base_image: str


def session(region: str | None = None, spec: ClusterSpec | None = None) -> Aws:
    """The AWS session image commands work in: ``region``, else the spec's, else boto3's."""
    return Aws(region or (spec.aws.region if spec else None))


def terminate_builders(ec2: Any, instances: list[str]) -> None:
    """End builder instances and wait until they are gone (their group is kept till then)."""
    what = ", ".join(instances)
    aws_call("ec2 TerminateInstances", what, ec2.terminate_instances, InstanceIds=instances)
    aws_call(
        "ec2 DescribeInstances (wait)",
        what,
        ec2.get_waiter("instance_terminated").wait,
        InstanceIds=instances,
        WaiterConfig={"Delay": 5, "MaxAttempts": 120},
    )


def list_images(aws: Aws) -> list[ImageInfo]:
    """This account's clusterkit node images in the region, newest first."""
    reply = aws_call(
        "ec2 DescribeImages",
        "clusterkit's images",
        aws.ec2.describe_images,
        Owners=["self"],
        Filters=[{"Name": f"tag:{TAG_IMAGE}", "Values": ["node"]}],
    )
    out = []
    for image in reply["Images"]:
        tags = {t["Key"]: t["Value"] for t in image.get("Tags", [])}
        out.append(
            ImageInfo(
                image_id=image["ImageId"],
                name=image.get("Name", ""),
                state=image.get("State", ""),
                created=image.get("CreationDate", ""),
                recipe=tags.get(TAG_RECIPE, ""),
                base_image=tags.get(TAG_BASE, ""),
            )
        )
    return sorted(out, key=lambda i: i.created, reverse=True)


def delete_image(aws: Aws, image_id: str) -> list[str]:
    """Deregister a clusterkit image and delete its snapshots; return the snapshots' ids."""
    ec2 = aws.ec2
    found = aws_call("ec2 DescribeImages", image_id, ec2.describe_images, ImageIds=[image_id])
    images = found["Images"]
    tags = {t["Key"]: t["Value"] for t in images[0].get("Tags", [])} if images else {}
    if tags.get(TAG_IMAGE) != "node":
        raise ImageError(
            f"{image_id}: not a clusterkit node image (no {TAG_IMAGE} tag); "
            "`clusterkit image list` shows the ones it can delete"
        )
    snapshots = image_snapshots(images[0])
    aws_call("ec2 DeregisterImage", image_id, ec2.deregister_image, ImageId=image_id)
    for snapshot in snapshots:
        aws_call("ec2 DeleteSnapshot", snapshot, ec2.delete_snapshot, SnapshotId=snapshot)
    return snapshots


def image_snapshots(image: dict[str, Any]) -> list[str]:
    """The ids of the snapshots behind an image (``DescribeImages``' entry)."""
    return [
        m["Ebs"]["SnapshotId"]
        for m in image.get("BlockDeviceMappings", [])
        if m.get("Ebs", {}).get("SnapshotId")
    ]


def clean(aws: Aws) -> list[str]:
    """Delete what killed builds left: builder instances, then their groups."""
    ec2 = aws.ec2
    build_filter = [{"Name": "tag-key", "Values": [TAG_BUILD]}]
    reservations = aws_call(
        "ec2 DescribeInstances", "image builders", ec2.describe_instances, Filters=build_filter
    )["Reservations"]
    builders = [
        i["InstanceId"]
        for r in reservations
        for i in r["Instances"]
        if i["State"]["Name"] != "terminated"
    ]
    if builders:
        terminate_builders(ec2, builders)
    groups = aws_call(
        "ec2 DescribeSecurityGroups",
        "image builders",
        ec2.describe_security_groups,
        Filters=build_filter,
    )["SecurityGroups"]
    for group in groups:
        aws_call(
            "ec2 DeleteSecurityGroup",
            group["GroupId"],
            ec2.delete_security_group,
            GroupId=group["GroupId"],
        )
    return builders + [g["GroupId"] for g in groups]
