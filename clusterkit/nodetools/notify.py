"""Notifications: a message when a job, a pack or the mission ends, a budget is spent, or
interruptions come in a storm; sent to a webhook, a command, or an SNS topic.

The head's reconciler calls ``Notifier.tick`` every pass; at most every ``POLL_SECONDS`` it
looks at accounting for jobs that ended, at the controller's account counters for budgets, and
at the event log for interruption notices. ``clusterkit down`` sends the ``mission`` message
itself (with what the whole cluster cost). Every message is one JSON object (README:
"Notifications" has the schema):

    {"schema": "clusterkit.notify/1", "kind": "job|pack|budget|interruption-storm|mission",
     "cluster": NAME, "time": RFC 3339, ...fields of the kind}

Delivery is best effort: a failed one is logged as an event (``notify``, ``failed``) and not
retried, so a dead webhook never holds the reconciler up (each try is bounded by
``TIMEOUT_SECONDS``). What was sent is remembered in ``STATE`` so a restart sends nothing twice.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from clusterkit.nodetools import accounts, events
from clusterkit.nodetools.accounts import BUDGET_REASON, PARENT_ACCOUNT, Budget
from clusterkit.nodetools.spot import parse_time

SCHEMA = "clusterkit.notify/1"
KINDS = ("job", "pack", "budget", "interruption-storm", "mission")
POLL_SECONDS = 10.0
TIMEOUT_SECONDS = 5.0
STATE = Path("/var/lib/clusterkit/notified.json")
# sacct states of a job that has ended (an array task's, or a whole job's)
ENDED = ("COMPLETED", "FAILED", "TIMEOUT", "CANCELLED", "NODE_FAIL", "OUT_OF_MEMORY",
         "PREEMPTED", "DEADLINE", "BOOT_FAIL")  # fmt: skip
SACCT_ENDED = (
    "sacct", "-X", "-a", "-n", "-P", "--duplicates",
    "-o", "JobIDRaw,JobID,JobName,User,Account,State,Start,End,AllocTRES",
)  # fmt: skip


@dataclass(frozen=True)
class Targets:
    """Where messages go, and which kinds are sent (``notify`` in the spec)."""

    webhook: str | None = None
    command: str | None = None
    sns_topic: str | None = None
    sns_region: str | None = None
    kinds: tuple[str, ...] = KINDS
    storm_count: int = 3
    storm_seconds: float = 300.0

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Targets | None:
        if not data:
            return None
        return cls(
            webhook=data.get("webhook"), command=data.get("command"),
            sns_topic=data.get("sns_topic"), sns_region=data.get("sns_region"),
            kinds=tuple(data.get("kinds", KINDS)),
            storm_count=int(data.get("storm_count", 3)),
            storm_seconds=float(data.get("storm_seconds", 300)),
        )  # fmt: skip

    @property
    def any(self) -> bool:
        return bool(self.webhook or self.command or self.sns_topic)


def message(kind: str, cluster: str, **fields: Any) -> dict[str, Any]:
    """One message of ``kind``: the schema's fields first."""
    return {"schema": SCHEMA, "kind": kind, "cluster": cluster, "time": events.utc(), **fields}


def deliver(targets: Targets, msg: Mapping[str, Any]) -> list[str]:
    """Send ``msg`` everywhere ``targets`` say; return the errors (empty when all went)."""
    body = json.dumps(msg, separators=(",", ":")).encode()
    errors = []
    if targets.webhook:
        try:
            request = urllib.request.Request(  # noqa: S310 - the spec's own http(s) URL
                targets.webhook, data=body, method="POST",
                headers={"Content-Type": "application/json", "User-Agent": "clusterkit"},
            )  # fmt: skip
            with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as reply:  # noqa: S310
                reply.read()
        except (OSError, ValueError) as exc:
            errors.append(f"webhook: {exc}")
    if targets.command:
        try:
            done = subprocess.run(  # noqa: S602 - the spec's own command, run as its shell line
                targets.command, shell=True, input=body, capture_output=True,
                timeout=TIMEOUT_SECONDS, check=False,
            )  # fmt: skip
            if done.returncode != 0:
                errors.append(f"command exited {done.returncode}: {done.stderr.decode()[-200:]}")
        except (OSError, subprocess.TimeoutExpired) as exc:
            errors.append(f"command: {exc}")
    if targets.sns_topic:
        errors += _sns(targets, body.decode())
    return errors


def _sns(targets: Targets, body: str) -> list[str]:
    try:
        import boto3  # noqa: PLC0415 - only where a topic is set (the aws head has it)

        client = boto3.client("sns", region_name=targets.sns_region)
        client.publish(TopicArn=targets.sns_topic, Message=body)
    except Exception as exc:  # noqa: BLE001 - any failure of the SDK is a failed delivery
        return [f"sns: {type(exc).__name__}: {exc}"[:300]]
    return []


# --- what to tell -------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One line of ``SACCT_ENDED``: a job, or one task of an array."""

    raw: str
    job: str
    name: str
    user: str
    account: str
    state: str
    start: str
    end: str
    billing: int

    @property
    def base(self) -> str:
        """The job users know: an array task's array (12 for 12_3)."""
        return self.job.split("_", 1)[0]


def parse_rows(text: str) -> list[Row]:
    rows = []
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) < 9:
            continue
        raw, job, name, user, account, state, start, end = parts[:8]
        tres = dict(p.partition("=")[::2] for p in parts[8].split(",") if "=" in p)
        billing = int(tres["billing"]) if tres.get("billing", "").isdigit() else 0
        rows.append(Row(raw, job, name, user, account, state.split()[0] if state else "",
                        start, end, billing))  # fmt: skip
    return rows


def ended_jobs(rows: Sequence[Row], queued: Iterable[str]) -> dict[str, list[Row]]:
    """Jobs (arrays as a whole) every record of which has ended and none still queued: a
    requeued job's earlier attempts end too, but its job is queued again."""
    waiting = {q.split("_", 1)[0] for q in queued}
    by_job: dict[str, list[Row]] = {}
    for row in rows:
        by_job.setdefault(row.base, []).append(row)
    return {
        job: found for job, found in by_job.items()
        if job not in waiting and all(r.state in ENDED or r.state == "REQUEUED" for r in found)
        and any(r.state in ENDED for r in found)
    }  # fmt: skip


def job_message(cluster: str, job: str, rows: Sequence[Row]) -> dict[str, Any]:
    """A ``job`` (or, for a pack's array, ``pack``) message of an ended job."""
    last = {r.job: r for r in rows}  # an array task's (or the job's) newest attempt
    states: dict[str, int] = {}
    for r in last.values():
        states[r.state] = states.get(r.state, 0) + 1
    first = rows[0]
    fields: dict[str, Any] = {
        "job": job, "name": first.name, "user": first.user, "tenant": first.account,
        "states": states, "tasks": len(last), "attempts": len(rows),
        "start": min(r.start for r in rows), "end": max(r.end for r in rows),
        "billing_minutes": sum(r.billing * _minutes(r) for r in rows),
    }  # fmt: skip
    if first.name.startswith("pack-"):
        return message("pack", cluster, pack=first.name.removeprefix("pack-"), **fields)
    return message("job", cluster, **fields)


def _minutes(row: Row) -> float:
    """How long an attempt ran, in minutes; sacct prints its times as ISO 8601 (or, with
    SLURM_TIME_FORMAT=%s, as seconds)."""
    try:
        return max(0.0, (_seconds(row.end) - _seconds(row.start)) / 60)
    except ValueError:
        return 0.0


def _seconds(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return datetime.fromisoformat(text).timestamp()


def storms(found: Sequence[Mapping[str, Any]], count: int, seconds: float) -> list[list[str]]:
    """Groups of at least ``count`` interruption notices within ``seconds`` of the first of
    each group (instances, in order); one group per storm."""
    notices = [
        (events_time(e), str(e.get("instance", "")))
        for e in found
        if e.get("source") == "spot-agent" and e.get("action") == "notice"
        and e.get("spot_action") != "rebalance"
    ]  # fmt: skip
    groups: list[list[str]] = []
    start = None
    current: list[str] = []
    for when, instance in sorted(notices):
        if start is None or when - start > seconds:
            if len(current) >= count:
                groups.append(current)
            start, current = when, []
        current.append(instance)
    if len(current) >= count:
        groups.append(current)
    return groups


def events_time(event: Mapping[str, Any]) -> float:
    return parse_time(str(event["time"]))


# --- the head's loop ------------------------------------------------------------------------


@dataclass
class Notifier:
    """What the reconciler's passes tell, once each."""

    cluster: str
    targets: Targets
    run: Callable[[list[str]], str]
    state_path: Path = STATE
    last_poll: float = 0.0
    since: str = ""
    sent: dict[str, list[str]] = field(default_factory=dict)  # kind -> keys sent
    notices: list[Mapping[str, Any]] = field(default_factory=list)  # interruption notices

    def load(self) -> None:
        try:
            data = json.loads(self.state_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = {}
        self.sent = {k: list(v) for k, v in data.get("sent", {}).items()}
        # sacct reads -S in the head's local time
        self.since = data.get("since", "") or time.strftime("%Y-%m-%dT%H:%M:%S")

    def _save(self) -> None:
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"since": self.since, "sent": self.sent}), encoding="utf-8")
        os.replace(tmp, self.state_path)

    def _once(self, kind: str, key: str, msg: dict[str, Any]) -> None:
        if key in self.sent.get(kind, []) or kind not in self.targets.kinds:
            return
        self.sent.setdefault(kind, []).append(key)
        errors = deliver(self.targets, msg)
        if errors:
            events.record("notify", "failed", kind=kind, key=key, errors=errors)
        else:
            events.record("notify", "sent", kind=kind, key=key)

    def _jobs(self) -> tuple[list[Row], list[str]]:
        """Accounting's records since the start, and the jobs still queued (none where
        accounting is off or does not answer now)."""
        try:
            rows = parse_rows(self.run([*SACCT_ENDED, "-S", self.since]))
            return rows, self.run(["squeue", "-h", "-o", "%i"]).split()
        except (OSError, subprocess.SubprocessError):
            return [], []

    def _held_by_budget(self, found: Mapping[str, Budget]) -> dict[str, int]:
        """How many jobs wait because a budget cannot admit them, by the account whose
        budget it is (a tenant's, or the cluster's, ``PARENT_ACCOUNT``)."""
        try:
            out = self.run(["squeue", "-h", "-t", "PD", "-o", "%a|%r"])
        except (OSError, subprocess.SubprocessError):
            return {}
        held: dict[str, int] = {}
        for line in out.splitlines():
            account, _, reason = line.partition("|")
            budget = accounts.holding(account, found) if reason == BUDGET_REASON else None
            if budget is not None:
                held[budget.account] = held.get(budget.account, 0) + 1
        return held

    def _budgets(self) -> dict[str, Budget]:
        """Every account's budget (the tenants' and the cluster's), one call for all."""
        try:
            return accounts.budgets(self.run(["scontrol", "-o", "show", "assoc_mgr",
                                              "flags=assoc"]))  # fmt: skip
        except (OSError, subprocess.SubprocessError):
            return {}

    def tick(self, now: float, logged: Sequence[Mapping[str, Any]]) -> None:
        """Take in the events logged since the last tick; at most every ``POLL_SECONDS``,
        tell of job ends, spent budgets and storms."""
        self.notices += [e for e in logged if e.get("action") == "notice"]
        if not self.targets.any or now - self.last_poll < POLL_SECONDS:
            return
        self.last_poll = now
        for job, found in ended_jobs(*self._jobs()).items():
            msg = job_message(self.cluster, job, found)
            self._once(str(msg["kind"]), job, msg)
        budgets = self._budgets()
        held = self._held_by_budget(budgets) if budgets else {}
        for account, b in budgets.items():
            if b.used >= b.limit or account in held:
                whole = account == PARENT_ACCOUNT
                self._once("budget", f"{account}:{b.limit}", message(
                    "budget", self.cluster, scope="cluster" if whole else "tenant",
                    tenant=None if whole else account, budget_minutes=b.limit,
                    used_minutes=b.used, jobs_waiting=held.get(account, 0),
                ))  # fmt: skip
        targets = self.targets
        for group in storms(self.notices, targets.storm_count, targets.storm_seconds):
            self._once("interruption-storm", group[0], message(
                "interruption-storm", self.cluster, instances=group, count=len(group),
                window_seconds=targets.storm_seconds,
            ))  # fmt: skip
        self._save()
