"""Configuring a cluster: rendered files, the compute boot script, and Ansible.

Every value the playbooks use is computed here, in Python, and handed over as variables; the
playbooks only place them. clusterkit runs them through ansible-runner; a failure becomes one
``ConfigureError`` naming the host, the task and the tail of its error. The whole output is
kept under the cluster's ``ansible/`` directory (secrets are ``no_log`` in the roles).
"""

from __future__ import annotations

import io
import json
import os
import shlex
import sys
import tarfile
import threading
import time
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml

import clusterkit
from clusterkit import interrupt, proc
from clusterkit.errors import ConfigureError
from clusterkit.nodetools import NODE_TOOLS, entry_point
from clusterkit.nodetools.cloud import LOCAL_SOCKET, ON_DEMAND, SPOT
from clusterkit.plan import cluster_users, head_name, home_root, plan_nodes
from clusterkit.providers.aws import names
from clusterkit.render import render
from clusterkit.slurmconf import SlurmNodeDef, slurm_files
from clusterkit.spec import ClusterSpec, GroupSpec
from clusterkit.state import ClusterState, atomic_write
from clusterkit.trust import ClusterTrust, TrustedNode, public_key

READY_MARKER = "/var/lib/clusterkit/head-ready"
BOOT_STATUS = "/var/lib/clusterkit/boot.status"  # written by the boot script: running|done|failed
BOOT_TIMEOUT_SECONDS = 300
NODE_KEY_ON_NODE = "/etc/ssh/ck_node_key"
SLURMCTLD_PORT = 6817
RUNNER_POLL_SECONDS = 0.2  # how often ansible-runner asks whether to cancel


def playbook_dir() -> Path:
    return Path(str(files("clusterkit") / "playbooks"))


@dataclass(frozen=True)
class ClusterFiles:
    """Where a cluster keeps what configuration reads (all under its state dir)."""

    root: Path

    @property
    def munge_key(self) -> Path:
        return self.root / "keys" / "munge.key"

    @property
    def node_key(self) -> Path:
        return self.root / "keys" / "node_ed25519"

    def user_key(self, user: str) -> Path:
        return self.root / "keys" / "users" / user

    @property
    def rendered(self) -> Path:
        return self.root / "rendered"

    @property
    def slurm_conf_dir(self) -> Path:
        return self.rendered / "slurm"

    @property
    def boot_script(self) -> Path:
        return self.rendered / "compute-boot.sh"

    @property
    def nodetools_archive(self) -> Path:
        return self.rendered / "nodetools.tar.gz"

    @property
    def prolog(self) -> Path:
        return self.rendered / "prolog-slurmctld"

    @property
    def power_config(self) -> Path:
        return self.rendered / "power.json"

    @property
    def cloud_config(self) -> Path:
        return self.rendered / "cloud.json"

    @property
    def spot_config(self) -> Path:
        return self.rendered / "spot.json"

    @property
    def task_prolog(self) -> Path:
        return self.rendered / "task-prolog"


def shared_type(spec: ClusterSpec) -> str:
    if spec.shared_storage.type != "auto":
        return spec.shared_storage.type
    return "sshfs" if spec.provider == "local" else "nfs"


def service_manager(spec: ClusterSpec) -> str:
    """Local nodes have no systemd (daemons are started directly); cloud images do."""
    return "direct" if spec.provider == "local" else "systemd"


def ansible_vars(spec: ClusterSpec, state: ClusterState, trust: ClusterTrust) -> dict[str, Any]:
    paths = ClusterFiles(state.dir)
    admin_key = public_key(trust.user_key)
    users = []
    for user in cluster_users(spec):
        spec_keys = next(u.ssh_public_keys for u in spec.users if u.name == user.name)
        own = public_key(paths.user_key(user.name))
        users.append({
            "name": user.name, "uid": user.uid, "gid": user.gid, "home": user.home,
            "key_src": str(paths.user_key(user.name)),
            "authorized_keys": [own, admin_key, *spec_keys],
        })  # fmt: skip
    return {
        "ck_cluster": spec.name,
        "ck_head": head_name(spec.name),
        "ck_service_manager": service_manager(spec),
        "ck_shared_dir": spec.shared_storage.mount_point,
        "ck_shared_type": shared_type(spec),
        "ck_subnet": state.network.get("subnet", ""),
        "ck_munge_key_src": str(paths.munge_key),
        "ck_node_key_src": str(paths.node_key),
        "ck_node_pubkey": public_key(paths.node_key),
        "ck_slurm_conf_dir": str(paths.slurm_conf_dir),
        "ck_boot_script_src": str(paths.boot_script),
        "ck_nodetools_archive": str(paths.nodetools_archive),
        "ck_node_tools": [
            {"name": n, "module": entry_point(t)[0], "function": entry_point(t)[1]}
            for n, t in NODE_TOOLS.items()
        ],
        "ck_ready_marker": READY_MARKER,
        "ck_power_config_src": str(paths.power_config),
        "ck_prolog_src": str(paths.prolog),
        "ck_cloud_config_src": str(paths.cloud_config),
        "ck_spot_config_src": str(paths.spot_config),
        "ck_task_prolog_src": str(paths.task_prolog),
        "ck_spot_events": events_queue(spec, state.network) is not None,
        "ck_users": users,
    }


def inventory(state: ClusterState, trust: ClusterTrust) -> dict[str, Any]:
    """Hosts by role; SSH goes through the cluster's own ssh_config (strict host keys)."""
    heads = [n.name for n in state.nodes.values() if n.role == "head"]
    computes = [n.name for n in sorted(state.nodes.values(), key=lambda n: n.index)]
    return {
        "all": {
            "vars": {
                "ansible_user": "root",
                "ansible_python_interpreter": "/usr/bin/python3",
                "ansible_ssh_common_args": f"-F {shlex.quote(str(trust.ssh_config))}",
            },
            "children": {
                "head": {"hosts": {h: {} for h in heads}},
                "compute": {"hosts": {c: {} for c in computes if c not in heads}},
            },
        }
    }


def write_nodetools_archive(path: Path) -> None:
    """The clusterkit package's node-side part as a tarball for shared storage.

    Node tools run with the node's system python3, so only modules free of the controller's
    dependencies go in: the package marker, errors, the subprocess helper, rendering, Slurm
    helpers, templates, nodetools.
    """
    pkg = Path(clusterkit.__file__).parent
    wanted = [
        "__init__.py",
        "errors.py",
        "proc.py",
        "render.py",
        "slurm.py",
        "nodetools",
        "templates",
    ]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in wanted:
            if (pkg / name).exists():
                tar.add(pkg / name, arcname=f"clusterkit/{name}", filter=_no_cache)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())


def _no_cache(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    return None if "__pycache__" in info.name else info


def write_inventory(directory: Path, inv: dict[str, Any], extravars: dict[str, Any]) -> Path:
    """An inventory usable by plain ``ansible-playbook``, variables included."""
    inv = {"all": {**inv["all"], "vars": {**inv["all"]["vars"], **extravars}}}
    path = directory / "inventory.yml"
    atomic_write(path, yaml.safe_dump(inv, sort_keys=False))
    return path


def run_playbook(
    state: ClusterState,
    inv: dict[str, Any],
    extravars: dict[str, Any],
    limit: str | None = None,
) -> None:
    """Run site.yml; raise ``ConfigureError`` naming the failed host and task."""
    import ansible_runner  # noqa: PLC0415 - heavy; only configuration needs it

    private = state.dir / "ansible"
    private.mkdir(parents=True, exist_ok=True)
    venv_bin = str(Path(sys.executable).parent)
    # ansible-runner installs SIGINT/SIGTERM handlers of its own for good unless it is given
    # a cancel callback. With ours a signal is recorded, the runner sees it within
    # pexpect_timeout and kills the playbook's process group, and then it is raised.
    with interrupt.deferred():
        result = ansible_runner.run(
            private_data_dir=str(private),
            playbook=str(playbook_dir() / "site.yml"),
            inventory=inv,
            extravars=extravars,
            limit=limit,
            quiet=True,
            rotate_artifacts=3,
            cancel_callback=interrupt.requested,
            settings={"pexpect_timeout": RUNNER_POLL_SECONDS},
            envvars={
                "PATH": f"{venv_bin}:{os.environ.get('PATH', '/usr/bin:/bin')}",
                "ANSIBLE_PIPELINING": "True",
                "ANSIBLE_RETRY_FILES_ENABLED": "False",
                "ANSIBLE_ROLES_PATH": str(playbook_dir() / "roles"),
            },
        )
    interrupt.check()
    if result.status == "successful" and result.rc == 0:
        return
    raise ConfigureError(_failure(result, private))


def _failure(result: Any, private: Path) -> str:
    for event in result.events:
        data = event.get("event_data", {})
        if event.get("event") in ("runner_on_failed", "runner_on_unreachable") and not data.get(
            "ignore_errors"
        ):
            res = data.get("res", {})
            detail = res.get("stderr") or res.get("msg") or res.get("module_stderr") or ""
            tail = " | ".join(str(detail).strip().splitlines()[-3:]) or "no detail"
            return (
                f"configuration failed on {data.get('host')}, task {data.get('task')!r}: "
                f"{tail} (full log under {private}/artifacts)"
            )
    return f"configuration failed ({result.status}, rc {result.rc}); log under {private}/artifacts"


# ---------------------------------------------------------------------------------------------
# Files rendered for a cluster, and its compute nodes' boot


def render_cluster_files(
    spec: ClusterSpec, state: ClusterState, trusted: list[TrustedNode]
) -> None:
    """Slurm's files, the compute boot script and the node tools, under ``rendered/``."""
    files = ClusterFiles(state.dir)
    addresses = {t.name: t.address for t in trusted if t.address is not None}
    head = head_name(spec.name)
    computes = [
        SlurmNodeDef(n.name, n.group or "", addresses.get(n.name), not n.static)
        for n in plan_nodes(spec)
        if n.role == "compute"
    ]
    files_ = slurm_files(spec, head, addresses[head], computes, include_dynamic=True)
    for name, text in files_.items():
        atomic_write(files.slurm_conf_dir / name, text)
    prolog = render(
        "slurm/prolog-slurmctld.sh.j2", cluster=spec.name, resume_timeout=spec.slurm.resume_timeout
    )
    atomic_write(files.prolog, prolog, mode=0o755)
    atomic_write(files.power_config, json.dumps(power_config(spec), indent=1) + "\n")
    cloud = cloud_config(spec, state.network)
    atomic_write(files.cloud_config, json.dumps(cloud, indent=1) + "\n")
    spot = spot_config(spec, state.network)
    atomic_write(files.spot_config, json.dumps(spot, indent=1) + "\n")
    prolog = task_prolog(spec, spot["checkpoint_dir"], spot["region"])
    atomic_write(files.task_prolog, prolog, mode=0o755)
    atomic_write(files.boot_script, boot_script(spec), mode=0o700)
    write_nodetools_archive(files.nodetools_archive)


def capacity_options(group: GroupSpec) -> list[dict[str, str]]:
    """A group's ways to get capacity, in the order resume tries them: every instance type
    as Spot first, then every type on demand, as the group's ``capacity`` allows."""
    kinds = {
        "spot": [SPOT],
        "on-demand": [ON_DEMAND],
        "spot-then-on-demand": [SPOT, ON_DEMAND],
    }[group.capacity]
    return [{"instance_type": t, "lifecycle": k} for k in kinds for t in group.instance_types]


def power_config(spec: ClusterSpec) -> dict[str, Any]:
    """``/etc/clusterkit/power.json``: what the head's power-saving programs need to know."""
    nodes = [n for n in plan_nodes(spec) if n.role == "compute"]
    return {
        "cluster": spec.name,
        "resume_timeout": spec.slurm.resume_timeout,
        "retry_seconds": spec.slurm.resume_retry_seconds,
        "groups": {
            g.name: {
                "options": capacity_options(g),
                "static": [n.name for n in nodes if n.group == g.name and n.static],
                "dynamic": [n.name for n in nodes if n.group == g.name and not n.static],
            }
            for g in spec.groups
        },
    }


def spot_config(spec: ClusterSpec, network: dict[str, str] | None = None) -> dict[str, Any]:
    """``SHARED/clusterkit/etc/spot.json``: what every node's Spot agent needs to know.

    ``checkpoint_dir`` names a job's checkpoints: ``{user}`` and ``{job}`` are filled in per
    job (by the agent here, by the TaskProlog in the job's environment). ``region`` is the
    region of the checkpoint bucket (aws), None on a shared directory.
    """
    shared = spec.shared_storage.mount_point
    where, region = checkpoint_location(spec, network or {})
    return {
        "cluster": spec.name,
        "checkpoint_dir": where,
        "region": region,
        "events_dir": f"{shared}/clusterkit/events",
        "signal": spec.spot.checkpoint_signal,
        "signal_jobs": spec.spot.signal_jobs,
        "grace_seconds": spec.spot.grace_seconds,
        "requeue_margin_seconds": spec.spot.requeue_margin_seconds,
        "max_restarts": spec.slurm.max_restarts,
        "events_queue": events_queue(spec, network or {}),
    }


def checkpoint_location(spec: ClusterSpec, network: dict[str, str]) -> tuple[str, str | None]:
    """Where jobs' checkpoints go, with ``{user}`` and ``{job}`` to fill in, and its region.

    local: each user's home on shared storage. aws: the cluster's bucket (the spec's, else
    the one ``up`` made, recorded in ``network``), under the prefix the node role may use.
    """
    if spec.provider == "local":
        return f"{home_root(spec)}/{{user}}/checkpoints/{spec.name}/{{job}}", None
    bucket = spec.aws.checkpoint_bucket or network.get("bucket")
    region = spec.aws.region or network.get("region")
    if not bucket or not region:
        raise ConfigureError(
            f"cluster {spec.name}: its checkpoint bucket or region is not recorded yet; "
            "run `clusterkit up` again"
        )
    return f"s3://{bucket}/{names.checkpoint_prefix(spec.name)}{{user}}/{{job}}", region


def events_queue(spec: ClusterSpec, network: dict[str, str]) -> dict[str, Any] | None:
    """The SQS queue the head's ``ck-spot-events`` reads: the spec's, else (aws) the
    cluster's own; None when there is none."""
    url = spec.spot.events_queue_url or network.get("queue_url")
    if not url:
        return None
    return {
        "url": url,
        "region": spec.spot.events_region or network.get("region") or None,
        "endpoint_url": spec.spot.events_endpoint_url or network.get("endpoint_url") or None,
    }


def task_prolog(spec: ClusterSpec, checkpoint_dir: str, region: str | None = None) -> str:
    """The TaskProlog: a job's checkpoint store and, for an S3 one, the region boto3 needs."""
    as_shell = checkpoint_dir.replace("{user}", "${SLURM_JOB_USER}").replace("{job}", "${job}")
    return render(
        "slurm/task-prolog.sh.j2", cluster=spec.name, checkpoint_dir=as_shell,
        max_restarts=spec.slurm.max_restarts, checkpoint_signal=spec.spot.checkpoint_signal,
        region=region,
    )  # fmt: skip


def cloud_config(spec: ClusterSpec, network: dict[str, str] | None = None) -> dict[str, Any]:
    """``/etc/clusterkit/cloud.json``: which cloud API the head's programs call. On aws,
    ``network`` (the state's) holds what the provider made: templates, subnets, region."""
    if spec.provider == "local":
        return {"kind": "local", "cluster": spec.name, "socket": LOCAL_SOCKET}
    net = network or {}
    subnets = [s for s in net.get("subnet_ids", "").split(",") if s]
    return {
        "kind": spec.provider,
        "cluster": spec.name,
        "region": net.get("region"),
        "endpoint_url": net.get("endpoint_url") or None,
        "groups": {
            g.name: {"launch_template_id": net.get(f"template:{g.name}"), "subnets": subnets}
            for g in spec.groups
        },
    }


def boot_script(spec: ClusterSpec) -> str:
    return render(
        "boot/compute.sh.j2",
        cluster=spec.name,
        head=head_name(spec.name),
        node_key=NODE_KEY_ON_NODE,
        ready_marker=READY_MARKER,
        service_manager=service_manager(spec),
        slurmd_flags=" -b" if spec.provider == "local" else "",
        users=cluster_users(spec),
        shared_dir=spec.shared_storage.mount_point,
        shared_type=shared_type(spec),
        slurmctld_port=SLURMCTLD_PORT,
        timeout=BOOT_TIMEOUT_SECONDS,
    )


def wait_for_boot(
    trust: ClusterTrust, nodes: list[str], timeout: float = BOOT_TIMEOUT_SECONDS + 30
) -> None:
    """Return once every node's boot script reports ``done``; raise naming failed nodes."""

    def outcome(node: str, stop: threading.Event) -> str | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = proc.run(
                trust.ssh_argv(node, ["cat", BOOT_STATUS]), check=False, timeout=15
            ).stdout.strip()
            if status == "done":
                return None
            if status.startswith("failed"):
                return f"{node}: {status} (console log: {trust.root}/nodes/{node}/console.log)"
            if stop.wait(0.2):
                break
        return f"{node}: boot did not finish within {timeout:.0f}s"

    failures = [f for f in interrupt.parallel(outcome, nodes) if f]
    if failures:
        raise ConfigureError("compute nodes failed to boot: " + "; ".join(failures))
