"""Building an AWS node image (``clusterkit image build``).

A build launches a builder instance from a Debian 12 image with the recipe (``imagerecipe``)
packed into its user-data. The builder runs the playbook on itself and powers off; its disk
becomes the image (``CreateImage`` of the stopped instance), and the builder and its security
group are deleted whatever happened. The builder needs no SSH, key pair or instance role: its
security group admits nothing, and it only reaches Debian's mirrors. What it makes carries the
tags of ``image``, whose ``clean`` deletes a builder left by a build that was killed.
"""

from __future__ import annotations

import base64
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from clusterkit.errors import ProviderError
from clusterkit.progress import NoProgress, Progress
from clusterkit.providers.aws.errors import AwsError, aws_call
from clusterkit.providers.aws.image import (
    TAG_BASE,
    TAG_BUILD,
    TAG_IMAGE,
    TAG_RECIPE,
    ImageError,
    image_snapshots,
    terminate_builders,
)
from clusterkit.providers.aws.imagerecipe import bake_failure, builder_user_data, recipe_id
from clusterkit.providers.aws.launchdata import DEFAULT_IMAGE_PARAM
from clusterkit.providers.aws.session import Aws
from clusterkit.spec import ClusterSpec

DEFAULT_INSTANCE_TYPE = "t3.small"
DEFAULT_TIMEOUT = 30 * 60.0
# The builder's console is read this often while it bakes (a call each time).
CONSOLE_EVERY = 30.0
# Polls of the builder's state start quick and back off to this.
MAX_POLL = 15.0


@dataclass(frozen=True)
class BuildRequest:
    name: str | None = None  # the image's name; default clusterkit-node-<UTC time>
    base_image: str | None = None  # default: Debian 12's latest, from AWS's public parameter
    instance_type: str = DEFAULT_INSTANCE_TYPE
    subnet_id: str | None = None  # default: the region's default subnet
    timeout: float = DEFAULT_TIMEOUT


@dataclass(frozen=True)
class BuiltImage:
    image_id: str
    name: str
    region: str
    base_image: str
    recipe: str
    builder: str
    seconds: float


class _Build:
    """One build's resources; ``cleanup`` deletes whatever of them exists."""

    def __init__(self, aws: Aws, request: BuildRequest, sleep: Callable[[float], None]) -> None:
        self.aws = aws
        self.request = request
        self.sleep = sleep
        self.id = uuid.uuid4().hex[:10]
        self.builder: str | None = None
        self.group: str | None = None

    def tags(self, resource_type: str, name: str, **extra: str) -> dict[str, Any]:
        tags = [{"Key": TAG_BUILD, "Value": self.id}, {"Key": "Name", "Value": name}]
        tags += [{"Key": k, "Value": v} for k, v in extra.items()]
        return {"ResourceType": resource_type, "Tags": tags}

    def base_image(self) -> str:
        if self.request.base_image:
            return self.request.base_image
        ssm = self.aws.client("ssm")
        try:
            reply = aws_call(
                "ssm GetParameter", DEFAULT_IMAGE_PARAM, ssm.get_parameter, Name=DEFAULT_IMAGE_PARAM
            )
        except AwsError as exc:
            raise ImageError(
                f"--base-image: not given, and Debian 12's image is not published in "
                f"{self.aws.region} ({exc.code}); pass --base-image AMI (a Debian 12 image)"
            ) from None
        return str(reply["Parameter"]["Value"])

    def subnet(self) -> tuple[str, str]:
        """The builder's subnet and its VPC: the request's, or the region's default subnet."""
        ec2 = self.aws.ec2
        if self.request.subnet_id:
            try:
                found = aws_call(
                    "ec2 DescribeSubnets",
                    self.request.subnet_id,
                    ec2.describe_subnets,
                    SubnetIds=[self.request.subnet_id],
                )["Subnets"]
            except AwsError as exc:
                if exc.code != "InvalidSubnetID.NotFound":
                    raise
                raise ImageError(
                    f"--subnet-id {self.request.subnet_id}: no such subnet in "
                    f"{self.aws.region}; give one of this region's subnets"
                ) from None
        else:
            found = aws_call(
                "ec2 DescribeSubnets",
                "the default subnets",
                ec2.describe_subnets,
                Filters=[{"Name": "default-for-az", "Values": ["true"]}],
            )["Subnets"]
        if not found:
            raise ImageError(
                f"--subnet-id: {self.aws.region} has no default subnet; pass --subnet-id "
                "SUBNET, a subnet that reaches the internet (the builder installs packages)"
            )
        first = sorted(found, key=lambda s: s["AvailabilityZone"])[0]
        return str(first["SubnetId"]), str(first["VpcId"])

    def security_group(self, vpc: str) -> str:
        """A group that admits nothing: the builder is never logged into."""
        name = f"clusterkit-image-builder-{self.id}"
        self.group = aws_call(
            "ec2 CreateSecurityGroup",
            name,
            self.aws.ec2.create_security_group,
            GroupName=name,
            Description="clusterkit image builder: no inbound traffic",
            VpcId=vpc,
            TagSpecifications=[self.tags("security-group", name)],
        )["GroupId"]
        return str(self.group)

    def launch(self, image: str, subnet: str, group: str) -> str:
        name = f"clusterkit-image-builder-{self.id}"
        reply = aws_call(
            "ec2 RunInstances",
            name,
            self.aws.ec2.run_instances,
            ImageId=image,
            InstanceType=self.request.instance_type,
            MinCount=1,
            MaxCount=1,
            UserData=builder_user_data(self.id),
            InstanceInitiatedShutdownBehavior="stop",  # its poweroff says "baked"
            MetadataOptions={
                "HttpTokens": "required",
                "HttpEndpoint": "enabled",
                "HttpPutResponseHopLimit": 1,
            },
            NetworkInterfaces=[
                {
                    "DeviceIndex": 0,
                    "SubnetId": subnet,
                    "Groups": [group],
                    "AssociatePublicIpAddress": True,  # for Debian's mirrors
                    "DeleteOnTermination": True,
                }
            ],
            TagSpecifications=[self.tags("instance", name), self.tags("volume", name)],
        )
        self.builder = str(reply["Instances"][0]["InstanceId"])
        return self.builder

    def wait_baked(self, builder: str, started: float) -> None:
        """Until the builder has stopped; raise on a failure its console reports, or late."""
        ec2 = self.aws.ec2
        poll, console_at = 1.0, started + CONSOLE_EVERY
        while True:
            reply = aws_call(
                "ec2 DescribeInstances", builder, ec2.describe_instances, InstanceIds=[builder]
            )
            state = reply["Reservations"][0]["Instances"][0]["State"]["Name"]
            if state == "stopped":
                return
            if state in ("shutting-down", "terminated"):
                raise ImageError(f"image builder {builder} was {state} while it baked")
            now = time.monotonic()
            if now >= console_at:
                console_at = now + CONSOLE_EVERY
                reason = bake_failure(self.console(builder))
                if reason:
                    raise ImageError(
                        f"image builder {builder}: the bake failed at {reason}; its log is "
                        "/var/log/clusterkit-bake.log on the builder (deleted now)"
                    )
            if now - started > self.request.timeout:
                tail = " | ".join(self.console(builder).strip().splitlines()[-3:])
                raise ImageError(
                    f"image builder {builder}: the bake did not finish in "
                    f"{self.request.timeout:.0f} s (--timeout); its console ends: {tail or '-'}"
                )
            self.sleep(poll)
            poll = min(poll * 2, MAX_POLL)

    def console(self, builder: str) -> str:
        ec2 = self.aws.ec2
        reply = aws_call(
            "ec2 GetConsoleOutput", builder, ec2.get_console_output, InstanceId=builder
        )
        raw = reply.get("Output") or ""
        try:
            return base64.b64decode(raw).decode(errors="replace")
        except ValueError:
            return str(raw)

    def create_image(self, builder: str, name: str, base: str, recipe: str) -> str:
        ec2 = self.aws.ec2
        extra = {TAG_IMAGE: "node", TAG_RECIPE: recipe, TAG_BASE: base}
        image = str(
            aws_call(
                "ec2 CreateImage",
                builder,
                ec2.create_image,
                InstanceId=builder,
                Name=name,
                Description=f"clusterkit node image (recipe {recipe}, from {base})",
                TagSpecifications=[self.tags("image", name, **extra)],
            )["ImageId"]
        )
        aws_call(
            "ec2 DescribeImages (wait)",
            image,
            ec2.get_waiter("image_available").wait,
            ImageIds=[image],
            WaiterConfig={"Delay": 15, "MaxAttempts": 120},
        )
        # Its snapshots are tagged once known (a tag spec for them at CreateImage is not
        # taken by every endpoint), so `image delete` and people find whose they are.
        snapshots = image_snapshots(aws_call("ec2 DescribeImages", image, ec2.describe_images,
                                        ImageIds=[image])["Images"][0])  # fmt: skip
        if snapshots:
            tags = self.tags("snapshot", name, **{TAG_IMAGE: image})["Tags"]
            aws_call("ec2 CreateTags", ", ".join(snapshots), ec2.create_tags,
                     Resources=snapshots, Tags=tags)  # fmt: skip
        return image

    def cleanup(self) -> None:
        """The builder, then its group (which AWS keeps while an instance uses it)."""
        ec2 = self.aws.ec2
        if self.builder:
            terminate_builders(ec2, [self.builder])
        if self.group:
            aws_call(
                "ec2 DeleteSecurityGroup", self.group, ec2.delete_security_group, GroupId=self.group
            )


def default_name(now: datetime | None = None) -> str:
    return f"clusterkit-node-{(now or datetime.now(UTC)).strftime('%Y%m%d-%H%M%S')}"


NAME_RE = re.compile(r"^[A-Za-z0-9()\[\]./\-'@_ ]{3,128}$")


def builder_subnet(subnet_id: str | None, spec: ClusterSpec | None = None) -> str | None:
    """Where the builder runs: ``subnet_id``, else the spec's first subnet, else (None) the
    region's default subnet."""
    if subnet_id or spec is None:
        return subnet_id
    return spec.aws.subnet_ids[0] if spec.aws.subnet_ids else None


def build(
    aws: Aws,
    request: BuildRequest,
    progress: Progress | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> BuiltImage:
    """Bake a node image; whatever happens, the builder and its group are deleted."""
    progress = progress or NoProgress()
    name = request.name or default_name()
    if not NAME_RE.match(name):
        raise ImageError(
            f"--name {name!r}: an image name is 3-128 letters, digits, spaces or ()[]./-'@_"
        )
    started = time.monotonic()
    job = _Build(aws, request, sleep)
    recipe = recipe_id()
    try:
        with progress.step("builder"):
            base = job.base_image()
            subnet, vpc = job.subnet()
            builder = job.launch(base, subnet, job.security_group(vpc))
        with progress.step("bake"):
            job.wait_baked(builder, time.monotonic())
        with progress.step("image"):
            image = job.create_image(builder, name, base, recipe)
    except BaseException as exc:
        _cleanup(job, progress, failed=exc)
        raise
    _cleanup(job, progress)
    return BuiltImage(
        image_id=image,
        name=name,
        region=aws.region,
        base_image=base,
        recipe=recipe,
        builder=builder,
        seconds=round(time.monotonic() - started, 1),
    )


def _cleanup(job: _Build, progress: Progress, failed: BaseException | None = None) -> None:
    """Delete the builder and its group; a failure here names ``image clean`` and, after
    another failure, keeps that one's message first."""
    if not (job.builder or job.group):
        return
    try:
        with progress.step("clean up"):
            job.cleanup()
    except ProviderError as exc:
        first = f"{failed}; then " if failed is not None else ""
        raise ImageError(
            f"{first}deleting the image builder failed: {exc}; run `clusterkit image clean`"
        ) from failed
