"""``clusterkit image`` against the moto server.

EC2 does not run user-data here, so the test plays the builder's part that cannot run: once
the builder exists it checks how it was launched, then stops it, as the recipe's ``poweroff``
would. Everything else (the builder's group, CreateImage, the wait, the clean-up, list,
delete, clean) is clusterkit's own calls against the server, checked with the test's own.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from clusterkit.providers.aws import image as lib
from clusterkit.providers.aws import imagebuild, imagerecipe
from clusterkit.providers.aws.session import Aws as Session
from tests.aws.conftest import REGION, Aws

BUILD_TAG = "clusterkit:image-build"


def _builders(aws: Aws) -> list[dict[str, Any]]:
    ec2 = aws.client("ec2")
    reply = ec2.describe_instances(Filters=[{"Name": "tag-key", "Values": [BUILD_TAG]}])
    return [i for r in reply["Reservations"] for i in r["Instances"]]


def _alive(aws: Aws) -> list[str]:
    return [i["InstanceId"] for i in _builders(aws) if i["State"]["Name"] != "terminated"]


def _groups(aws: Aws) -> list[str]:
    ec2 = aws.client("ec2")
    found = ec2.describe_security_groups(Filters=[{"Name": "tag-key", "Values": [BUILD_TAG]}])
    return [g["GroupId"] for g in found["SecurityGroups"]]


class Builder:
    """The builder's part: checks its launch, then stops it (the recipe's poweroff)."""

    def __init__(self, aws: Aws, stop: bool = True) -> None:
        self.aws, self.stop = aws, stop
        self.seen: dict[str, Any] = {}
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            deadline = time.monotonic() + 60
            while not _alive(self.aws):
                assert time.monotonic() < deadline, "no builder was launched"
                time.sleep(0.1)
            self.seen = self._inspect(_builders(self.aws)[0])
            if self.stop:
                self.aws.client("ec2").stop_instances(InstanceIds=[self.seen["id"]])
        except BaseException as exc:  # noqa: BLE001 - reported by the test's thread
            self.error = exc

    def _inspect(self, inst: dict[str, Any]) -> dict[str, Any]:
        ec2 = self.aws.client("ec2")
        iid = inst["InstanceId"]
        data = ec2.describe_instance_attribute(InstanceId=iid, Attribute="userData")
        group = inst["NetworkInterfaces"][0]["Groups"][0]["GroupId"]
        rules = ec2.describe_security_groups(GroupIds=[group])["SecurityGroups"][0]
        shutdown = ec2.describe_instance_attribute(
            InstanceId=iid, Attribute="instanceInitiatedShutdownBehavior"
        )
        return {
            "id": iid,
            "image": inst["ImageId"],
            "type": inst["InstanceType"],
            "subnet": inst["SubnetId"],
            "metadata": inst["MetadataOptions"],
            "key": inst.get("KeyName"),
            "profile": inst.get("IamInstanceProfile"),
            "ingress": rules["IpPermissions"],
            "user_data": base64.b64decode(data["UserData"]["Value"]).decode(),
            "shutdown": shutdown["InstanceInitiatedShutdownBehavior"]["Value"],
        }

    def __enter__(self) -> Builder:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.thread.join(timeout=90)
        if self.error is not None:
            raise self.error


@pytest.fixture
def session(aws: Aws) -> Iterator[Session]:
    yield Session(REGION)


def test_build_makes_a_tagged_image_and_deletes_the_builder(aws: Aws) -> None:
    base = aws.image()
    with Builder(aws) as builder:
        result = aws.run(
            "image", "build", "--base-image", base, "--name", "ck-test", "--timeout", "60",
            "-o", "json",
        )  # fmt: skip
    built = json.loads(result.stdout)
    seen = builder.seen

    # How the builder was launched: the requested image, IMDSv2 only, no way in, and a
    # poweroff that stops it (its disk is the image).
    assert seen["image"] == base and seen["type"] == imagebuild.DEFAULT_INSTANCE_TYPE
    assert seen["metadata"]["HttpTokens"] == "required"
    assert seen["key"] is None and seen["profile"] is None
    assert seen["ingress"] == []
    assert seen["shutdown"] == "stop"
    default = aws.client("ec2").describe_subnets(
        Filters=[{"Name": "default-for-az", "Values": ["true"]}]
    )["Subnets"]
    assert seen["subnet"] in {s["SubnetId"] for s in default}
    # Its user-data carries the recipe and no secret.
    assert "ansible-playbook -c local" in seen["user_data"]
    assert imagerecipe.recipe_id() in seen["user_data"]
    assert "PRIVATE KEY" not in seen["user_data"]

    # The image: made from that builder, tagged, available; the builder and group are gone.
    ec2 = aws.client("ec2")
    image = ec2.describe_images(ImageIds=[built["image_id"]])["Images"][0]
    tags = {t["Key"]: t["Value"] for t in image["Tags"]}
    assert image["Name"] == "ck-test" and image["State"] == "available"
    assert tags["clusterkit:image"] == "node"
    assert tags["clusterkit:recipe"] == imagerecipe.recipe_id() == built["recipe"]
    assert tags["clusterkit:base-image"] == base
    assert built["builder"] == seen["id"]
    assert _alive(aws) == [] and _groups(aws) == []

    # list finds it; delete deregisters it and removes its snapshots.
    listed = json.loads(aws.run("image", "list", "-o", "json").stdout)
    assert [i["image_id"] for i in listed] == [built["image_id"]]
    snapshots = [m["Ebs"]["SnapshotId"] for m in image["BlockDeviceMappings"] if "Ebs" in m]
    deleted = aws.run("image", "delete", built["image_id"])
    assert f"{len(snapshots)} snapshot(s) deleted" in deleted.stderr
    assert ec2.describe_images(ImageIds=[built["image_id"]])["Images"] == []
    left = ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]
    assert not {s["SnapshotId"] for s in left} & set(snapshots)
    assert json.loads(aws.run("image", "list", "-o", "json").stdout) == []


def test_a_spec_can_name_the_built_image(aws: Aws, session: Session) -> None:
    with Builder(aws):
        built = imagebuild.build(
            session, imagebuild.BuildRequest(base_image=aws.image()), sleep=_fast
        )
    spec = aws.spec("awi", static=1, dynamic=1, image_id=built.image_id)
    aws.run("up", "-f", str(spec), "--no-configure")
    try:
        ec2 = aws.client("ec2")
        version = ec2.describe_launch_template_versions(
            LaunchTemplateName="clusterkit-awi-compute"
        )["LaunchTemplateVersions"][0]
        assert version["LaunchTemplateData"]["ImageId"] == built.image_id
        instances = [
            i
            for r in ec2.describe_instances(
                Filters=[{"Name": "tag:clusterkit:cluster", "Values": ["awi"]}]
            )["Reservations"]
            for i in r["Instances"]
        ]
        assert instances and {i["ImageId"] for i in instances} == {built.image_id}
    finally:
        aws.run("down", "awi")


def test_a_bake_that_never_ends_times_out_and_leaves_nothing(aws: Aws, session: Session) -> None:
    with Builder(aws, stop=False) as builder, pytest.raises(lib.ImageError) as caught:
        imagebuild.build(
            session, imagebuild.BuildRequest(base_image=aws.image(), timeout=2), sleep=_fast
        )
    message = str(caught.value)
    assert builder.seen["id"] in message and "did not finish in 2 s" in message
    assert _alive(aws) == [] and _groups(aws) == []
    assert aws.client("ec2").describe_images(Owners=["self"])["Images"] == []


def test_errors_are_one_line_and_make_nothing(aws: Aws) -> None:
    # No Debian 12 parameter on this endpoint: the default base image cannot be found.
    missing = aws.run("image", "build", "--timeout", "30", check=False)
    assert missing.returncode == 1
    assert "--base-image: not given" in missing.stderr and "pass --base-image" in missing.stderr
    bad = aws.run(
        "image", "build", "--base-image", aws.image(), "--subnet-id", "subnet-00000000",
        "--timeout", "30", check=False,
    )  # fmt: skip
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines()[-1] == (
        f"error: --subnet-id subnet-00000000: no such subnet in {REGION}; "
        "give one of this region's subnets"
    )
    assert "deleted" not in bad.stderr  # nothing was made, so nothing is said to be deleted
    name = aws.run("image", "build", "--name", "x", "--timeout", "30", check=False)
    assert name.returncode == 1 and "--name 'x'" in name.stderr
    assert _alive(aws) == [] and _groups(aws) == []
    # delete refuses an image clusterkit did not make.
    other = aws.run("image", "delete", aws.image(), check=False)
    assert other.returncode == 1 and "not a clusterkit node image" in other.stderr


def test_clean_removes_what_a_killed_build_left(aws: Aws, session: Session) -> None:
    job = imagebuild._Build(session, imagebuild.BuildRequest(base_image=aws.image()), _fast)
    subnet, vpc = job.subnet()
    job.launch(aws.image(), subnet, job.security_group(vpc))  # and then the build died
    assert len(_alive(aws)) == 1 and len(_groups(aws)) == 1
    cleaned = aws.run("image", "clean")
    assert "removed 2 resource(s)" in cleaned.stderr
    assert _alive(aws) == [] and _groups(aws) == []
    assert "removed 0 resource(s)" in aws.run("image", "clean").stderr


def _fast(seconds: float) -> None:
    time.sleep(min(seconds, 0.2))
