"""A configured ``up`` on aws against the moto server: it refuses a spec without a node image
before creating anything, dials the head at its public address and every compute node
through the head, and names the cluster's bucket for checkpoints, job side and agent side."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from clusterkit import cluster, clusterinfo
from clusterkit.errors import ProviderError, SSHError
from clusterkit.nodetools.cloud import SPOT, Option
from clusterkit.nodetools.clouds import cloud_from_config
from clusterkit.nodetools.spot import Handler, RunningJob, SpotConfig
from clusterkit.providers.aws import provider as aws_provider
from clusterkit.providers.aws.provider import AwsProvider
from clusterkit.spec import load_spec
from clusterkit.state import ClusterState, NodeState, load_state
from tests.aws.conftest import REGION, Aws


def test_a_configured_cluster_without_a_node_image_is_refused_before_anything(aws: Aws) -> None:
    spec = aws.spec("awi", static=1, dynamic=1, image_id=None)
    refused = aws.run("up", "-f", str(spec), check=False)
    assert refused.returncode == 1
    error = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert error == [
        "error: cluster awi: aws.image_id: a configured cluster needs a clusterkit node image "
        "(Slurm, munge, AWS CLI); build one with `clusterkit image build SPEC` and set "
        "aws.image_id, or use --no-configure"
    ], refused.stderr
    assert aws.tagged("awi") == {}
    assert not (aws.home / "clusters" / "awi").exists()


def _ssh_g(config: Path, node: str) -> dict[str, str]:
    """What the real ssh client makes of ``config`` for ``node`` (``ssh -G``: no network)."""
    out = subprocess.run(
        ["ssh", "-G", "-F", str(config), node], capture_output=True, text=True, check=True
    ).stdout
    return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)


def test_configured_up_dials_the_head_at_its_public_address(
    aws: Aws, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = load_spec(aws.spec("awc", static=1, dynamic=1))
    config = aws.home / "clusters" / "awc" / "ssh" / "ssh_config"
    cluster.up(spec, configure=False)
    # A bare cluster does not ask for the public address (no call it does not need).
    assert load_state("awc").nodes["awc-head"].public_address is None
    assert "ProxyCommand" not in config.read_text()

    # Configured: no SSH attempt at all here (moto's addresses lead nowhere); up reads the
    # head's public address, writes the routes, and stops at the wait for SSH.
    monkeypatch.setattr(AwsProvider, "ssh_wait_seconds", 0.0)
    with pytest.raises(SSHError) as caught:
        cluster.up(spec, configure=True)
    assert "aws.admin_cidr (203.0.113.0/24)" in str(caught.value)
    nodes = load_state("awc").nodes
    head, compute = nodes["awc-head"], nodes["compute-st-1"]
    described = aws.client("ec2").describe_instances(InstanceIds=[head.instance_id])
    public = described["Reservations"][0]["Instances"][0]["PublicIpAddress"]
    assert head.public_address == public
    assert compute.public_address is None

    head_route = _ssh_g(config, "awc-head")
    assert head_route["hostname"] == public
    assert head_route["hostkeyalias"] == "awc-head"
    assert "proxycommand" not in head_route
    for node, address in (("compute-st-1", compute.address), ("compute-dy-1", "compute-dy-1")):
        route = _ssh_g(config, node)
        assert route["hostname"] == address
        assert route["hostkeyalias"] == node
        assert route["proxycommand"] == f"ssh -F {config} -o BatchMode=yes -W %h:%p awc-head"
        assert route["stricthostkeychecking"] == "true"

    # A dynamic node is dialled at the address of its current power-up, through the head.
    down = clusterinfo.ssh_argv("awc", "compute-dy-1")
    assert not any(a.startswith("HostName=") for a in down)  # not up: nothing to add
    config_json = json.loads((config.parent.parent / "rendered" / "cloud.json").read_text())
    backend = cloud_from_config(config_json)
    launched = backend.launch("compute", ["compute-dy-1"], Option("c6i.2xlarge", SPOT))
    private = launched.instances[0].address
    argv = clusterinfo.ssh_argv("awc", "compute-dy-1", ["hostname"])
    at = argv.index(f"HostName={private}")
    assert argv[at - 1] == "-o" and argv[-3:] == ["compute-dy-1", "--", "hostname"]
    route = _ssh_g_argv(argv)
    assert route["hostname"] == private and route["hostkeyalias"] == "compute-dy-1"
    assert route["proxycommand"].endswith("-W %h:%p awc-head")
    backend.terminate([i.instance_id for i in launched.instances])
    cluster.down("awc")
    assert aws.tagged("awc") == {}


def _ssh_g_argv(argv: list[str]) -> dict[str, str]:
    """``ssh -G`` of a whole ssh command line (without its remote command)."""
    cut = argv.index("--") if "--" in argv else len(argv)
    out = subprocess.run(
        [argv[0], "-G", *argv[1:cut]], capture_output=True, text=True, check=True
    ).stdout
    return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)


def test_a_head_without_a_public_address_is_one_clear_error(
    aws: Aws, monkeypatch: pytest.MonkeyPatch
) -> None:
    ec2 = aws.client("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.9.0.0/24")["Subnet"]["SubnetId"]
    iid = ec2.run_instances(ImageId=aws.image(), MinCount=1, MaxCount=1, SubnetId=subnet)[
        "Instances"
    ][0]["InstanceId"]
    spec = load_spec(aws.spec("awn"))
    monkeypatch.setattr(aws_provider, "PUBLIC_ADDRESS_WAIT_SECONDS", 0.0)
    provider = AwsProvider(ClusterState(name="awn", provider="aws"), spec)
    head = NodeState(name="awn-head", role="head", instance_id=iid)
    with pytest.raises(ProviderError) as caught:
        provider.public_address(head)
    message = str(caught.value)
    assert f"awn-head ({iid}) is running with no public address" in message
    assert f"its subnet {subnet} routes 0.0.0.0/0 to an internet gateway" in message
    assert provider.public_address(NodeState(name="c", role="compute", instance_id=iid)) is None


def test_checkpoints_go_to_the_clusters_bucket(
    aws: Aws, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A job saves where its TaskProlog says; the Spot agent, with spot.json only (no region
    in its environment), finds that checkpoint: both name the cluster's bucket."""
    spec = load_spec(aws.spec("awk", static=1, dynamic=0))
    cluster.up(spec, configure=False)
    rendered = aws.home / "clusters" / "awk" / "rendered"
    bucket = load_state("awk").network["bucket"]

    prolog_env = {"PATH": os.environ["PATH"], "SLURM_JOB_USER": "ann", "SLURM_JOB_ID": "12"}
    exports = subprocess.run(
        ["sh", str(rendered / "task-prolog")], env=prolog_env, capture_output=True, text=True,
        check=True,
    ).stdout.splitlines()  # fmt: skip
    job_env = dict(line.removeprefix("export ").split("=", 1) for line in exports)
    assert job_env["CK_CHECKPOINT_DIR"] == f"s3://{bucket}/checkpoints/awk/ann/12"
    assert job_env["AWS_DEFAULT_REGION"] == REGION

    (tmp_path / "state.json").write_text('{"step": 7}')
    env = {k: v for k, v in os.environ.items() if k not in ("AWS_DEFAULT_REGION", "AWS_REGION")}
    saved = subprocess.run(
        [sys.executable, "-m", "clusterkit.nodetools.checkpoint", "save", "state.json"],
        env={**env, **job_env}, cwd=tmp_path, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert saved == f"s3://{bucket}/checkpoints/awk/ann/12/ckpt-000001"

    monkeypatch.delenv("AWS_DEFAULT_REGION")
    config = SpotConfig.load(rendered / "spot.json")
    assert config.region == REGION
    job = RunningJob(id="12", user="ann", start=0.0, restarts=0)
    assert config.checkpoints_of(job) == job_env["CK_CHECKPOINT_DIR"]
    newest = Handler(config)._latest_checkpoint(job)
    assert newest is not None
    meta = json.loads(
        aws.client("s3")
        .get_object(Bucket=bucket, Key="checkpoints/awk/ann/12/ckpt-000001/ck-meta.json")["Body"]
        .read()
    )
    assert newest == meta["time"]
    assert Handler(config)._latest_checkpoint(RunningJob("13", "ann", 0.0, 0)) is None
    cluster.down("awk")
