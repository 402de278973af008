"""The whole lifecycle through the CLI against the moto server: ``up --no-configure`` makes
every resource (checked here with the test's own boto3 calls), ``down`` leaves nothing tagged."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from clusterkit import proc
from clusterkit.nodetools.cloud import SPOT, Option
from clusterkit.nodetools.cloud_aws import bundle_of
from clusterkit.nodetools.clouds import cloud_from_config
from tests.aws.conftest import ADMIN_CIDR, Aws


def _state(aws: Aws, name: str) -> dict:  # type: ignore[type-arg]
    data: dict = json.loads((aws.home / "clusters" / name / "state.json").read_text())  # type: ignore[type-arg]
    return data


def test_up_no_configure_then_down(aws: Aws) -> None:
    spec = aws.spec("awa", static=2, dynamic=2)
    up = aws.run("up", "-f", str(spec), "--no-configure")
    assert "Cluster awa is ready" in up.stderr

    found = aws.tagged("awa")
    assert len(found["vpc"]) == 1 and len(found["internet-gateway"]) == 1
    assert len(found["subnet"]) == 3  # one per zone of eu-west-1
    assert len(found["instance"]) == 3  # head + 2 static; dynamic nodes wait for jobs
    assert sorted(found["role"]) == ["clusterkit-awa-compute", "clusterkit-awa-head"]
    assert sorted(found["instance-profile"]) == sorted(found["role"])
    assert found["launch-template"] == ["clusterkit-awa-compute"]
    assert found["key-pair"] == ["clusterkit-awa"]
    assert len(found["rule"]) == 3 and len(found["queue"]) == 1 and len(found["bucket"]) == 1
    _check_secrets(aws, found["parameter"], found["bucket"][0])

    state = _state(aws, "awa")
    nodes = state["nodes"]
    assert sorted(nodes) == ["awa-head", "compute-st-1", "compute-st-2"]
    assert all(n["status"] == "running" and n["instance_id"] for n in nodes.values())
    assert nodes["awa-head"]["address"].endswith(".10")  # the head's fixed address
    ssh_config = (aws.home / "clusters" / "awa" / "ssh" / "ssh_config").read_text()
    assert f"HostName {nodes['compute-st-1']['address']}" in ssh_config  # known after launch
    slurm_conf = (aws.home / "clusters" / "awa" / "rendered" / "slurm" / "slurm.conf").read_text()
    assert f"SlurmctldHost=awa-head({nodes['awa-head']['address']})" in slurm_conf

    # The head's programs launch and see compute nodes through cloud.json, as rendered.
    config = json.loads((aws.home / "clusters" / "awa" / "rendered" / "cloud.json").read_text())
    backend = cloud_from_config(config)
    assert sorted(i.node for i in backend.describe()) == ["compute-st-1", "compute-st-2"]
    resumed = backend.launch("compute", ["compute-dy-1"], Option("c6i.2xlarge", SPOT))
    assert [i.node for i in resumed.instances] == ["compute-dy-1"]
    backend.terminate([i.instance_id for i in resumed.instances])

    _check_instances(aws, nodes)
    _check_security_group(aws, found["security-group"][0])
    _check_launch_template(aws, aws.home / "clusters" / "awa")
    _check_iam(aws, found["bucket"][0])
    _check_bucket_queue_rules(aws, found["bucket"][0], found["queue"][0])

    down = aws.run("down", "awa")
    assert "removed" in down.stderr
    assert aws.tagged("awa") == {}
    assert not (aws.home / "clusters" / "awa").exists()


def _check_secrets(aws: Aws, parameters: list[str], bucket: str) -> None:
    # Every planned compute node's host key and certificate (dynamic ones included), in
    # bundles in the cluster's bucket, each in the bundle its name gives.
    s3 = aws.client("s3")
    listed = s3.list_objects_v2(Bucket=bucket, Prefix="boot/awa/host-keys/")["Contents"]
    keys: dict[str, dict[str, str]] = {}
    for obj in listed:
        bundle = json.loads(s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read())
        assert all(obj["Key"] == f"boot/awa/host-keys/{bundle_of(n, len(listed))}.json"
                   for n in bundle)  # fmt: skip
        keys.update(bundle)
    computes = ["compute-st-1", "compute-st-2", "compute-dy-1", "compute-dy-2"]
    assert sorted(keys) == sorted(computes)
    hosts = aws.home / "clusters" / "awa" / "keys" / "hosts"
    assert all(keys[n]["key"] == (hosts / n).read_text() for n in computes)
    assert all(keys[n]["cert"] == (hosts / f"{n}-cert.pub").read_text() for n in computes)
    # The head's key apart, in SSM: only the head's role may read it.
    ssm = aws.client("ssm")
    head_key = ssm.get_parameter(Name="/clusterkit/awa/head-host-key", WithDecryption=True)
    assert head_key["Parameter"]["Value"] == (hosts / "awa-head").read_text()
    assert sorted(parameters) == ["/clusterkit/awa/head-host-key", "/clusterkit/awa/node-key"]


def _check_instances(aws: Aws, nodes: dict) -> None:  # type: ignore[type-arg]
    ec2 = aws.client("ec2")
    head_data = ec2.describe_instance_attribute(
        InstanceId=nodes["awa-head"]["instance_id"], Attribute="userData"
    )["UserData"]["Value"]
    head_script = base64.b64decode(head_data).decode()
    assert "/clusterkit/awa/head-host-key" in head_script and "PRIVATE KEY" not in head_script
    head_cert = aws.home / "clusters" / "awa" / "keys" / "hosts" / "awa-head-cert.pub"
    assert head_cert.read_text().strip() in head_script  # public: it travels as it is
    proc.run(["bash", "-n"], input=head_script)

    ids = [n["instance_id"] for n in nodes.values()]
    described = {
        i["InstanceId"]: i
        for r in ec2.describe_instances(InstanceIds=ids)["Reservations"]
        for i in r["Instances"]
    }
    head = described[nodes["awa-head"]["instance_id"]]
    assert head.get("InstanceLifecycle") is None  # on-demand by default
    assert head["InstanceType"] == "m7i.large"
    assert head["MetadataOptions"]["HttpTokens"] == "required"
    for name in ("compute-st-1", "compute-st-2"):
        inst = described[nodes[name]["instance_id"]]
        tags = {t["Key"]: t["Value"] for t in inst["Tags"]}
        assert tags["clusterkit:group"] == "compute" and tags["clusterkit:batch"]
        assert tags["Name"] == "awa-compute"  # alike for a fleet; the node is in its batch
        assert inst["InstanceLifecycle"] == "spot"
        assert inst["InstanceType"] == "c7i.2xlarge"  # the first option had capacity
        assert inst["PrivateIpAddress"] == nodes[name]["address"]


def _check_security_group(aws: Aws, group_id: str) -> None:
    group = aws.client("ec2").describe_security_groups(GroupIds=[group_id])["SecurityGroups"][0]
    rules = group["IpPermissions"]
    ssh = [r for r in rules if r.get("FromPort") == 22]
    assert [ip["CidrIp"] for r in ssh for ip in r["IpRanges"]] == [ADMIN_CIDR]
    inside = [r for r in rules if r["IpProtocol"] == "-1"]
    assert [p["GroupId"] for r in inside for p in r["UserIdGroupPairs"]] == [group_id]
    assert not [ip for r in inside for ip in r.get("IpRanges", [])]  # nothing from outside


def _check_launch_template(aws: Aws, cluster_dir: Path) -> None:
    ec2 = aws.client("ec2")
    data = ec2.describe_launch_template_versions(LaunchTemplateName="clusterkit-awa-compute")[
        "LaunchTemplateVersions"
    ][0]["LaunchTemplateData"]
    assert data["MetadataOptions"]["HttpTokens"] == "required"  # IMDSv2 only
    user_data = base64.b64decode(data["UserData"]).decode()
    # Only the names of secrets travel in user-data, never the secrets.
    assert "boot/awa/names/" in user_data and "/clusterkit/awa/node-key" in user_data
    assert "PRIVATE KEY" not in user_data
    for secret in (cluster_dir / "keys" / "node_ed25519", cluster_dir / "keys" / "munge.key"):
        body = secret.read_bytes()
        assert body[40:100].decode(errors="replace") not in user_data
    assert "slurmd" in user_data  # the same boot script as a local node's
    proc.run(["bash", "-n"], input=user_data)  # valid bash, or CommandError with bash's words
    # Nodes trust each other through the cluster's host CA: one line, whatever the size.
    ca = (cluster_dir / "keys" / "host_ca.pub").read_text().split()[1]
    assert f"@cert-authority * ssh-ed25519 {ca}" in user_data
    assert "HostCertificate /etc/ssh/ssh_host_ed25519_key-cert.pub" in user_data


def _check_iam(aws: Aws, bucket: str) -> None:
    iam = aws.client("iam")
    doc = iam.get_role_policy(RoleName="clusterkit-awa-head", PolicyName="clusterkit-awa-head")
    policy = doc["PolicyDocument"]
    statements = {s["Sid"]: s for s in policy["Statement"]}
    own = {"ec2:ResourceTag/clusterkit:cluster": "awa"}
    assert statements["TerminateOwnInstances"]["Condition"]["StringEquals"] == own
    assert statements["LaunchOnlyTaggedInstances"]["Condition"]["StringEquals"] == {
        "aws:RequestTag/clusterkit:cluster": "awa"
    }
    assert statements["PassOnlyTheComputeRole"]["Resource"].endswith(
        "role/clusterkit/awa/clusterkit-awa-compute"
    )
    for statement in policy["Statement"]:
        assert statement["Action"] != "*"
        if any("Terminate" in a or "RunInstances" in a for a in _list(statement["Action"])):
            assert statement["Resource"] != "*"
    compute = iam.get_role_policy(
        RoleName="clusterkit-awa-compute", PolicyName="clusterkit-awa-compute"
    )["PolicyDocument"]
    readable = [
        r
        for s in compute["Statement"]
        if "ssm:GetParameter" in s["Action"]
        for r in _list(s["Resource"])
    ]
    assert readable and not any("head-host-key" in r for r in readable)
    assert statements["ReadOwnHostKey"]["Resource"] == [
        "arn:aws:ssm:eu-west-1:123456789012:parameter/clusterkit/awa/head-host-key"
    ]
    actions = {a for s in compute["Statement"] for a in _list(s["Action"])}
    assert actions == {
        "ssm:GetParameter",
        "ssm:GetParameters",
        "ssm:GetParametersByPath",
        "s3:ListBucket",
        "s3:GetObject",
        "s3:PutObject",
        "s3:DeleteObject",
        "s3:AbortMultipartUpload",
    }
    # Compute nodes read their boot material; the head names batches, and nothing more.
    compute_sids = {s["Sid"]: s for s in compute["Statement"]}
    assert compute_sids["ReadBootMaterial"] == {
        "Sid": "ReadBootMaterial", "Effect": "Allow", "Action": ["s3:GetObject"],
        "Resource": f"arn:aws:s3:::{bucket}/boot/awa/*",
    }  # fmt: skip
    assert statements["NameBatches"]["Resource"] == f"arn:aws:s3:::{bucket}/boot/awa/names/*"
    assert "NameOwnInstances" not in statements  # no CreateTags after launch
    # Both roles use only the cluster's checkpoints in the bucket (it may be the spec's own).
    for doc in (policy, compute):
        s3 = {
            s["Sid"]: s
            for s in doc["Statement"]
            if _list(s["Action"])[0].startswith("s3:") and "Checkpoints" in s["Sid"]
        }
        assert s3["ListCheckpoints"]["Resource"] == f"arn:aws:s3:::{bucket}"
        assert s3["ListCheckpoints"]["Condition"] == {
            "StringLike": {"s3:prefix": "checkpoints/awa/*"}
        }
        assert s3["UseCheckpoints"]["Resource"] == f"arn:aws:s3:::{bucket}/checkpoints/awa/*"


def _list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else value


def _check_bucket_queue_rules(aws: Aws, bucket: str, queue_url: str) -> None:
    s3 = aws.client("s3")
    block = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
    assert all(block.values())
    rules = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
    assert rules[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "aws:kms"
    lifecycle = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    assert lifecycle[0]["Status"] == "Enabled" and lifecycle[0]["Expiration"]["Days"] > 0
    assert lifecycle[0]["Filter"] == {"Prefix": "checkpoints/awa/"}  # boot material stays
    sqs = aws.client("sqs")
    attrs = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["All"])["Attributes"]
    policy = json.loads(attrs["Policy"])["Statement"][0]
    assert policy["Principal"] == {"Service": "events.amazonaws.com"}
    sources = policy["Condition"]["ArnEquals"]["aws:SourceArn"]
    assert sorted(s.rsplit("/", 1)[1] for s in sources) == [
        "clusterkit-awa-rebalance",
        "clusterkit-awa-spot-interruption",
        "clusterkit-awa-state-change",
    ]
    events = aws.client("events")
    queue_arn = attrs["QueueArn"]
    for name in ("spot-interruption", "rebalance", "state-change"):
        rule = events.describe_rule(Name=f"clusterkit-awa-{name}")
        assert json.loads(rule["EventPattern"])["source"] == ["aws.ec2"]
        targets = events.list_targets_by_rule(Rule=f"clusterkit-awa-{name}")["Targets"]
        assert [t["Arn"] for t in targets] == [queue_arn]
