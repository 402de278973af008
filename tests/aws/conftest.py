"""Fixtures for the aws provider's tests: a moto server on 127.0.0.1 and boto3 pointed at it.

The server is real HTTP (``moto.server.ThreadedMotoServer``); clusterkit reaches it the way
anyone points it at another endpoint, through ``AWS_ENDPOINT_URL``. Each test starts from a
fresh account (the server's state is reset) and its own ``CLUSTERKIT_HOME``.
"""

from __future__ import annotations

import json
import logging
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

from tests.driver import Clusterkit, Result

REGION = "eu-west-1"
TAG = "clusterkit:cluster"
ADMIN_CIDR = "203.0.113.0/24"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/aws/" in str(item.path):
            item.add_marker(pytest.mark.aws)


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def aws(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Aws]:
    """A fresh account on the moto server; the environment points boto3 (and clusterkit) at it."""
    url = f"{moto_endpoint}/moto-api/reset"
    reset = urllib.request.Request(url, method="POST")  # noqa: S310 - http://127.0.0.1 only
    urllib.request.urlopen(reset, timeout=10).close()  # noqa: S310 - http://127.0.0.1 only
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_CONFIG_FILE"):
        monkeypatch.delenv(var, raising=False)
    env = {
        "AWS_ENDPOINT_URL": moto_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",  # moto's dummy credentials
        "AWS_DEFAULT_REGION": REGION,
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-credentials"),
        "CLUSTERKIT_HOME": str(tmp_path / "home"),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    yield Aws(tmp_path / "home", moto_endpoint)


@dataclass
class Aws:
    """The test's own view of the account (plain boto3), and the CLI run against it."""

    home: Path
    endpoint: str

    def client(self, service: str) -> Any:
        return boto3.client(service, region_name=REGION)

    def image(self) -> str:
        images = self.client("ec2").describe_images(Owners=["amazon"])["Images"]
        return str(sorted(i["ImageId"] for i in images)[0])

    def spec(self, name: str, static: int = 2, dynamic: int = 2, **aws: Any) -> Path:
        doc = {
            "name": name,
            "provider": "aws",
            "groups": [
                {
                    "name": "compute",
                    "instance_types": ["c7i.2xlarge", "c6i.2xlarge"],
                    "min": static,
                    "max": static + dynamic,
                }
            ],
            "aws": {"admin_cidr": ADMIN_CIDR, "image_id": self.image(), **aws},
        }
        path = self.home / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc), encoding="utf-8")
        return path

    @property
    def ck(self) -> Clusterkit:
        """The CLI with this home; the account's endpoint and credentials are in the
        environment (the ``aws`` fixture set them)."""
        return Clusterkit(self.home)

    def run(self, *args: str, check: bool = True) -> Result:
        return self.ck.run(*args, check=check, timeout=300)

    def tagged(self, cluster: str) -> dict[str, list[str]]:
        """Everything in the account tagged for ``cluster``, found with the test's own calls
        (not clusterkit's teardown code), by kind; empty lists are dropped."""
        ec2, f = self.client("ec2"), [{"Name": f"tag:{TAG}", "Values": [cluster]}]
        found: dict[str, list[str]] = {
            "instance": [
                i["InstanceId"]
                for r in ec2.describe_instances(Filters=f)["Reservations"]
                for i in r["Instances"]
                if i["State"]["Name"] != "terminated"
            ],
            "vpc": [v["VpcId"] for v in ec2.describe_vpcs(Filters=f)["Vpcs"]],
            "subnet": [s["SubnetId"] for s in ec2.describe_subnets(Filters=f)["Subnets"]],
            "security-group": [
                g["GroupId"] for g in ec2.describe_security_groups(Filters=f)["SecurityGroups"]
            ],
            "internet-gateway": [
                g["InternetGatewayId"]
                for g in ec2.describe_internet_gateways(Filters=f)["InternetGateways"]
            ],
            "key-pair": [k["KeyName"] for k in ec2.describe_key_pairs(Filters=f)["KeyPairs"]],
            "launch-template": [
                t["LaunchTemplateName"]
                for t in ec2.describe_launch_templates(Filters=f)["LaunchTemplates"]
            ],
        }
        iam = self.client("iam")
        found["role"] = [
            r["RoleName"]
            for r in iam.list_roles()["Roles"]
            if _has(iam.list_role_tags(RoleName=r["RoleName"])["Tags"], cluster)
        ]
        # moto answers ListInstanceProfileTags with a 500: the profile's own Tags, or its
        # path, tell whose it is.
        found["instance-profile"] = [
            p["InstanceProfileName"]
            for p in iam.list_instance_profiles()["InstanceProfiles"]
            if _has(p.get("Tags", []), cluster) or p["Path"] == f"/clusterkit/{cluster}/"
        ]
        s3 = self.client("s3")
        found["bucket"] = []
        for b in s3.list_buckets()["Buckets"]:
            try:
                tags = s3.get_bucket_tagging(Bucket=b["Name"])["TagSet"]
            except s3.exceptions.ClientError:
                continue
            if _has(tags, cluster):
                found["bucket"].append(b["Name"])
        sqs = self.client("sqs")
        found["queue"] = [
            url
            for url in sqs.list_queues().get("QueueUrls", [])
            if sqs.list_queue_tags(QueueUrl=url).get("Tags", {}).get(TAG) == cluster
        ]
        events = self.client("events")
        found["rule"] = [
            r["Name"]
            for r in events.list_rules()["Rules"]
            if _has(events.list_tags_for_resource(ResourceARN=r["Arn"])["Tags"], cluster)
        ]
        ssm = self.client("ssm")
        found["parameter"] = [
            p["Name"]
            for page in ssm.get_paginator("describe_parameters").paginate()
            for p in page["Parameters"]
            if _has(
                ssm.list_tags_for_resource(ResourceType="Parameter", ResourceId=p["Name"])[
                    "TagList"
                ],
                cluster,
            )
        ]
        return {k: v for k, v in found.items() if v}


def _has(tags: list[dict[str, str]], cluster: str) -> bool:
    return any(t["Key"] == TAG and t["Value"] == cluster for t in tags)
