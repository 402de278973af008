"""Slurm's configuration files of a cluster: slurm.conf, cgroup.conf and gres.conf.

Every value is decided here, in small functions that each return one group of settings; the
templates under ``templates/slurm/`` only place them. A later feature (power saving, say) adds
its settings as one more function and one more group, leaving the others alone.

Compute nodes run ``slurmd`` in configless mode: the head serves these files to every node,
so they are rendered once, for the head.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from clusterkit.accounting import SLURMDBD_PORT
from clusterkit.billing import billing_weights, has_budgets, node_weight
from clusterkit.hostlist import compress_hostlist
from clusterkit.prices import PriceBook
from clusterkit.render import render
from clusterkit.spec import DEFAULT_PARTITION, ClusterSpec, GroupSpec
from clusterkit.traits import Traits

Settings = dict[str, str]

SLURMCTLD_PORT = 6817
SLURMD_PORT = 6818
LARGE_CLUSTER_NODES = 1024  # where SchedMD's Large Cluster Administration Guide begins
DEFAULT_TREE_WIDTH = 50  # slurm.conf(5)
MAX_TREE_WIDTH = 65533  # slurm.conf(5): "The value may not exceed 65533"

# The guide's "set of scheduling parameters ... for running hundreds of jobs per second",
# scaled down for a cluster of tens of nodes whose jobs are often short tasks of an array:
#   batch_sched_delay=3         the default; the guide's 20 s would hold back every job of a
#                               small cluster, which rarely sees hundreds of submits a second
#   sched_min_interval=1000000  run the main scheduler at most once a second, so a burst of
#                               submits or ends is scheduled in one pass (the guide: 2 s)
#   default_queue_depth=200     jobs tried per event; the guide finds the default 100 fine,
#                               a small cluster can afford twice that
#   partition_job_depth=200     the same bound per partition (each node is in two)
#   bf_continue                 backfill goes on after it yields its locks (from the guide's set)
# Measured (bench/slurm.py): with batch_sched_delay=3 and sched_min_interval=1 s, passes came
# 2 s apart and a 1000-task array of trivial tasks took 490 s on 4 computes. A job's end must
# be followed by a pass at once, and backfill must look every second.
SCHEDULER_PARAMETERS = (
    "batch_sched_delay=0",
    "sched_min_interval=0",
    "default_queue_depth=200",
    "partition_job_depth=200",
    "bf_continue",
    "bf_interval=1",
)


# SlurmctldParameters for power saving, always set (harmless without cloud nodes):
#   idle_on_node_suspend     a node powered down after a failure comes back IDLE, ready to be
#                            resumed again, instead of staying DOWN
#   power_save_interval=1    look for nodes to suspend every second (the default 10 s would
#                            add up to 10 s to every release)
#   power_save_min_interval=0
POWER_SAVE_PARAMETERS = (
    "idle_on_node_suspend",
    "power_save_interval=1",
    "power_save_min_interval=0",
)


PROLOG_SLURMCTLD = "/etc/clusterkit/prolog-slurmctld"


@dataclass(frozen=True)
class SlurmNodeDef:
    """A compute node as slurm.conf declares it; ``address`` is None until it is known."""

    name: str
    group: str
    address: str | None
    dynamic: bool


def slurm_files(
    spec: ClusterSpec,
    head_name: str,
    head_address: str,
    nodes: Sequence[SlurmNodeDef],
    *,
    traits: Traits,
    include_dynamic: bool = False,
    prices: PriceBook | None = None,
) -> dict[str, str]:
    """The rendered files by name: ``slurm.conf``, ``cgroup.conf`` and ``gres.conf``.

    ``nodes`` are the compute nodes (never the head). Dynamic ones are left out unless
    ``include_dynamic``; when included they are declared ``State=CLOUD`` without an address.
    ``prices`` give node weights (cheapest first) and the billing TRES (``billing``).
    Raises ``ValueError`` on nodes that contradict the spec (a caller's bug).
    """
    chosen = select_nodes(spec, head_name, nodes, include_dynamic)
    return {
        "slurm.conf": render(
            "slurm/slurm.conf.j2",
            **slurm_conf_values(spec, head_name, head_address, chosen, traits, prices=prices),
        ),
        "cgroup.conf": render("slurm/cgroup.conf.j2", **cgroup_conf_values(spec, traits)),
        "gres.conf": render("slurm/gres.conf.j2", **gres_conf_values(spec, chosen, traits)),
    }


# ---------------------------------------------------------------------------------------------
# The nodes


def select_nodes(
    spec: ClusterSpec, head_name: str, nodes: Sequence[SlurmNodeDef], include_dynamic: bool
) -> list[SlurmNodeDef]:
    """The nodes the files declare, in the caller's order, after checking them."""
    check_nodes(spec, head_name, nodes)
    return [n for n in nodes if include_dynamic or not n.dynamic]


def check_nodes(spec: ClusterSpec, head_name: str, nodes: Sequence[SlurmNodeDef]) -> None:
    """Raise ``ValueError`` for an unknown group, a repeated name or a static node without
    an address: Slurm would start with a wrong cluster instead of failing."""
    groups = {g.name for g in spec.groups}
    seen = {head_name}
    for node in nodes:
        if node.group not in groups:
            raise ValueError(f"node {node.name}: group {node.group!r} is not in the spec")
        if node.name in seen:
            raise ValueError(f"node {node.name}: declared more than once (or named as the head)")
        if not node.dynamic and node.address is None:
            raise ValueError(f"node {node.name}: a static node needs its address")
        seen.add(node.name)


def group_of(spec: ClusterSpec, name: str) -> GroupSpec:
    """The group spec called ``name`` (``check_nodes`` made sure it exists)."""
    return next(g for g in spec.groups if g.name == name)


def has_gpus(spec: ClusterSpec) -> bool:
    """True when any group of the spec has GPUs, whether or not its nodes are declared."""
    return any(g.gpus > 0 for g in spec.groups)


# ---------------------------------------------------------------------------------------------
# slurm.conf


def slurm_conf_values(
    spec: ClusterSpec,
    head_name: str,
    head_address: str,
    nodes: Sequence[SlurmNodeDef],
    traits: Traits,
    *,
    prices: PriceBook | None = None,
) -> dict[str, Any]:
    """Everything slurm.conf.j2 places, for the nodes to declare."""
    return {
        "cluster": spec.name,
        "controller": controller_settings(spec, head_name, head_address),
        "paths": path_settings(),
        "plugins": plugin_settings(spec, traits),
        "jobs": job_settings(spec),
        "throughput": throughput_settings(spec),
        "accounting": accounting_settings(spec, head_address),
        "power": power_settings(spec, nodes),
        "size": size_settings(spec, nodes),
        "nodes": [node_settings(spec, node, prices) for node in nodes],
        "partitions": partition_settings(spec, nodes, prices),
        "extra": list(spec.slurm.extra),
    }


def controller_settings(spec: ClusterSpec, head_name: str, head_address: str) -> Settings:
    """Who the controller is and how daemons reach and trust each other."""
    return {
        "ClusterName": spec.slurm_cluster_name,
        # slurmctld starts only on the host whose hostname is the one named here.
        "SlurmctldHost": f"{head_name}({head_address})",
        # Compute nodes fetch their configuration from slurmctld (slurmd --conf-server).
        "SlurmctldParameters": ",".join(["enable_configless", *POWER_SAVE_PARAMETERS]),
        "SlurmUser": "slurm",
        "AuthType": "auth/munge",
        "CredType": "cred/munge",
        "SlurmctldPort": str(SLURMCTLD_PORT),
        "SlurmdPort": str(SLURMD_PORT),
    }


def path_settings() -> Settings:
    """Where the daemons keep state, pid files and logs.

    Local nodes share the host's /run, so each pid file lives in the daemon's spool
    directory, which is private to its node.
    """
    return {
        "StateSaveLocation": "/var/spool/slurmctld",
        "SlurmdSpoolDir": "/var/spool/slurmd",
        "SlurmctldPidFile": "/var/spool/slurmctld/slurmctld.pid",
        "SlurmdPidFile": "/var/spool/slurmd/slurmd.pid",
        "SlurmctldLogFile": "/var/log/slurm/slurmctld.log",
        "SlurmdLogFile": "/var/log/slurm/slurmd.log",
    }


def plugin_settings(spec: ClusterSpec, traits: Traits) -> Settings:
    """How jobs are placed, tracked and confined (cgroup.conf says how far)."""
    settings = {
        "SwitchType": "switch/none",
        "MpiDefault": "none",
        "ProctrackType": "proctrack/cgroup",
        "TaskPlugin": "task/cgroup,task/affinity",
        "SelectType": "select/cons_tres",
        "SelectTypeParameters": "CR_Core_Memory",
    }
    if has_gpus(spec):
        settings["GresTypes"] = "gpu"
    if traits.emulated_hardware:
        # Nodes declare more CPUs than the machine has; slurmd would drain them.
        settings["SlurmdParameters"] = "config_overrides"
    return settings


def job_settings(spec: ClusterSpec) -> Settings:
    """How jobs survive lost nodes, and how many the controller holds."""
    return {
        # A job whose node is lost (a Spot interruption) goes back to the queue.
        "JobRequeue": "1",
        # A node that was DOWN for any reason returns to service when its slurmd registers.
        "ReturnToService": "2",
        # Gives every task CK_CHECKPOINT_DIR, CK_MAX_RESTARTS and CK_CHECKPOINT_SIGNAL (a
        # shell script: it runs before every task, so it must cost next to nothing).
        "TaskProlog": task_prolog_path(spec),
        "MaxArraySize": str(spec.slurm.max_array_size),
        "MaxJobCount": str(spec.slurm.max_job_count),
    }


# days-hours; Slurm reads it into seconds in a signed 32-bit int (at most 24,855 days)
USAGE_HALF_LIFE = "10000-0"


def priority_settings(spec: ClusterSpec) -> Settings:
    """FIFO, the guide's faster choice: an ephemeral cluster has no fair share to keep.

    With accounting it is multifactor with every weight 0 (every job's priority is 1, so the
    queue stays first come, first served), because only multifactor counts what jobs used,
    which budgets (GrpTRESMins) need; measured: under basic a spent budget held nothing. Its
    count runs every minute, so a running job's use shows within one.

    What associations used decays, and budgets are on associations (the tenants' accounts
    and the cluster's), so its half-life is 10,000 days: spent money fades by 0.007 % a day.
    No decay at all
    (0) would need a usage reset period, and a reset (at best yearly) empties every budget.
    """
    if not spec.accounting.enabled:
        return {"PriorityType": "priority/basic"}
    weights = ("Age", "Fairshare", "JobSize", "Partition", "QOS")
    return {
        "PriorityType": "priority/multifactor",
        **{f"PriorityWeight{w}": "0" for w in weights},
        "PriorityCalcPeriod": "1",
        "PriorityDecayHalfLife": USAGE_HALF_LIFE,
    }


def throughput_settings(spec: ClusterSpec) -> Settings:
    """Settings from SchedMD's High Throughput Computing Administration Guide."""
    return {
        # Backfill (the default, stated) still helps the mixed MPI and array workloads.
        "SchedulerType": "sched/backfill",
        "SchedulerParameters": ",".join(SCHEDULER_PARAMETERS),
        **priority_settings(spec),
        # The guide: purge finished jobs after "a few seconds". `sbatch --wait` polls more
        # slowly the longer MinJobAge is (measured: it returned 20 s late with 60).
        "MinJobAge": "5",
        # The guide: raise it "somewhat" from 10 s; local nodes share a few real cores.
        "MessageTimeout": "20",
        # No job completion log: accounting (below) keeps every job.
        "JobCompType": "jobcomp/none",
        # The guide: error or info; more detailed logging lowers throughput.
        "SlurmctldDebug": "info",
        "SlurmdDebug": "info",
    }


def accounting_settings(spec: ClusterSpec, head_address: str) -> Settings:
    """slurmdbd keeps every job; tenants are accounts that never share a node.

    Without accounting: no records, no sampling, and so no tenants (the spec refuses them).
    """
    private = ["cloud"]  # powered-down nodes stay visible to sinfo/squeue and to status
    if not spec.accounting.enabled:
        return {
            "AccountingStorageType": "accounting_storage/none",
            "JobAcctGatherType": "jobacct_gather/none",
            "PrivateData": ",".join(private),
        }
    settings = {
        "AccountingStorageType": "accounting_storage/slurmdbd",
        # The address, as in SlurmctldHost: clients on the login node (which resolves no
        # cluster names) reach slurmdbd too.
        "AccountingStorageHost": head_address,
        "AccountingStoragePort": str(SLURMDBD_PORT),
        # Without limits and qos Slurm ignores every limit; without safe, a job that a limit
        # would stop halfway is started anyway (safe: it waits).
        "AccountingStorageEnforce": "associations,limits,qos,safe",
        # What each job used (sacct's MaxRSS, TotalCPU), sampled from its cgroup.
        "JobAcctGatherType": "jobacct_gather/cgroup",
        # A job carries its account as its label; a node runs jobs of one label at a time
        # (select), so two tenants never share a node, and a user sees only the jobs of its
        # own label (privatedata, with PrivateData=jobs).
        "MCSPlugin": "mcs/account",
        "MCSParameters": "enforced,select,privatedata",
        # A job's billing is its dominant share of the node (the largest of its CPUs, memory
        # and GPUs, each weighted by price): money, as the cost ledger counts it.
        "PriorityFlags": "MAX_TRES",
    }
    if has_gpus(spec):
        settings["AccountingStorageTRES"] = "gres/gpu"  # so GPU limits and usage exist
    return settings | {"PrivateData": ",".join([*private, "jobs"])}


def task_prolog_path(spec: ClusterSpec) -> str:
    return f"{spec.shared_storage.mount_point}/clusterkit/etc/task-prolog"


def tools_dir(spec: ClusterSpec) -> str:
    """Where the playbooks install the node tools (on shared storage, so every node has them)."""
    return f"{spec.shared_storage.mount_point}/clusterkit/bin"


def power_settings(spec: ClusterSpec, nodes: Sequence[SlurmNodeDef]) -> Settings:
    """Slurm power saving: dynamic nodes are powered up for jobs and released when idle.

    Static nodes are excluded by name, so only ``State=CLOUD`` nodes are ever suspended.
    Without dynamic nodes there is nothing to power save and no setting is written.
    """
    static = [n.name for n in nodes if not n.dynamic]
    if not any(n.dynamic for n in nodes):
        return {}
    settings = {
        "ResumeProgram": f"{tools_dir(spec)}/ck-resume",
        "SuspendProgram": f"{tools_dir(spec)}/ck-suspend",
        "ResumeFailProgram": f"{tools_dir(spec)}/ck-resume-fail",
        "SuspendTime": str(spec.slurm.suspend_time),
        "SuspendTimeout": str(spec.slurm.suspend_timeout),
        "ResumeTimeout": str(spec.slurm.resume_timeout),
        "ResumeRate": str(spec.slurm.resume_rate),
        "SuspendRate": str(spec.slurm.suspend_rate),
    }
    if static:
        settings["SuspendExcNodes"] = compress_hostlist(static)
    # Starts a job as soon as its resumed nodes are up (see the script).
    settings["PrologSlurmctld"] = PROLOG_SLURMCTLD
    return settings | {
        # Addresses change with every instance: look them up each time, never cache them.
        "CommunicationParameters": "NoAddrCache",
    }


def size_settings(spec: ClusterSpec, nodes: Sequence[SlurmNodeDef]) -> Settings:
    """Settings that follow the cluster's size: every compute node the spec may hold (its
    groups' ``max``), so that the file does not change as dynamic nodes come and go.

    From slurm.conf(5) and SchedMD's Large Cluster Administration Guide (big_sys.html,
    both of Slurm 22.05; the guide is for "clusters containing 1,024 nodes or more").
    """
    count = sum(g.max for g in spec.groups)
    large = count >= LARGE_CLUSTER_NODES
    settings: Settings = {}
    width = tree_width(count, cloud=any(n.dynamic for n in nodes))
    if width is not None:
        settings["TreeWidth"] = str(width)
    # A node whose slurmd stops answering (hung, or its machine gone) is DOWN after 30 s
    # (default 300; pings go every 10 s), so the reconciler replaces it and its jobs are
    # requeued soon. Dead daemons are found sooner, by each node's supervisor (about 1 s).
    # Not lower: on a loaded machine a slow but live slurmd must not be replaced. The guide:
    # "for really large clusters, SlurmdTimeout values of 120 seconds or more are
    # reasonable" (pings go at half of it, and each is a message to every node).
    settings["SlurmdTimeout"] = "120" if large else "30"
    if large and spec.accounting.enabled:
        # The guide: sampling is system noise on every node; "configure the sampling
        # interval to a relatively large size (e.g. JobAcctGatherFrequency=300)".
        settings["JobAcctGatherFrequency"] = "task=300"
    return settings


# The kernel's listen backlogs (``somaxconn`` and ``tcp_max_syn_backlog``) on Linux 5.4 and
# later; Debian 12's kernel keeps them there.
KERNEL_BACKLOG = 4096


def head_sysctls(spec: ClusterSpec) -> dict[str, str]:
    """Kernel settings of the head for bursts of messages from every node at once: a listen
    backlog of twice the node count (SchedMD's High Throughput guide: "to support a burst of
    1024 requests, set somaxconn to 1024"; nodes register, answer pings and end jobs in
    waves). Only where that is above the kernel's own 4,096; both settings belong to the
    head's network namespace, so a local head changes nothing of this machine."""
    wanted = 2 * (sum(g.max for g in spec.groups) + 1)
    if wanted <= KERNEL_BACKLOG:
        return {}
    return {"net.core.somaxconn": str(wanted), "net.ipv4.tcp_max_syn_backlog": str(wanted)}


def tree_width(count: int, *, cloud: bool) -> int | None:
    """slurmd's message fan-out for ``count`` compute nodes, or None for Slurm's default.

    With dynamic (CLOUD) nodes, messages go straight to each node: a tree would route them
    through nodes that may be powered down (Slurm's elastic computing guide). Otherwise
    the manual's rule: the square root of the node count up to 2,500 nodes, the cube root
    above; up to the default width (50) every node is reached directly anyway.
    """
    if cloud:
        return MAX_TREE_WIDTH
    if count <= DEFAULT_TREE_WIDTH:
        return None
    return math.isqrt(count - 1) + 1 if count <= 2500 else _ceil_cube_root(count)


def _ceil_cube_root(n: int) -> int:
    root = round(math.cbrt(n))  # the nearest integer: the ceiling, or one below it
    return root if root**3 >= n else root + 1


def node_settings(
    spec: ClusterSpec, node: SlurmNodeDef, prices: PriceBook | None = None
) -> Settings:
    """One NodeName line; its size comes from the node's group, its weight from its price."""
    group = group_of(spec, node.group)
    settings: Settings = {"NodeName": node.name}
    if not node.dynamic and node.address is not None:
        # Dynamic nodes get their address at resume time (scontrol update nodeaddr=...).
        settings["NodeAddr"] = node.address
    settings["NodeHostname"] = node.name
    settings["CPUs"] = str(group.cpus)
    settings["RealMemory"] = str(group.memory_mb)
    if group.gpus > 0:
        settings["Gres"] = f"gpu:{group.gpus}"
    if group.features:
        settings["Features"] = ",".join(group.features)
    settings["Weight"] = str(node_weight(group, prices))
    # CLOUD: powered down until Slurm resumes it; UNKNOWN: slurmd's registration decides.
    settings["State"] = "CLOUD" if node.dynamic else "UNKNOWN"
    return settings


def partition_settings(
    spec: ClusterSpec, nodes: Sequence[SlurmNodeDef], prices: PriceBook | None = None
) -> list[Settings]:
    """The default partition with every declared node, then one partition per group.

    A group without declared nodes still gets its partition, empty (``Nodes=``), so a job
    asking for it waits instead of being rejected. With accounting and prices, each bills
    in money (``billing``); with a budget, a job without a time limit gets a default one.
    """
    everyone = partition(
        DEFAULT_PARTITION, [n.name for n in nodes], min(mem_per_cpu(g) for g in spec.groups),
        default=True,
    )  # fmt: skip
    per_group = [
        partition(g.name, [n.name for n in nodes if n.group == g.name], mem_per_cpu(g))
        for g in spec.groups
    ]
    if not spec.accounting.enabled or prices is None:
        return [everyone, *per_group]
    for settings, groups in zip(
        [everyone, *per_group], [spec.groups, *((g,) for g in spec.groups)], strict=True
    ):
        weights = billing_weights(groups, prices)
        if weights is not None:
            settings["TRESBillingWeights"] = weights
        if has_budgets(spec):
            # A budget admits a job only if it can run to its end within it (Enforce=safe),
            # which a job without a time limit never can.
            settings["DefaultTime"] = str(spec.cost.default_time_minutes)
    return [everyone, *per_group]


def mem_per_cpu(group: GroupSpec) -> int:
    """A job that asks for no memory gets this per CPU. Without it, CR_Core_Memory gives such a
    job its node's whole memory and a node runs one task at a time (measured)."""
    return max(1, group.memory_mb // group.cpus)


def partition(
    name: str, node_names: Sequence[str], def_mem_per_cpu: int, default: bool = False
) -> Settings:
    """One PartitionName line."""
    settings = {"PartitionName": name, "Nodes": compress_hostlist(node_names) if node_names else ""}
    if default:
        settings["Default"] = "YES"
    settings["DefMemPerCPU"] = str(def_mem_per_cpu)
    settings["MaxTime"] = "INFINITE"
    settings["State"] = "UP"
    return settings


# ---------------------------------------------------------------------------------------------
# cgroup.conf


def cgroup_conf_values(spec: ClusterSpec, traits: Traits) -> dict[str, Any]:
    """Everything cgroup.conf.j2 places."""
    return {"cluster": spec.name, "settings": cgroup_settings(spec, traits)}


def cgroup_settings(spec: ClusterSpec, traits: Traits) -> Settings:
    """How far task/cgroup confines a job."""
    return {
        # Local machines run cgroup v1 (measured); EC2 images vary, so slurmd looks itself.
        "CgroupPlugin": traits.cgroup_plugin,
        # A job sees only the cores it was given: `nproc` shows its -c.
        "ConstrainCores": "yes",
        # A step over its --mem is OOM-killed instead of starving the node's other jobs.
        "ConstrainRAMSpace": "yes",
        "AllowedRAMSpace": "100",
        # Nodes have no swap to share out; limiting it would only add a setting to explain.
        "ConstrainSwapSpace": "no",
        # Devices matter only where there are GPUs to hand out one by one.
        "ConstrainDevices": "yes" if has_gpus(spec) else "no",
    }


# ---------------------------------------------------------------------------------------------
# gres.conf


def gres_conf_values(
    spec: ClusterSpec, nodes: Sequence[SlurmNodeDef], traits: Traits
) -> dict[str, Any]:
    """Everything gres.conf.j2 places: one line per GPU group and kind of node."""
    lines: list[Settings] = []
    for group in spec.groups:
        if group.gpus > 0:
            members = [n for n in nodes if n.group == group.name]
            lines += gres_lines(group, members, traits)
    return {"cluster": spec.name, "lines": lines}


def gres_lines(group: GroupSpec, nodes: Sequence[SlurmNodeDef], traits: Traits) -> list[Settings]:
    """The GPU lines of one group's declared nodes."""
    static = [n.name for n in nodes if not n.dynamic]
    dynamic = [n.name for n in nodes if n.dynamic]
    if traits.emulated_hardware:
        # No device files exist: the GPUs are counted, never opened.
        return [local_gpus(static + dynamic, group.gpus)] if nodes else []
    lines = [{"NodeName": compress_hostlist(static), "AutoDetect": "nvml"}] if static else []
    if dynamic:
        # gres.conf(5): "AutoDetect cannot be used with cloud nodes"; EC2 GPU instances
        # number their devices /dev/nvidia0 upwards.
        lines.append(cloud_gpus(dynamic, group.gpus))
    return lines


def local_gpus(names: Sequence[str], count: int) -> Settings:
    """GPUs that are only counted (the local provider has no devices)."""
    return {"NodeName": compress_hostlist(names), "Name": "gpu", "Count": str(count)}


def cloud_gpus(names: Sequence[str], count: int) -> Settings:
    """NVIDIA GPUs named by device file, for nodes where AutoDetect is not allowed."""
    files = "/dev/nvidia0" if count == 1 else f"/dev/nvidia[0-{count - 1}]"
    return {"NodeName": compress_hostlist(names), "Name": "gpu", "File": files}
