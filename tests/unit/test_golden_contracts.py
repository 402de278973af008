"""What ops teams and nodes are handed, pinned like slurm.conf is: the compute boot script,
the prologs, and the Ansible variables (`clusterkit inventory`), for each provider.

Refresh after an intended change with ``make golden``. Keys and temporary paths, which
differ on every run, are replaced by placeholders before the comparison."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from clusterkit.boot import boot_script
from clusterkit.files import ClusterFiles
from clusterkit.headfiles import slurmctld_prolog, spot_config, task_prolog
from clusterkit.playbook import ansible_vars, inventory, write_inventory
from clusterkit.providers.aws.provider import AwsProvider
from clusterkit.providers.local.provider import LocalProvider
from clusterkit.spec import ClusterSpec, parse_spec
from clusterkit.state import ClusterState, NodeState
from clusterkit.trust import ClusterTrust, keygen
from tests.unit.conftest import GoldenCheck

LOCAL = parse_spec({"name": "demo", "groups": [{"name": "compute", "min": 1, "max": 2}]})
AWS = parse_spec({
    "name": "demo", "provider": "aws", "aws": {"admin_cidr": "203.0.113.0/24"},
    "groups": [{"name": "compute", "min": 1, "max": 2}],
})  # fmt: skip
AWS_NETWORK = {"bucket": "clusterkit-demo-123456789012-eu-west-1", "region": "eu-west-1"}
KEY = re.compile(r"ssh-ed25519 [A-Za-z0-9+/=]+")


def test_boot_script_local(golden: GoldenCheck) -> None:
    golden("boot.local.sh", boot_script(LOCAL, LocalProvider.traits))


def test_boot_script_aws(golden: GoldenCheck) -> None:
    golden("boot.aws.sh", boot_script(AWS, AwsProvider.traits))


def test_slurmctld_prolog(golden: GoldenCheck) -> None:
    golden("prolog-slurmctld.sh", slurmctld_prolog(LOCAL))


def test_task_prolog_local(golden: GoldenCheck) -> None:
    where = LocalProvider.checkpoint_location(LOCAL, {})
    spot = spot_config(LOCAL, where)
    golden("task-prolog.local.sh", task_prolog(LOCAL, spot["checkpoint_dir"], spot["region"]))


def test_task_prolog_aws(golden: GoldenCheck) -> None:
    where = AwsProvider.checkpoint_location(AWS, AWS_NETWORK)
    spot = spot_config(AWS, where, AWS_NETWORK)
    golden("task-prolog.aws.sh", task_prolog(AWS, spot["checkpoint_dir"], spot["region"]))


def _inventory(spec: ClusterSpec, provider: type[LocalProvider | AwsProvider]) -> str:
    """`clusterkit inventory` of a cluster of ``spec`` with fresh keys in its state dir."""
    state = ClusterState(
        name=spec.name, provider=spec.provider, network={"subnet": "10.250.7.0/24"},
        nodes={
            "demo-head": NodeState(name="demo-head", role="head", address="10.250.7.2"),
            "compute-st-1": NodeState(name="compute-st-1", role="compute", group="compute",
                                      index=1, address="10.250.7.3"),
        },
    )  # fmt: skip
    home = state.dir
    trust = ClusterTrust(spec.name, home)
    files = ClusterFiles(home)
    trust.ensure_user_key()
    keygen(files.node_key, "node")
    for user in spec.users:
        keygen(files.user_key(user.name), user.name)
    path = write_inventory(
        home / "out", inventory(state, trust), ansible_vars(spec, state, trust, provider.traits)
    )
    text = path.read_text(encoding="utf-8")
    yaml.safe_load(text)  # plain YAML that ansible-playbook -i reads
    return KEY.sub("ssh-ed25519 <KEY>", text.replace(str(home), "<HOME>"))


def test_ansible_variables_local(ck_home: Path, golden: GoldenCheck) -> None:
    golden("inventory.local.yml", _inventory(LOCAL, LocalProvider))


def test_ansible_variables_aws(ck_home: Path, golden: GoldenCheck) -> None:
    golden("inventory.aws.yml", _inventory(AWS, AwsProvider))
