"""Benchmark of the aws provider against a moto server: API calls and wall time of ``up``
(``--no-configure``) and ``down`` of a head + 64 Spot nodes.

Calls are counted with botocore's event hooks on every client clusterkit makes
(``before-call``: one per API call, whatever the retries; ``before-send``: one per HTTP
request). The baseline, measured in the same run against the same server, is the least any
tool must do for those 65 instances with plain boto3: one ``RunInstances`` for the head,
one ``CreateFleet`` of 64 Spot instances, one ``TerminateInstances`` of all 65 (no network,
IAM, secrets, events or tags of its own). The ratio says what clusterkit's resources,
per-node tags and secrets, and its find-before-create checks cost in calls and time.

    .venv/bin/python bench/aws.py [--nodes 64]

It prints a table, writes ``bench/results/aws.json`` and exits 1 when ``down`` leaves
anything tagged behind (2 when it cannot run). The moto server lives on 127.0.0.1 for the
run only; nothing outside it is touched. Timings against moto measure clusterkit's own
work and the round trips to a local server, not EC2's latency.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
from common import table  # bench/ is on sys.path when run
from moto.server import ThreadedMotoServer

from clusterkit import cluster
from clusterkit.providers.aws import session
from clusterkit.spec import parse_spec

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "aws.json"
REGION = "eu-west-1"
TAG = "clusterkit:cluster"


class StepTimes:
    """A ``Progress`` for ``cluster.up``/``down`` that keeps each step's duration."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def step(self, title: str) -> Iterator[None]:
        start = time.monotonic()
        yield
        self.seconds[title] = round(time.monotonic() - start, 3)

    def warn(self, text: str) -> None:
        print(f"warning: {text}")


class Counting:
    """API calls by operation and HTTP requests, through botocore's event hooks."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.requests = 0

    def before_call(self, model: Any, **_: Any) -> None:
        self.calls[model.name] += 1

    def before_send(self, **_: Any) -> None:
        self.requests += 1

    def hooks(self) -> list[tuple[str, Any]]:
        return [("before-call", self.before_call), ("before-send", self.before_send)]

    def watch(self, client: Any) -> Any:
        for name, handler in self.hooks():
            client.meta.events.register(name, handler)
        return client


def measure_clusterkit(nodes: int, image: str) -> dict[str, Any]:
    spec = parse_spec(
        {
            "name": "awbench",
            "provider": "aws",
            "groups": [
                {
                    "name": "compute",
                    "instance_types": ["c7i.2xlarge", "c6i.2xlarge"],
                    "capacity": "spot",
                    "min": nodes,
                    "max": nodes,
                }
            ],
            "aws": {"admin_cidr": "203.0.113.0/24", "image_id": image},
        }
    )
    out: dict[str, Any] = {}
    for phase in ("up", "down"):
        counting = Counting()
        steps = StepTimes()
        session.EVENT_HOOKS[:] = counting.hooks()
        start = time.monotonic()
        if phase == "up":
            state = cluster.up(spec, steps, configure=False)
            launched = len(state.nodes)
        else:
            cluster.down("awbench", steps)
        seconds = time.monotonic() - start
        out[phase] = {
            "seconds": round(seconds, 3),
            "steps": steps.seconds,
            "calls": sum(counting.calls.values()),
            "requests": counting.requests,
            "by_operation": dict(counting.calls.most_common()),
        }
    session.EVENT_HOOKS[:] = []
    out["launched"] = launched
    return out


def measure_baseline(nodes: int, image: str) -> dict[str, Any]:
    """The floor: the head, one fleet of ``nodes`` Spot instances, one terminate."""
    counting = Counting()
    ec2 = counting.watch(boto3.client("ec2", region_name=REGION))
    vpc = ec2.create_vpc(CidrBlock="10.77.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.77.0.0/20")["Subnet"]["SubnetId"]
    template = ec2.create_launch_template(
        LaunchTemplateName="baseline", LaunchTemplateData={"ImageId": image}
    )["LaunchTemplate"]["LaunchTemplateId"]
    counting.calls.clear()
    counting.requests = 0
    start = time.monotonic()
    head = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, SubnetId=subnet)
    fleet = ec2.create_fleet(
        Type="instant",
        TargetCapacitySpecification={
            "TotalTargetCapacity": nodes,
            "DefaultTargetCapacityType": "spot",
        },
        SpotOptions={"AllocationStrategy": "price-capacity-optimized"},
        LaunchTemplateConfigs=[
            {
                "LaunchTemplateSpecification": {"LaunchTemplateId": template, "Version": "$Latest"},
                "Overrides": [{"InstanceType": "c7i.2xlarge", "SubnetId": subnet}],
            }
        ],
    )
    up = time.monotonic() - start
    up_calls = sum(counting.calls.values())
    ids = [head["Instances"][0]["InstanceId"]]
    ids += [i for entry in fleet["Instances"] for i in entry["InstanceIds"]]
    start = time.monotonic()
    ec2.terminate_instances(InstanceIds=ids)
    down = time.monotonic() - start
    return {
        "up": {"seconds": round(up, 3), "calls": up_calls},
        "down": {"seconds": round(down, 3), "calls": sum(counting.calls.values()) - up_calls},
        "launched": len(ids),
    }


def tagged_left(cluster_name: str) -> list[str]:
    ec2 = boto3.client("ec2", region_name=REGION)
    f = [{"Name": f"tag:{TAG}", "Values": [cluster_name]}]
    left = [
        i["InstanceId"]
        for r in ec2.describe_instances(Filters=f)["Reservations"]
        for i in r["Instances"]
        if i["State"]["Name"] != "terminated"
    ]
    left += [v["VpcId"] for v in ec2.describe_vpcs(Filters=f)["Vpcs"]]
    left += [g["GroupId"] for g in ec2.describe_security_groups(Filters=f)["SecurityGroups"]]
    left += [
        t["LaunchTemplateName"] for t in ec2.describe_launch_templates(Filters=f)["LaunchTemplates"]
    ]
    ssm = boto3.client("ssm", region_name=REGION)
    left += [
        p["Name"]
        for page in ssm.get_paginator("describe_parameters").paginate(
            ParameterFilters=[{"Key": f"tag:{TAG}", "Values": [cluster_name]}]
        )
        for p in page["Parameters"]
    ]
    return left


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=64)
    args = parser.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    home = tempfile.mkdtemp(prefix="ck-bench-aws-")
    os.environ.update(
        {
            "AWS_ENDPOINT_URL": f"http://{host}:{port}",
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_DEFAULT_REGION": REGION,
            "CLUSTERKIT_HOME": home,
        }
    )
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_REGION"):
        os.environ.pop(var, None)
    try:
        images = boto3.client("ec2", region_name=REGION).describe_images(Owners=["amazon"])
        image = sorted(i["ImageId"] for i in images["Images"])[0]
        ck = measure_clusterkit(args.nodes, image)
        left = tagged_left("awbench")
        base = measure_baseline(args.nodes, image)
    except Exception as exc:  # noqa: BLE001 - a benchmark that cannot run says why
        print(f"cannot run: {exc}", file=sys.stderr)
        return 2
    finally:
        server.stop()
        shutil.rmtree(home, ignore_errors=True)
    rows = [["figure", "clusterkit", "baseline", "ratio"]]
    for phase in ("up", "down"):
        c, b = ck[phase], base[phase]
        rows.append(
            [
                f"{phase}: API calls",
                str(c["calls"]),
                str(b["calls"]),
                f"{c['calls'] / max(b['calls'], 1):.1f}x",
            ]
        )
        rows.append(
            [
                f"{phase}: wall time (s)",
                f"{c['seconds']:.2f}",
                f"{b['seconds']:.2f}",
                f"{c['seconds'] / max(b['seconds'], 1e-3):.1f}x",
            ]
        )
    print(
        f"aws provider against moto: head + {args.nodes} Spot nodes "
        f"(launched {ck['launched']}; baseline {base['launched']})"
    )
    print(table(rows))
    steps = ", ".join(f"{k} {v:.2f}s" for k, v in ck["up"]["steps"].items())
    print(f"up steps: {steps} (keys: 65 host keys made with ssh-keygen, no API call)")
    for phase in ("up", "down"):
        top = ", ".join(f"{op} {n}" for op, n in list(ck[phase]["by_operation"].items())[:8])
        print(f"{phase} calls by operation: {top}, ...")
    print(f"tagged resources left after down: {len(left)}")
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "commit": commit,
                "machine": platform.node(),
                "python": platform.python_version(),
                "nodes": args.nodes,
                "clusterkit": ck,
                "baseline": base,
                "left_after_down": left,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {RESULTS.relative_to(REPO)}")
    return 1 if left else 0


if __name__ == "__main__":
    sys.exit(main())
