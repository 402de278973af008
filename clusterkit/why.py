"""``clusterkit why NAME JOBID``: why a job waits, in plain words.

Slurm says why a pending job waits in one word (``QOSGrpCpuLimit``, ``Resources``,
``Priority``). For a tenant's limit this module adds the numbers: the limit, what the
tenant's running jobs hold (``scontrol show assoc_mgr``, the controller's own count), what the
job asks for, and what would let it run. Explaining is pure (``explain``); only ``why``
reaches the head.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from clusterkit.billing import money
from clusterkit.errors import SlurmError, StateError
from clusterkit.nodetools import accounts
from clusterkit.nodetools.accounts import BUDGET_REASON, PARENT_ACCOUNT, Budget
from clusterkit.state import check_name, load_state
from clusterkit.trust import ClusterTrust

# A tenant's limit reasons: the QOS counter that holds the job back, its spec key, its unit.
QOS_LIMITS = {
    "QOSGrpCpuLimit": ("GrpTRES", "cpu", "cpus", "CPUs"),
    "QOSGrpMemLimit": ("GrpTRES", "mem", "mem", "MiB of memory"),
    "QOSGrpNodeLimit": ("GrpTRES", "node", "nodes", "nodes"),
    "QOSGrpGRES": ("GrpTRES", "gres/gpu", "gpus", "GPUs"),
    "QOSGrpJobsLimit": ("GrpJobs", "", "jobs", "running jobs"),
    "QOSMaxJobsPerUserLimit": ("MaxJobsPU", "", "jobs_per_user", "running jobs per user"),
}
# Slurm's other reasons for a pending job, in words; {id} and {nodes} are filled in.
REASONS = {
    "Resources": "no node has room for it now; it starts when running jobs end (a node runs "
    "jobs of one tenant at a time: nodes busy with another tenant's jobs are not free to it)",
    "Priority": "jobs ahead of it in the queue go first",
    "Dependency": "it waits for the jobs it depends on to end",
    "DependencyNeverSatisfied": "it can never run: a job it depends on failed (scancel {id})",
    "BeginTime": "it was submitted to start later (--begin)",
    "JobHeldUser": "it is held (scontrol release {id})",
    "JobHeldAdmin": "an administrator held it (scontrol release {id}, as root)",
    "BadConstraints": "it asks for something no node has (features, GPUs or memory)",
    "PartitionNodeLimit": "it asks for more nodes than its partition has",
    "PartitionConfig": "it asks for more than its partition allows",
    "PartitionTimeLimit": "its time limit is longer than its partition allows",
    "ReqNodeNotAvail": "nodes it needs are unavailable (down, drained or powering down)",
    "NodeDown": "a node it needs is down",
    "BurstBufferResources": "it waits for burst buffer space",
    "launch failed requeued held": "its launch failed and Slurm held it "
    "(scontrol release {id} once the node is fixed)",
    "JobArrayTaskLimit": "its array runs at most the tasks its %limit allows at once",
}


@dataclass(frozen=True)
class Explanation:
    """A job's state and why, in words; ``limit`` holds the numbers of a tenant's limit."""

    job: str
    state: str
    reason: str
    text: str
    user: str = ""
    account: str = ""
    nodes: str = ""
    limit: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_counters(line: str) -> dict[str, dict[str, tuple[int | None, int]]]:
    """One QOS line of ``scontrol -o show assoc_mgr flags=qos``: ``{"GrpTRES": {"cpu": (2, 2)},
    "GrpJobs": {"": (None, 1)}, "MaxJobsPU:2101": {"": (None, 0)}}`` (limit or None, in use)."""
    found: dict[str, dict[str, tuple[int | None, int]]] = {}
    uid = ""
    for token in line.split():
        match = re.fullmatch(r"(\d+)=\{(\w+)=(N|\d+)\((\d+)\)", token)
        if match:  # the first counter of a user's limits: 2101={MaxJobsPU=N(0)
            uid, key, limit, used = match.groups()
            found[f"{key}:{uid}"] = {"": (None if limit == "N" else int(limit), int(used))}
            continue
        key, _, value = token.partition("=")
        if not value or "(" not in value:
            continue
        counters: dict[str, tuple[int | None, int]] = {}
        for part in value.rstrip("}").split(","):
            m = re.fullmatch(r"(?:([\w/]+)=)?(N|\d+)\((\d+)(?:\.\d+)?\)", part)
            if m:
                name, limit, used = m.groups()
                counters[name or ""] = (None if limit == "N" else int(limit), int(used))
        if counters:
            found[key] = counters
    return found


def explain(
    job: Mapping[str, Any],
    counters: Mapping[str, Any] | None = None,
    budget: Budget | None = None,
) -> Explanation:
    """Why ``job`` (an entry of ``squeue --json``) is in its state; ``counters``: its QOS's
    ``parse_counters`` when it waits on a tenant's limit, ``budget`` the one that holds it
    (``accounts.holding``) when a budget does."""
    job_id = _job_id(job)
    state = str(job.get("job_state", "")).upper()
    reason = str(job.get("state_reason", "") or "None")
    base = {"job": job_id, "state": state, "reason": reason, "user": job.get("user_name", ""),
            "account": job.get("account", ""), "nodes": job.get("nodes", "")}  # fmt: skip
    if state == "CONFIGURING":
        text = f"its nodes ({base['nodes']}) are powering up; it starts once they are ready"
        return Explanation(**base, text=text)
    if state != "PENDING":
        where = f" on {base['nodes']}" if base["nodes"] else ""
        return Explanation(**base, text=f"it is {state.lower()}{where}, not waiting")
    if reason in QOS_LIMITS:
        return _limit_explanation(base, job, counters or {})
    if reason == BUDGET_REASON:
        return _budget_explanation(base, job, budget)
    words = _reason_words(reason)
    text = words.format(id=job_id) if words else f"Slurm's reason is {reason}"
    return Explanation(**base, text=text)


def _budget_explanation(
    base: dict[str, Any], job: Mapping[str, Any], budget: Budget | None
) -> Explanation:
    """A job its budget cannot admit: Slurm starts a job under a budget only if it can run
    to its time limit within what is left (AccountingStorageEnforce=safe)."""
    minutes = _time_limit_minutes(job)
    billing = _billing(job)
    asks = billing * minutes if billing and minutes else None
    if budget is None:
        numbers = {"name": "budget", "asked": asks}
        text = f"tenant {base['account']} or the cluster has spent its budget"
    else:
        numbers = {"name": "budget", "limit": budget.limit, "in_use": budget.used,
                   "held": budget.running, "asked": asks}  # fmt: skip
        who, key = f"tenant {budget.account}", f"tenants[{budget.account}].budget"
        if budget.account == PARENT_ACCOUNT:
            who, key = "the cluster", "cost.budget"
        held = budget.running
        text = (
            f"{who} has spent {money(budget.used):.4f} of its budget of "
            f"{money(budget.limit):.4f} ({key})"
            + (f", and its running jobs may spend {money(held):.4f} more" if held else "")
            + (f"; this job may cost up to {money(asks):.4f} (its time limit)" if asks else "")
        )
    text += (
        ". It starts if what is left allows it (a shorter --time asks for less); or raise "
        "the budget in the spec and run `clusterkit up` again"
    )
    return Explanation(**base, text=text, limit=numbers)


def _time_limit_minutes(job: Mapping[str, Any]) -> int | None:
    value = job.get("time_limit")
    if isinstance(value, dict):  # newer squeue: {"set": true, "number": 5}
        value = value.get("number")
    return int(value) if isinstance(value, int | float) and value > 0 else None


def _billing(job: Mapping[str, Any]) -> float | None:
    value = job.get("billable_tres")
    if isinstance(value, dict):
        value = value.get("number")
    return float(value) if isinstance(value, int | float) and value > 0 else None


def _reason_words(reason: str) -> str:
    """Slurm's reason in words ("ReqNodeNotAvail, UnavailableNodes:..." by its first part)."""
    words = REASONS.get(reason.split(",", maxsplit=1)[0].strip(), "")
    if not words and reason.startswith("ReqNodeNotAvail"):
        words = REASONS["ReqNodeNotAvail"]
    return words


def in_words(reason: str, job_id: str) -> str:
    """A pending job's reason in a few words, without asking the head for numbers."""
    if reason in QOS_LIMITS:
        return f"its tenant is at its limit of {QOS_LIMITS[reason][3]} at once"
    if reason == BUDGET_REASON:
        return "its tenant's or the cluster's budget has too little left for it"
    words = _reason_words(reason)
    return words.format(id=job_id).split(" (a node runs")[0] if words else ""


def _limit_explanation(
    base: dict[str, Any], job: Mapping[str, Any], counters: Mapping[str, Any]
) -> Explanation:
    counter, name, key, unit = QOS_LIMITS[base["reason"]]
    account = base["account"] or "its account"
    if counter == "MaxJobsPU":
        counter = f"MaxJobsPU:{job.get('user_id', '')}"
    limit, used = counters.get(counter, {}).get(name, (None, None))
    asked = accounts.tres(str(job.get("tres_req_str", ""))).get(name, 1) if name else 1
    numbers = {"name": key, "limit": limit, "in_use": used, "asked": asked}
    held = f"{used} held by its running jobs" if used is not None else "the rest held"
    if counter.startswith("MaxJobsPU"):
        held = f"{used} running now" if used is not None else "others running"
    cap = f"{limit} {unit}" if limit is not None else f"its {unit}"
    text = (
        f"tenant {account} is at its limit of {cap} at once (tenants[{account}].limits.{key}): "
        f"{held}, and this job asks for {asked}. It starts when enough of them end; or raise "
        f"the limit in the spec and run `clusterkit up` again"
    )
    return Explanation(**base, text=text, limit=numbers)


def _job_id(job: Mapping[str, Any]) -> str:
    """As squeue prints it: ``42``, ``42_3``, or ``42_[4-9]`` for an array's pending rest."""
    array, task = job.get("array_job_id"), job.get("array_task_id")
    if array and task is not None and str(task) != "":
        return f"{array}_{task}"
    if array and job.get("array_task_string"):
        return f"{array}_[{job['array_task_string']}]"
    return str(job.get("job_id", "?"))


def matching(jobs: Sequence[Mapping[str, Any]], job_id: str) -> list[Mapping[str, Any]]:
    """The entries of ``job_id``: the job, every task of array ``job_id``, or one task
    (``42_3``: its own entry, else the array's pending rest that holds it). squeue 22.05
    prints every job with ``--json``, whatever ``-j`` says."""
    base, _, task = job_id.partition("_")
    mine = [j for j in jobs if base in (str(j.get("job_id")), str(j.get("array_job_id") or ""))]
    if not task:
        return mine
    own = [j for j in mine if str(j.get("array_task_id", "")) == task]
    return own or [j for j in mine if _in_range(int(task), str(j.get("array_task_string", "")))]


def _in_range(task: int, ranges: str) -> bool:
    """Whether ``task`` is in ``1-3,7,9-11:2`` (an array's pending task string)."""
    for part in filter(None, ranges.split(",")):
        span, _, step = part.partition(":")
        low, _, high = span.partition("-")
        inside = low.isdigit() and int(low) <= task <= int(high or low)
        if inside and (task - int(low)) % int(step or 1) == 0:
            return True
    return False


def _ssh(trust: ClusterTrust, argv: list[str]) -> str:
    return trust.on_head(argv, doing="ask the head", error=SlurmError)


def _counters(trust: ClusterTrust, qos: str) -> dict[str, dict[str, tuple[int | None, int]]] | None:
    """The controller's counters of one QOS."""
    text = _ssh(trust, ["scontrol", "-o", "show", "assoc_mgr", "flags=qos", f"qos={qos}"])
    return next((parse_counters(x) for x in text.splitlines() if f"QOS={qos}(" in x), None)


def _budget(trust: ClusterTrust, account: str) -> Budget | None:
    """The budget holding back a job of ``account``: its own or the cluster's."""
    argv = ["scontrol", "-o", "show", "assoc_mgr", "flags=assoc",
            f"accounts={account},{PARENT_ACCOUNT}"]  # fmt: skip
    return accounts.holding(account, accounts.budgets(_ssh(trust, argv)))


def why(name: str, job_id: str) -> list[Explanation]:
    """The explanation of job ``job_id`` of cluster ``name`` (one per task of an array)."""
    check_name(name)
    if not re.fullmatch(r"\d+(_\d+)?", job_id):
        raise StateError(f"job id {job_id!r}: expected a number such as 42 or 42_3")
    state = load_state(name)
    if "configure" not in state.steps:
        raise StateError(f"cluster {name!r} runs no Slurm (it was made with --no-configure)")
    trust = ClusterTrust(name, state.dir)
    text = _ssh(trust, ["squeue", "--json", "-j", job_id])
    try:
        jobs = matching(json.loads(text).get("jobs", []), job_id)
    except json.JSONDecodeError as exc:
        raise SlurmError(f"squeue --json gave no JSON: {exc}") from None
    if not jobs:
        raise StateError(f"job {job_id} is not in the queue of {name} (finished? see sacct)")
    found = []
    for job in jobs:
        counters, budget = None, None
        reason = str(job.get("state_reason", ""))
        if reason == BUDGET_REASON:
            budget = _budget(trust, str(job.get("account", "")))
        elif reason in QOS_LIMITS and job.get("qos"):
            counters = _counters(trust, str(job["qos"]))
        found.append(explain(job, counters, budget))
    return found
