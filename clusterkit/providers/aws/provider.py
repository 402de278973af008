"""``AwsProvider``: a cluster on EC2, the head on-demand, compute nodes from Spot fleets.

``prepare`` makes what nodes share (network, security group, key pair, IAM, bucket, queue,
event rules); the first launch publishes the nodes' secrets to SSM Parameter Store and makes
one launch template per group; the head then gets a fixed address in the first subnet, and
static compute nodes come from ``CreateFleet`` through the same backend the head's resume
program uses (``nodetools.cloud_aws``), trying the group's options in order.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

from clusterkit.boot import NODE_KEY_ON_NODE, boot_script
from clusterkit.errors import ConfigureError, SpecError
from clusterkit.files import ClusterFiles
from clusterkit.headfiles import capacity_options
from clusterkit.nodetools.cloud import CAPACITY_CODES, Instance, Option
from clusterkit.nodetools.cloud_aws import AwsCloud, bundle_count, bundle_of
from clusterkit.plan import NodePlan, head_name, plan_nodes, static_nodes
from clusterkit.prices import Price, spec_types
from clusterkit.providers.aws import names, pricing, teardown
from clusterkit.providers.aws.errors import AwsCapacityError, AwsError, aws_call
from clusterkit.providers.aws.resources import ClusterResources, planned
from clusterkit.providers.aws.session import Aws
from clusterkit.providers.base import DryRun, NodeBoot, Provider
from clusterkit.render import render
from clusterkit.secretref import checked_password
from clusterkit.spec import ClusterSpec, GroupSpec
from clusterkit.state import ClusterState, NodeState
from clusterkit.traits import Traits
from clusterkit.trust import ClusterTrust, host_cert, public_key

ALIVE = ("pending", "running")
# A new instance profile takes a few seconds to be usable by EC2 (IAM is eventually consistent).
PROFILE_WAIT_SECONDS = 60.0
# EC2 may give the head its public address only after RunInstances returns.
PUBLIC_ADDRESS_WAIT_SECONDS = 180.0
PUBLIC_ADDRESS_POLL_SECONDS = 3.0
IMAGE_NEEDED = (
    "aws.image_id: a configured cluster needs a clusterkit node image (Slurm, munge, AWS CLI); "
    "build one with `clusterkit image build SPEC` and set aws.image_id, or use --no-configure"
)


def group_options(group: GroupSpec) -> list[Option]:
    """The group's ways to get capacity, in the order the head's resume program tries them."""
    return [Option(**o) for o in capacity_options(group)]


SECRETS_PREFIXES = ("aws-secretsmanager:", "arn:aws:secretsmanager:")


class AwsProvider(Provider):
    kind = "aws"
    traits = Traits(
        shared_storage="nfs",  # the head exports /shared
        service_manager="systemd",
        slurmd_flags="",
        cgroup_plugin="autodetect",  # EC2 images vary: slurmd looks itself
        emulated_hardware=False,
        head_mounts_shared=False,  # the head serves /shared from its own disk
    )
    step_labels: ClassVar[dict[str, str]] = {
        "network": "VPC, security group, key pair, IAM, bucket, queue, event rules",
        "nodes": "Secrets, launch templates, head and Spot fleets",
    }
    ssh_when_bare = False
    # An instance boots, then cloud-init installs the cluster's host key and restarts sshd.
    ssh_wait_seconds = 300.0

    def __init__(self, state: ClusterState, spec: ClusterSpec) -> None:
        super().__init__(state, spec)
        self._aws: Aws | None = None
        self._instances: dict[str, dict[str, Any]] | None = None  # node -> instance
        self._published = False

    @property
    def aws(self) -> Aws:
        if self._aws is None:
            self._aws = Aws(self.spec.aws.region)
        return self._aws

    @functools.cached_property
    def resources(self) -> ClusterResources:
        return ClusterResources(self.aws, self.spec, self.state.network, self.state.save)

    def read_secret(self, ref: str, field: str) -> str:
        """``aws-secretsmanager:NAME`` or a Secrets Manager ARN: the secret's string, read
        with the cluster's credentials; ``file:/PATH`` as anywhere."""
        if not ref.startswith(SECRETS_PREFIXES):
            return super().read_secret(ref, field)
        secret_id = ref.removeprefix(SECRETS_PREFIXES[0])
        answer = aws_call(
            "secretsmanager GetSecretValue",
            f"{field} ({secret_id})",
            self.aws.client("secretsmanager").get_secret_value,
            SecretId=secret_id,
        )
        value = answer.get("SecretString")
        if not isinstance(value, str):
            raise SpecError(field, [f"secret {secret_id} holds no string (SecretString)"])
        return checked_password(value.strip(), f"{field} ({secret_id})")

    @classmethod
    def check_prerequisites(cls) -> None:
        """Nothing on this machine: boto3 is a dependency and credentials are checked by the
        first call, whose error says what is missing."""

    @classmethod
    def check_spec(cls, spec: ClusterSpec, configure: bool) -> None:
        # Debian's stock image has no Slurm, munge or AWS CLI (the user-data runs `aws ssm`).
        if configure and spec.aws.image_id is None:
            raise SpecError(f"cluster {spec.name}", [IMAGE_NEEDED])

    @classmethod
    def checkpoint_location(
        cls, spec: ClusterSpec, network: dict[str, str]
    ) -> tuple[str, str | None]:
        """The cluster's bucket (the spec's, else the one ``up`` made, recorded in
        ``network``), under the prefix the node role may use."""
        bucket = spec.aws.checkpoint_bucket or network.get("bucket")
        region = spec.aws.region or network.get("region")
        if not bucket or not region:
            raise ConfigureError(
                f"cluster {spec.name}: its checkpoint bucket or region is not recorded yet; "
                "run `clusterkit up` again"
            )
        return f"s3://{bucket}/{names.checkpoint_prefix(spec.name)}{{user}}/{{job}}", region

    @classmethod
    def cloud_config(cls, spec: ClusterSpec, network: dict[str, str]) -> dict[str, Any]:
        """What the head's programs need of what ``prepare`` made: templates, subnets,
        region."""
        subnets = [s for s in network.get("subnet_ids", "").split(",") if s]
        return {
            "kind": "aws",
            "cluster": spec.name,
            "region": network.get("region"),
            "endpoint_url": network.get("endpoint_url") or None,
            "bucket": network.get("bucket"),
            "host_key_bundles": bundle_count(compute_count(spec)),
            "groups": {
                g.name: {
                    "launch_template_id": network.get(f"template:{g.name}"),
                    "subnets": subnets,
                }
                for g in spec.groups
            },
        }

    def ssh_hint(self) -> str:
        return f"SSH reaches the head only from aws.admin_cidr ({self.spec.aws.admin_cidr})"

    # -- shared resources ------------------------------------------------------------------

    def prepare(self) -> None:
        trust = ClusterTrust(self.state.name, self.state.dir)
        trust.ensure_user_key()
        res = self.resources
        # What the head's cloud.json needs besides the resources' ids (cloud_config).
        self.state.network["region"] = self.aws.region
        self.state.network["endpoint_url"] = self.aws.endpoint_url or ""
        res.prepare()
        res.key_pair(public_key(trust.user_key))

    def address(self, node: NodePlan) -> str | None:
        return self.resources.head_address() if node.role == "head" else None

    # -- nodes -----------------------------------------------------------------------------

    def launch(self, node: NodePlan, boot: NodeBoot) -> NodeState:
        return next(iter(self.launch_all([(node, boot)])))

    def launch_all(self, nodes: Sequence[tuple[NodePlan, NodeBoot]]) -> Iterator[NodeState]:
        if not nodes:
            return
        self._publish(nodes[0][1])
        for node, boot in nodes:
            if node.role == "head":
                yield self._launch_head(node, boot)
        for group in self.spec.groups:
            members = [n for n, _ in nodes if n.group == group.name]
            if members:
                yield from self._launch_group(group, members)
        self._instances = None

    def _publish(self, boot: NodeBoot) -> None:
        """Secrets to SSM (the head's host key, the node key), the compute nodes' host keys
        and certificates to the cluster's bucket in bundles (every planned node's: dynamic
        nodes boot later), then a launch template per group. Once per ``up``."""
        if self._published:
            return
        res = self.resources
        host_keys = boot.host_key.parent  # every node's key pair lives beside this one
        node_key = ClusterFiles(self.state.dir).node_key.read_text(encoding="utf-8")
        head = head_name(self.state.name)
        res.secrets(
            {
                names.head_key_param(self.state.name): (host_keys / head).read_text(
                    encoding="utf-8"
                ),
                names.node_key_param(self.state.name): node_key,
            },
            res.secret_names(),
        )
        compute = [n.name for n in plan_nodes(self.spec) if n.role == "compute"]
        res.boot_objects(host_key_bundles(self.state.name, host_keys, compute))
        data = self._user_data("compute", boot, with_boot_script=True)
        for group in self.spec.groups:
            res.launch_template(group.name, data)
        self._published = True

    def _user_data(self, role: str, boot: NodeBoot, with_boot_script: bool) -> str:
        cluster = self.state.name
        head = head_name(cluster)
        # The head's certificate is public: it travels in its own user-data.
        cert = host_cert(boot.host_key.parent / head) if role == "head" else None
        return render(
            "boot/aws-prologue.sh.j2",
            role=role,
            cluster=cluster,
            node_tag=names.TAG_NODE,
            batch_tag=names.TAG_BATCH,
            bucket=self.resources.own_bucket_name(),
            names_prefix=f"{names.boot_prefix(cluster)}names/",
            head_key_param=names.head_key_param(cluster) if role == "head" else "",
            head_cert=cert.read_text(encoding="utf-8").strip() if cert else "",
            node_key=NODE_KEY_ON_NODE if role == "compute" else "",
            node_key_param=names.node_key_param(cluster),
            authorized_keys=boot.authorized_keys.strip(),
            known_hosts=boot.known_hosts.strip(),
            head=head,
            head_address=self.resources.head_address(),
            boot_script=boot_script(self.spec, self.traits).strip() if with_boot_script else "",
        )

    def _launch_head(self, node: NodePlan, boot: NodeBoot) -> NodeState:
        res = self.resources
        script = self._user_data("head", boot, with_boot_script=False)
        data = res.instance_data("head", script)
        # RunInstances takes user-data as text (botocore encodes it); a template, in base64.
        data["UserData"] = script
        interface = {
            **data.pop("NetworkInterfaces")[0],
            "SubnetId": self.state.network["subnet_ids"].split(",")[0],
            "PrivateIpAddress": res.head_address(),
        }
        params: dict[str, Any] = {
            **data,
            "InstanceType": self.spec.head.instance_type,
            "MinCount": 1,
            "MaxCount": 1,
            "NetworkInterfaces": [interface],
            "TagSpecifications": [
                *data["TagSpecifications"],
                *names.tag_spec(
                    "instance", self.state.name, node.name, node=node.name, role="head"
                ),
            ],
        }
        if self.spec.head.capacity == "spot":
            params["InstanceMarketOptions"] = {"MarketType": "spot"}
        reply = self._run_instances(node.name, params)
        instance = reply["Instances"][0]
        return NodeState(
            name=node.name,
            role="head",
            kind="static",
            index=node.index,
            address=instance.get("PrivateIpAddress", res.head_address()),
            instance_id=instance["InstanceId"],
            status="running",
        )

    def public_address(self, node: NodeState) -> str | None:
        """The head's public IP, read once it is running (compute nodes are reached through
        the head). Polls DescribeInstances, one call a few seconds apart, within a bound."""
        if node.role != "head" or not node.instance_id:
            return None
        deadline = time.monotonic() + PUBLIC_ADDRESS_WAIT_SECONDS
        while True:
            reply = aws_call(
                "ec2 DescribeInstances",
                node.name,
                self.aws.ec2.describe_instances,
                InstanceIds=[node.instance_id],
            )
            inst = next(i for r in reply["Reservations"] for i in r["Instances"])
            state = inst["State"]["Name"]
            public = inst.get("PublicIpAddress")
            if public and state == "running":
                return str(public)
            if state not in ALIVE:
                reason = inst.get("StateReason", {}).get("Message", "no reason given")
                raise AwsError(
                    f"the head {node.name} ({node.instance_id}) is {state} ({reason}); see its "
                    "console output, then run `clusterkit up` again"
                )
            if time.monotonic() >= deadline:
                subnet = inst.get("SubnetId", "?")
                got = f"public address {public}" if public else "no public address"
                raise AwsError(
                    f"the head {node.name} ({node.instance_id}) is {state} with {got} after "
                    f"{PUBLIC_ADDRESS_WAIT_SECONDS:.0f}s; check that its subnet {subnet} routes "
                    "0.0.0.0/0 to an internet gateway and lets it have a public IP, or use "
                    "--no-configure and reach it another way"
                )
            time.sleep(PUBLIC_ADDRESS_POLL_SECONDS)

    def dial_address(self, node: str) -> str | None:
        inst = self._live().get(node)
        if inst is None or inst["State"]["Name"] != "running":
            return None
        return inst.get("PrivateIpAddress")

    def _run_instances(self, node: str, params: dict[str, Any]) -> dict[str, Any]:
        deadline = time.monotonic() + PROFILE_WAIT_SECONDS
        while True:
            try:
                reply: dict[str, Any] = aws_call(
                    "ec2 RunInstances", node, self.aws.ec2.run_instances, **params
                )
                return reply
            except AwsError as exc:
                # Retried only while a brand-new instance profile is not yet visible to EC2.
                profile = exc.code == "InvalidParameterValue" and "profile" in str(exc).lower()
                if not profile or time.monotonic() > deadline:
                    raise
                time.sleep(2)

    def _cloud(self) -> AwsCloud:
        """The head's cloud backend, run from here with this machine's clients."""
        config = self.cloud_config(self.spec, self.state.network)
        return AwsCloud(
            self.state.name,
            config["groups"],
            bucket=config["bucket"],
            bundles=config["host_key_bundles"],
            ec2=self.aws.client("ec2", retries=False),
            s3=self.aws.client("s3", retries=False),
        )

    def _launch_group(self, group: GroupSpec, members: list[NodePlan]) -> Iterator[NodeState]:
        cloud = self._cloud()
        by_name = {n.name: n for n in members}
        remaining = list(by_name)
        tried: list[str] = []
        for option in group_options(group):
            result = cloud.launch(group.name, remaining, option)
            for inst in result.instances:
                yield _node_state(by_name[inst.node], inst)
            remaining = list(result.failed)
            if not remaining:
                return
            error = result.error
            code = error.code if error else "UnfulfillableCapacity"
            tried.append(f"{option.instance_type}/{option.lifecycle}: {code}")
            if code not in CAPACITY_CODES:
                raise AwsError(
                    f"AWS ec2 CreateFleet on group {group.name} ({option.instance_type}, "
                    f"{option.lifecycle}) failed ({code}): {error.message if error else ''}; "
                    "check the group's instance types and aws.image_id",
                    code,
                )
        raise AwsCapacityError(
            f"AWS ec2 CreateFleet on group {group.name}: no capacity for "
            f"{len(remaining)} node(s) after {'; '.join(tried)}; add instance types to the "
            "group or allow on-demand (capacity: spot-then-on-demand)",
            tried[-1].rsplit(": ", 1)[-1] if tried else "",
        )

    def _live(self) -> dict[str, dict[str, Any]]:
        """The cluster's instances not terminated, by node name; one call per refresh."""
        if self._instances is None:
            pages = self.aws.ec2.get_paginator("describe_instances").paginate(
                Filters=[
                    {"Name": f"tag:{names.TAG_CLUSTER}", "Values": [self.state.name]},
                    {
                        "Name": "instance-state-name",
                        "Values": ["pending", "running", "stopping", "stopped"],
                    },
                ],
                PaginationConfig={"PageSize": 1000},
            )
            found: dict[str, dict[str, Any]] = {}
            cloud = self._cloud()
            for page in aws_call("ec2 DescribeInstances", "the cluster's instances", list, pages):
                for r in page["Reservations"]:
                    for i in r["Instances"]:
                        found[cloud.node_of(i) or i["InstanceId"]] = i
            self._instances = found
        return self._instances

    def running(self, node: NodeState) -> bool:
        inst = self._live().get(node.name)
        return bool(
            inst and inst["InstanceId"] == node.instance_id and inst["State"]["Name"] in ALIVE
        )

    def terminate(self, node: NodeState) -> None:
        ids = {node.instance_id} if node.instance_id else set()
        inst = self._live().get(node.name)
        if inst is not None:
            ids.add(inst["InstanceId"])
        if not ids:
            return
        ec2 = self.aws.ec2
        mine = [
            i["InstanceId"]
            for r in aws_call(
                "ec2 DescribeInstances",
                node.name,
                ec2.describe_instances,
                Filters=[
                    {"Name": "instance-id", "Values": sorted(ids)},
                    {"Name": f"tag:{names.TAG_CLUSTER}", "Values": [self.state.name]},
                ],
            )["Reservations"]
            for i in r["Instances"]
            if i["State"]["Name"] != "terminated"
        ]
        if mine:
            aws_call("ec2 TerminateInstances", node.name, ec2.terminate_instances, InstanceIds=mine)
        if mine and node.role == "head":
            # The head's fixed address is free again only once its instance is gone.
            aws_call(
                "ec2 DescribeInstances (wait)",
                node.name,
                ec2.get_waiter("instance_terminated").wait,
                InstanceIds=mine,
                WaiterConfig={"Delay": 5, "MaxAttempts": 120},
            )
        self._instances = None

    # -- whole clusters --------------------------------------------------------------------

    @classmethod
    def destroy(cls, name: str, state: ClusterState | None) -> list[str]:
        # The region `up` used (recorded), so `down` looks there whatever the default is now.
        region = None
        if state is not None:
            region = state.network.get("region") or (state.spec.get("aws") or {}).get("region")
        return teardown.destroy(Aws(region), name)

    @classmethod
    def discover(cls) -> list[str]:
        return teardown.discover(Aws())

    @classmethod
    def spot_prices(cls, spec: ClusterSpec) -> dict[str, Price]:
        aws = Aws(spec.aws.region)
        return pricing.spot_quotes(aws, spec_types(spec))

    @classmethod
    def dry_run(cls, spec: ClusterSpec) -> DryRun:
        aws = Aws(spec.aws.region)
        resources = [f"{p.kind} {p.name}" for p in planned(spec)]
        head = f"{spec.head.instance_type} {spec.head.capacity}"
        resources.append(f"instance {head_name(spec.name)} ({head}, fixed address)")
        for group in spec.groups:
            count = sum(1 for n in static_nodes(spec) if n.group == group.name)
            if count:
                kinds = ", ".join(f"{o.instance_type}/{o.lifecycle}" for o in group_options(group))
                resources.append(f"{count} instance(s) of group {group.name} (fleet: {kinds})")
        cost, notes = pricing.cost_range(aws, spec)
        dynamic = sum(g.max - g.min for g in spec.groups)
        if dynamic:
            notes.append(f"{dynamic} dynamic node(s) start only while jobs need them")
        return DryRun(resources, cost, notes)


def compute_count(spec: ClusterSpec) -> int:
    return sum(g.max for g in spec.groups)


def host_key_bundles(cluster: str, keys: Path, nodes: list[str]) -> dict[str, str]:
    """The objects that carry ``nodes``' host keys and certificates (from ``keys``), as
    ``{key: JSON}``: ``{node: {"key": private key, "cert": certificate}}`` per bundle."""
    count = bundle_count(len(nodes))
    bundles: list[dict[str, dict[str, str]]] = [{} for _ in range(count)]
    for node in nodes:
        bundles[bundle_of(node, count)][node] = {
            "key": (keys / node).read_text(encoding="utf-8"),
            "cert": host_cert(keys / node).read_text(encoding="utf-8"),
        }
    return {names.keys_key(cluster, i): json.dumps(b) for i, b in enumerate(bundles)}


def _node_state(node: NodePlan, inst: Instance) -> NodeState:
    return NodeState(
        name=node.name,
        role="compute",
        group=node.group,
        kind=node.kind,
        index=node.index,
        address=inst.address or None,
        instance_id=inst.instance_id,
        status="running",
    )
