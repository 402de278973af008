"""An aws compute node's own user-data, run against what ``up`` and the head's resume program
wrote: the node finds its name in its batch's object, its host key and certificate in its
bundle, and ends with the files sshd and ssh need. The user-data is the launch template's,
as EC2 would hand it to the instance.

It runs as root in a mount and UTS namespace of its own (tmpfs over the paths it writes), so
nothing of this machine changes. What only an EC2 instance has stands in: the instance
metadata service (``curl`` answers the few paths it reads) and the AWS CLI (``aws`` makes
the same two calls with boto3, against the moto server). The rest is real: bash, python3,
ssh-keygen and sshd check what it wrote.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from clusterkit.nodetools.cloud import SPOT, Option
from clusterkit.nodetools.clouds import cloud_from_config
from tests.aws.conftest import REGION, Aws

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="a mount namespace needs root")

# Stands in for the instance metadata service: the paths the user-data reads.
CURL = """#!/bin/bash
url="${@: -1}"
case "$url" in
  */latest/api/token) echo token ;;
  */meta-data/placement/region) echo "$CK_REGION" ;;
  */meta-data/instance-id) echo "$CK_INSTANCE" ;;
  */meta-data/tags/instance/clusterkit:batch) echo "$CK_BATCH" ;;
  *) exit 22 ;;
esac
"""

# Stands in for the AWS CLI: the two calls the user-data makes, through boto3.
AWS = """#!{python}
import sys
import boto3
args = sys.argv[1:]
def opt(name):
    return args[args.index(name) + 1]
if args[:2] == ["ssm", "get-parameter"]:
    ssm = boto3.client("ssm", region_name=opt("--region"))
    print(ssm.get_parameter(Name=opt("--name"), WithDecryption=True)["Parameter"]["Value"])
elif args[:2] == ["s3api", "get-object"]:
    s3 = boto3.client("s3", region_name=opt("--region"))
    try:
        body = s3.get_object(Bucket=opt("--bucket"), Key=opt("--key"))["Body"].read()
    except s3.exceptions.NoSuchKey:
        sys.exit(255)
    open(args[-1], "wb").write(body)
else:
    sys.exit("aws stand-in: unexpected call " + " ".join(args))
"""

# In the namespace: what the user-data writes lands on tmpfs; copies come out to $OUT.
SANDBOX = """
set -euo pipefail
for d in /etc/ssh /var/lib/clusterkit /var/log /root/.ssh /run; do
    mkdir -p "$d"; mount -t tmpfs tmpfs "$d"
done
mkdir -p /etc/ssh/sshd_config.d
cp /etc/hosts "$OUT/hosts.in"; mount --bind "$OUT/hosts.in" /etc/hosts
bash "$OUT/user-data.sh" > "$OUT/console.log" 2>&1 || { cat "$OUT/console.log"; exit 1; }
cp -a /etc/ssh "$OUT/etc-ssh"
hostname > "$OUT/hostname"
cp /etc/hosts "$OUT/hosts"
"""


def _user_data(aws: Aws, cluster: str) -> str:
    """The launch template's user-data, up to the boot script it hands over to."""
    data = aws.client("ec2").describe_launch_template_versions(
        LaunchTemplateName=f"clusterkit-{cluster}-compute"
    )["LaunchTemplateVersions"][0]["LaunchTemplateData"]
    script = base64.b64decode(data["UserData"]).decode()
    return script.split("cat > /var/lib/clusterkit/boot.sh")[0]


def _boot(aws: Aws, tmp: Path, user_data: str, instance_id: str) -> Path:
    """Run ``user_data`` as instance ``instance_id`` would; the directory of what it left."""
    out = tmp / instance_id
    bin_dir = out / "bin"
    bin_dir.mkdir(parents=True)
    for name, text in (("curl", CURL), ("aws", AWS.format(python=sys.executable))):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    (bin_dir / "systemctl").write_text("#!/bin/sh\nexit 0\n")  # sshd is checked below
    (bin_dir / "systemctl").chmod(0o755)
    (out / "user-data.sh").write_text(user_data)
    tags = aws.client("ec2").describe_tags(
        Filters=[{"Name": "resource-id", "Values": [instance_id]}]
    )["Tags"]
    batch = next(t["Value"] for t in tags if t["Key"] == "clusterkit:batch")
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "OUT": str(out),
        "CK_REGION": REGION,
        "CK_INSTANCE": instance_id,
        "CK_BATCH": batch,
    }
    subprocess.run(
        ["unshare", "--mount", "--uts", "--fork", "bash", "-c", SANDBOX],
        env=env, check=True, timeout=120,
    )  # fmt: skip
    return out


def _check_node(aws: Aws, out: Path, node: str) -> None:
    keys = aws.home / "clusters" / "awb" / "keys"
    ssh = out / "etc-ssh"
    assert (out / "hostname").read_text().strip() == node
    key = ssh / "ssh_host_ed25519_key"
    assert key.read_text() == (keys / "hosts" / node).read_text()
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    cert = ssh / "ssh_host_ed25519_key-cert.pub"
    assert cert.read_text() == (keys / "hosts" / f"{node}-cert.pub").read_text()
    # The certificate is this key's, for this node only, signed by the cluster's CA.
    shown = subprocess.run(["ssh-keygen", "-L", "-f", str(cert)],
                           capture_output=True, text=True, check=True).stdout  # fmt: skip
    principals = shown.split("Principals:")[1].split("Critical Options:")[0].split()
    assert principals == [node]
    ca = subprocess.run(["ssh-keygen", "-l", "-f", str(keys / "host_ca.pub")],
                        capture_output=True, text=True, check=True).stdout.split()[1]  # fmt: skip
    assert f"Signing CA: ED25519 {ca}" in shown
    assert (ssh / "ssh_host_ed25519_key.pub").read_text().split()[:2] == (
        (keys / "hosts" / f"{node}.pub").read_text().split()[:2]
    )
    # (`aws ... --output text` ends the value with one more newline; ssh does not mind.)
    assert (ssh / "ck_node_key").read_text().strip() == (keys / "node_ed25519").read_text().strip()
    known = (ssh / "ssh_known_hosts").read_text().strip()
    assert known == f"@cert-authority * {' '.join((keys / 'host_ca.pub').read_text().split()[:2])}"
    # sshd accepts the key and its certificate as the user-data configured them.
    config = out / "sshd_config"
    config.write_text(
        f"HostKey {key}\n"
        + (ssh / "sshd_config.d" / "clusterkit.conf").read_text().replace("/etc/ssh", str(ssh))
    )
    subprocess.run(["/usr/sbin/sshd", "-t", "-f", str(config)], check=True)
    assert "awb-head" in (out / "hosts").read_text()


def test_a_node_boots_with_its_own_name_key_and_certificate(aws: Aws, tmp_path: Path) -> None:
    spec = aws.spec("awb", static=2, dynamic=2)
    aws.run("up", "-f", str(spec), "--no-configure")
    state = json.loads((aws.home / "clusters" / "awb" / "state.json").read_text())
    user_data = _user_data(aws, "awb")
    for node in ("compute-st-1", "compute-st-2"):
        out = _boot(aws, tmp_path, user_data, state["nodes"][node]["instance_id"])
        _check_node(aws, out, node)

    # A node the head's resume program launches boots the same way.
    config = json.loads((aws.home / "clusters" / "awb" / "rendered" / "cloud.json").read_text())
    resumed = cloud_from_config(config).launch(
        "compute", ["compute-dy-2"], Option("c6i.2xlarge", SPOT)
    )
    [inst] = resumed.instances
    _check_node(aws, _boot(aws, tmp_path, user_data, inst.instance_id), "compute-dy-2")
    aws.run("down", "awb")
    assert aws.tagged("awb") == {}


def test_user_data_does_not_grow_with_the_node_count(aws: Aws) -> None:
    """1,000 planned nodes boot from the same user-data as four (it was 101,399 bytes when it
    carried every host key): their keys travel in two bundles instead."""
    sizes = {}
    for name, dynamic in (("aws", 2), ("awt", 998)):
        aws.run("up", "-f", str(aws.spec(name, static=2, dynamic=dynamic)), "--no-configure")
        data = aws.client("ec2").describe_launch_template_versions(
            LaunchTemplateName=f"clusterkit-{name}-compute"
        )["LaunchTemplateVersions"][0]["LaunchTemplateData"]
        sizes[name] = len(base64.b64decode(data["UserData"]))
    assert sizes["awt"] == sizes["aws"] < 16 * 1024
    s3 = aws.client("s3")
    bucket = next(b["Name"] for b in s3.list_buckets()["Buckets"] if "-awt-" in b["Name"])
    bundles = s3.list_objects_v2(Bucket=bucket, Prefix="boot/awt/host-keys/")["Contents"]
    assert len(bundles) == 2
    for name in ("aws", "awt"):
        aws.run("down", name)
