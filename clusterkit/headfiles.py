"""The files the head is given, besides Slurm's: power saving, Spot, cloud and prologs.

All are rendered under the cluster's ``rendered/`` directory and placed by the playbooks.
What a provider decides (its traits, where checkpoints go, which cloud API the head calls)
comes in as a ``HeadInputs``, so nothing here names a provider.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from clusterkit.accounting import accounts_plan, database_init_sql, mariadb_conf, slurmdbd_conf
from clusterkit.archive import write_nodetools_archive
from clusterkit.boot import boot_script
from clusterkit.files import ClusterFiles
from clusterkit.nodetools.cloud import ON_DEMAND, SPOT
from clusterkit.plan import head_name, plan_nodes
from clusterkit.prices import Price, PriceBook, price_book
from clusterkit.render import render
from clusterkit.slurmconf import SlurmNodeDef, slurm_files
from clusterkit.spec import ClusterSpec, GroupSpec
from clusterkit.state import ClusterState, atomic_write
from clusterkit.traits import Traits
from clusterkit.trust import TrustedNode


class HeadInputs(Protocol):
    """What rendering needs of a provider (its class has all of it)."""

    @property
    def traits(self) -> Traits: ...

    def checkpoint_location(
        self, spec: ClusterSpec, network: dict[str, str]
    ) -> tuple[str, str | None]: ...

    def cloud_config(self, spec: ClusterSpec, network: dict[str, str]) -> dict[str, Any]: ...

    def spot_prices(self, spec: ClusterSpec) -> dict[str, Price]: ...


def render_cluster_files(
    spec: ClusterSpec, state: ClusterState, trusted: list[TrustedNode], provider: HeadInputs
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
    book = price_book(spec, provider.spot_prices(spec))
    atomic_write(files.prices, json.dumps(book.as_dict(), indent=1) + "\n")
    files_ = slurm_files(
        spec, head, addresses[head], computes, traits=provider.traits, include_dynamic=True,
        prices=book,
    )  # fmt: skip
    for name, text in files_.items():
        atomic_write(files.slurm_conf_dir / name, text)
    atomic_write(files.prolog, slurmctld_prolog(spec), mode=0o755)
    atomic_write(files.power_config, json.dumps(power_config(spec), indent=1) + "\n")
    cloud = provider.cloud_config(spec, state.network)
    atomic_write(files.cloud_config, json.dumps(cloud, indent=1) + "\n")
    checkpoint = provider.checkpoint_location(spec, state.network)
    spot = spot_config(spec, checkpoint, state.network)
    atomic_write(files.spot_config, json.dumps(spot, indent=1) + "\n")
    prolog = task_prolog(spec, spot["checkpoint_dir"], spot["region"])
    atomic_write(files.task_prolog, prolog, mode=0o755)
    atomic_write(files.boot_script, boot_script(spec, provider.traits), mode=0o700)
    write_nodetools_archive(files.nodetools_archive)
    if spec.accounting.enabled:
        render_accounting_files(spec, files)


def rendered_prices(files: ClusterFiles) -> PriceBook | None:
    """The prices ``up`` rendered the cluster with; None before its render step."""
    try:
        return PriceBook.from_dict(json.loads(files.prices.read_text(encoding="utf-8")))
    except FileNotFoundError:
        return None


def render_accounting_files(spec: ClusterSpec, files: ClusterFiles) -> None:
    """slurmdbd.conf and the database's set-up (both hold the password: 0600), MariaDB's
    settings and the accounts' plan. The password was made or read by ``up``'s keys step."""
    password = files.db_password.read_text(encoding="utf-8")
    head = head_name(spec.name)
    atomic_write(files.slurmdbd_conf, slurmdbd_conf(spec, head, password), mode=0o600)
    atomic_write(files.db_init_sql, database_init_sql(spec, password), mode=0o600)
    atomic_write(files.mariadb_conf, mariadb_conf(spec))
    atomic_write(files.accounts_plan, json.dumps(accounts_plan(spec), indent=1) + "\n")


def slurmctld_prolog(spec: ClusterSpec) -> str:
    """The PrologSlurmctld: a job on powered-up nodes starts as soon as they are ready."""
    return render(
        "slurm/prolog-slurmctld.sh.j2", cluster=spec.name, resume_timeout=spec.slurm.resume_timeout
    )


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
        "protected_mode": spec.protected_mode.model_dump(),
        "notify": notify_targets(spec),
        "groups": {
            g.name: {
                "options": capacity_options(g),
                "static": [n.name for n in nodes if n.group == g.name and n.static],
                "dynamic": [n.name for n in nodes if n.group == g.name and not n.static],
            }
            for g in spec.groups
        },
    }


def notify_targets(spec: ClusterSpec) -> dict[str, Any] | None:
    """Where the head's reconciler sends its messages (``nodetools.notify.Targets``)."""
    n = spec.notify
    if not (n.webhook or n.command or n.sns_topic_arn):
        return None
    return {
        "webhook": n.webhook, "command": n.command, "sns_topic": n.sns_topic_arn,
        "sns_region": n.sns_topic_arn.split(":")[3] if n.sns_topic_arn else None,
        "kinds": list(n.events), "storm_count": n.storm.count,
        "storm_seconds": n.storm.window_seconds,
    }  # fmt: skip


def spot_config(
    spec: ClusterSpec, checkpoint: tuple[str, str | None], network: dict[str, str] | None = None
) -> dict[str, Any]:
    """``SHARED/clusterkit/etc/spot.json``: what every node's Spot agent needs to know.

    ``checkpoint`` is where jobs' checkpoints go and the region of their bucket (None on a
    shared directory), as the provider says: ``{user}`` and ``{job}`` in it are filled in per
    job (by the agent here, by the TaskProlog in the job's environment).
    """
    shared = spec.shared_storage.mount_point
    where, region = checkpoint
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
