"""A cluster's costs, gathered from the cluster and kept after it is gone.

The ledger's inputs come from three places: instance lives from the event log (the meter's
``instance up``/``instance gone``, narrowed by the events that ended each instance: a
suspend, an interruption, a replacement), job attempts from accounting (``sacct
--duplicates``: one record per attempt), and prices from the spec, the shipped table and the
provider (``prices.price_book``). ``clusterkit down`` saves those inputs under
``$CLUSTERKIT_HOME/ledgers/NAME/`` before it removes anything, so ``clusterkit cost`` answers
after the cluster (and its database) is gone, by the same rules (``ledger``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from clusterkit import ledger
from clusterkit.errors import StateError
from clusterkit.files import ClusterFiles
from clusterkit.headfiles import rendered_prices
from clusterkit.hostlist import hostnames
from clusterkit.ledger import JobAttempt, Life, NodeSize
from clusterkit.nodetools import meter
from clusterkit.nodetools.accounts import tres
from clusterkit.nodetools.packdir import ROOT_NAME as PACK_ROOT
from clusterkit.nodetools.spot import parse_time
from clusterkit.plan import head_name, home_root
from clusterkit.prices import PriceBook, group_capacity, price_book
from clusterkit.slurmconf import tools_dir
from clusterkit.spec import DEFAULT_PARTITION, ClusterSpec
from clusterkit.spot import cluster_events
from clusterkit.state import ClusterState, atomic_write, check_name, home, load_state, spec_of
from clusterkit.trust import ClusterTrust

LEDGER_VERSION = 1
SACCT_FIELDS = "JobID,User,Account,Partition,State,Start,End,NodeList,AllocTRES,JobName"
# What ended an instance, by the event that did it: (source, action) -> ended_by.
ENDINGS = {
    ("suspend", "terminated"): "released",
    ("resume-fail", "powered down"): "failed",
    ("reconciler", "replace"): "replaced",
    ("reconciler", "terminate"): "released",
    ("reconciler", "fail"): "failed",
    ("cloud", "spot-terminated"): ledger.INTERRUPTED,
}


def ledgers_dir(name: str) -> Path:
    """Where the ledgers of clusters named ``name`` are kept, one file per cluster made."""
    return home() / "ledgers" / name


# --- instance lives from the events -----------------------------------------------------------


@dataclass
class _Ends:
    """What the events say ended each instance, and when."""

    precise: dict[str, tuple[float, str]]
    notices: dict[str, float]  # instance -> when its interruption notice said it would end

    @classmethod
    def of(cls, found: Iterable[Mapping[str, Any]]) -> _Ends:
        ends = cls({}, {})
        for event in found:
            key = (str(event.get("source")), str(event.get("action")))
            when = _time(event)
            if key in ENDINGS and when is not None:
                for instance in _instances(event):
                    # An interruption is what ended it, even if a release followed.
                    if ENDINGS[key] == ledger.INTERRUPTED or instance not in ends.precise:
                        ends.precise[instance] = (when, ENDINGS[key])
            elif key == ("spot-agent", "notice") and event.get("spot_action") != "rebalance":
                ends.notices[str(event.get("instance"))] = parse_time(str(event["ends"]))
        return ends


def _instances(event: Mapping[str, Any]) -> list[str]:
    found = event.get("instances") or event.get("instance_id") or []
    if isinstance(found, dict):
        return [str(i) for i in found.values()]
    if isinstance(found, str):
        return [found]
    return [str(i) for i in found]


def _time(event: Mapping[str, Any]) -> float | None:
    try:
        return parse_time(str(event["time"]))
    except (KeyError, ValueError):
        return None


def lives_from_events(found: Sequence[Mapping[str, Any]]) -> list[Life]:
    """Every compute instance's life the meter saw; its end narrowed by what ended it."""
    ends = _Ends.of(found)
    ups: dict[str, Mapping[str, Any]] = {}
    gone: dict[str, Mapping[str, Any]] = {}
    for event in found:
        if event.get("source") != meter.SOURCE:
            continue
        if event.get("action") == meter.UP:
            ups.setdefault(str(event["instance"]), event)
        elif event.get("action") == meter.GONE:
            gone[str(event["instance"])] = event
    lives = []
    for instance, up in ups.items():
        end, ended_by = _end(instance, gone.get(instance), ends)
        lives.append(Life(
            instance_id=instance, node=str(up["node"]), group=str(up["group"]),
            instance_type=str(up["instance_type"]), capacity=str(up["lifecycle"]),
            start=parse_time(str(up["launched_at"])), end=end, ended_by=ended_by,
            dynamic="-dy-" in str(up["node"]), zone=str(up.get("zone", "")),
        ))  # fmt: skip
    return lives


def _end(instance: str, gone: Mapping[str, Any] | None, ends: _Ends) -> tuple[float | None, str]:
    """When ``instance`` ended and by what: None while the meter still sees it. The meter's
    pass that missed it bounds the end; an event that ended it in time gives it exactly."""
    if gone is None:
        return None, ""
    at = parse_time(str(gone["at"]))
    seen = parse_time(str(gone["last_seen"])) if gone.get("last_seen") else None
    if instance in ends.precise and ends.precise[instance][0] <= at:
        when, by = ends.precise[instance]
        return (max(when, seen) if seen is not None else when), by
    if instance in ends.notices:
        when = min(at, ends.notices[instance])
        return (max(when, seen) if seen is not None else when), ledger.INTERRUPTED
    return at, "lost"


def head_life(state: ClusterState, spec: ClusterSpec) -> Life | None:
    head = state.nodes.get(head_name(state.name))
    if head is None or not head.instance_id:
        return None
    capacity = "spot" if spec.head.capacity == "spot" else "on-demand"
    start = datetime.fromisoformat(state.created_at).timestamp()
    return Life(head.instance_id, head.name, "", spec.head.instance_type, capacity, start)


# --- job attempts from accounting -------------------------------------------------------------


def sacct_script(since: float) -> str:
    """The head's command for every attempt since ``since``, times as epoch seconds."""
    start = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(since))
    return (
        f"TZ=UTC SLURM_TIME_FORMAT=%s sacct --duplicates -X -a -n -P -S {start} -o {SACCT_FIELDS}"
    )


def parse_sacct(text: str) -> list[JobAttempt]:
    """Attempts from ``sacct_script``'s output; ones that never started are left out. A job's
    attempts are numbered in the order they started."""
    rows = []
    for line in text.splitlines():
        fields = line.split("|")
        if len(fields) < 10:
            continue
        job, user, account, partition, state, start, end, nodes, alloc = fields[:9]
        if not start.isdigit() or not nodes or nodes == "None assigned":
            continue
        held = tres(alloc)
        rows.append(JobAttempt(
            job=job, attempt=0, user=user, tenant=account, partition=partition,
            name="|".join(fields[9:]), state=state.split()[0] if state else "",
            start=float(start), end=float(end) if end.isdigit() else None,
            nodes=tuple(hostnames(nodes)), cpus=held.get("cpu", 0), mem_mb=held.get("mem", 0),
            gpus=held.get("gres/gpu", 0),
        ))  # fmt: skip
    rows.sort(key=lambda a: (a.job, a.start))
    seen: dict[str, int] = {}
    numbered: list[JobAttempt] = []
    for row in rows:
        numbered.append(replace(row, attempt=seen.get(row.job, 0)))
        seen[row.job] = seen.get(row.job, 0) + 1
    return numbered


def node_sizes(spec: ClusterSpec) -> dict[str, NodeSize]:
    return {
        g.name: NodeSize(g.cpus, g.memory_mb, g.gpus, g.instance_types[0], group_capacity(g))
        for g in spec.groups
    }


# --- gathering, saving, loading ---------------------------------------------------------------


@dataclass
class Inputs:
    """Everything the ledger is made from, as saved at ``down``."""

    cluster: str
    provider: str
    created_at: str
    now: float
    lives: list[Life]
    attempts: list[JobAttempt]
    sizes: dict[str, NodeSize]
    book: PriceBook
    saved_at: str = ""  # set on the copy ``down`` keeps
    notes: tuple[str, ...] = ()
    # the run times of every pack's done tasks (for the report's histograms), by pack
    tasks: dict[str, list[float]] = field(default_factory=dict)

    def build(self, since: float | None = None) -> ledger.Ledger:
        lives, attempts = self.lives, self.attempts
        if since is not None:
            lives = [_clip_life(x, since) for x in lives if (x.end or self.now) > since]
            attempts = [_clip(a, since) for a in attempts if (a.end or self.now) > since]
        return ledger.build(
            lives, attempts, self.sizes, self.book, self.now, chosen_in=DEFAULT_PARTITION
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "version": LEDGER_VERSION, "cluster": self.cluster, "provider": self.provider,
            "created_at": self.created_at, "now": self.now, "saved_at": self.saved_at,
            "lives": [asdict(x) for x in self.lives],
            "attempts": [asdict(a) for a in self.attempts],
            "sizes": {k: asdict(v) for k, v in self.sizes.items()},
            "prices": self.book.as_dict(), "notes": list(self.notes), "tasks": self.tasks,
        }  # fmt: skip

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Inputs:
        return cls(
            cluster=data["cluster"], provider=data["provider"], created_at=data["created_at"],
            now=float(data["now"]),
            lives=[Life(**x) for x in data["lives"]],
            attempts=[JobAttempt(**{**a, "nodes": tuple(a["nodes"])}) for a in data["attempts"]],
            sizes={k: NodeSize(**v) for k, v in data["sizes"].items()},
            book=PriceBook.from_dict(data["prices"]), saved_at=data.get("saved_at", ""),
            notes=tuple(data.get("notes", ())),
            tasks={k: [float(x) for x in v] for k, v in data.get("tasks", {}).items()},
        )  # fmt: skip


def _clip_life(life: Life, since: float) -> Life:
    return replace(life, start=max(life.start, since))


def _clip(attempt: JobAttempt, since: float) -> JobAttempt:
    return replace(attempt, start=max(attempt.start, since))


def gather(name: str, book: PriceBook, now: float | None = None, *, tasks: bool = False) -> Inputs:
    """The ledger's inputs of live cluster ``name`` (its events and its accounting);
    ``tasks``: with every pack's task run times too (one more read on the head)."""
    check_name(name)
    state = load_state(name)
    spec = spec_of(state)
    now = time.time() if now is None else now
    notes = []
    lives = lives_from_events(cluster_events(name))
    head = head_life(state, spec)
    if head is not None:
        lives.insert(0, head)
    attempts: list[JobAttempt] = []
    if spec.accounting.enabled and "configure" in state.steps:
        created = datetime.fromisoformat(state.created_at).timestamp()
        attempts = parse_sacct(_on_head(state, sacct_script(created)))
    elif not spec.accounting.enabled:
        notes.append("accounting is off: no job's cost is known, only the instances'")
    durations = pack_durations(state, spec) if tasks and "configure" in state.steps else {}
    return Inputs(
        cluster=name, provider=state.provider, created_at=state.created_at, now=now,
        lives=lives, attempts=attempts, sizes=node_sizes(spec), book=book, notes=tuple(notes),
        tasks=durations,
    )  # fmt: skip


def pack_durations(state: ClusterState, spec: ClusterSpec) -> dict[str, list[float]]:
    """Every user's packs' task run times, read on the head (``ck-pack durations``)."""
    script = (f"for r in {home_root(spec)}/*/{PACK_ROOT}; do [ -d \"$r\" ] && "
              f"{tools_dir(spec)}/ck-pack durations --root \"$r\"; done; true")  # fmt: skip
    found: dict[str, list[float]] = {}
    trust = ClusterTrust(state.name, state.dir)
    for line in trust.on_head([script], doing="read the packs' task times").splitlines():
        try:
            found.update(json.loads(line))
        except ValueError:
            continue  # a line that is no JSON (a pack cut short) adds nothing
    return found


def _on_head(state: ClusterState, script: str) -> str:
    return ClusterTrust(state.name, state.dir).on_head(
        [script], doing="read accounting on the head"
    )


def finished(inputs: Inputs) -> Inputs:
    """``inputs`` as ``down`` keeps them: every life still open ends now, ``down``."""
    ended = [
        x if x.end is not None else replace(x, end=inputs.now, ended_by="down")
        for x in inputs.lives
    ]
    attempts = [a if a.end is not None else replace(a, end=inputs.now) for a in inputs.attempts]
    stamp = datetime.fromtimestamp(inputs.now).astimezone().isoformat(timespec="seconds")
    return replace(inputs, lives=ended, attempts=attempts, saved_at=stamp)


def kept_path(inputs: Inputs) -> Path:
    """Where ``down`` keeps the ledger of ``inputs``: one file per cluster of that name."""
    stamp = inputs.created_at.replace(":", "").replace("+0000", "Z").replace("+00:00", "Z")
    return ledgers_dir(inputs.cluster) / f"{stamp}.json"


def save(inputs: Inputs) -> Path:
    """Keep ``inputs`` beside the ledgers of earlier clusters of the same name."""
    path = kept_path(inputs)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(inputs.as_dict(), indent=1) + "\n", mode=0o600)
    return path


def saved(name: str) -> Inputs:
    """The newest ledger ``down`` kept of a cluster named ``name``."""
    check_name(name)
    files = sorted(ledgers_dir(name).glob("*.json"))
    if not files:
        raise StateError(f"no cluster {name!r} here, and no ledger kept of one")
    try:
        return Inputs.from_dict(json.loads(files[-1].read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StateError(f"{files[-1]}: not a clusterkit ledger ({exc})") from None


# --- what `clusterkit cost` shows ---------------------------------------------------------


def report(
    inputs: Inputs,
    by: str = "tenant",
    since: float | None = None,
    built: ledger.Ledger | None = None,
) -> dict[str, Any]:
    """The cost report: the summary, one row per ``by`` key, the prices and their sources
    (``built``: the ledger of ``inputs``, where the caller has it already)."""
    book = built or inputs.build(since)
    rows = [{"key": key, **totals.as_dict()} for key, totals in book.by(by).items()]
    rows.sort(key=lambda r: -float(r["spent"]))
    notes = list(inputs.notes)
    if book.unpriced:
        notes.append(f"no price known for {', '.join(book.unpriced)}: costed at nothing")
    return {
        "cluster": inputs.cluster, "provider": inputs.provider,
        "as_of": datetime.fromtimestamp(inputs.now).astimezone().isoformat(timespec="seconds"),
        "saved_at": inputs.saved_at or None, "since": since,
        "summary": book.summary(), "by": by, "rows": rows,
        "prices": inputs.book.as_dict()["prices"], "notes": notes,
    }  # fmt: skip


# --- entry points -----------------------------------------------------------------------------


def prices_of(state: ClusterState) -> PriceBook:
    """The prices cluster ``state`` was rendered with (what Slurm bills by), else the spec's
    (a cluster ``up`` stopped before its render step)."""
    return rendered_prices(ClusterFiles(state.dir)) or price_book(spec_of(state))


def inputs_of(name: str, *, tasks: bool = False) -> Inputs:
    """The ledger's inputs of cluster ``name``: live while it exists (``tasks``: with its
    packs' task run times), else the ones its ``down`` kept."""
    check_name(name)
    try:
        state = load_state(name)
    except StateError:
        return saved(name)
    return gather(name, prices_of(state), tasks=tasks)


def keep(name: str) -> Inputs | None:
    """At ``down``: save the final ledger of ``name``, if it ever ran anything to cost, and
    return it."""
    state = load_state(name)
    if "configure" not in state.steps:
        return None
    final = finished(gather(name, prices_of(state), tasks=True))
    save(final)
    return final


def mission_summary(inputs: Inputs) -> dict[str, Any]:
    """The ``mission`` message's fields: what the whole cluster cost, per tenant too."""
    found = report(inputs, by="tenant")
    return {
        "created_at": inputs.created_at, "ended_at": found["as_of"],
        "summary": found["summary"],
        "tenants": {r["key"]: r for r in found["rows"]},
    }  # fmt: skip
