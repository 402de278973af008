"""``ck-reconciler``: the head's watchdog over compute capacity, one pass every few seconds.

Each pass compares Slurm's nodes with the provider's instances and fixes what disagrees:

- a dynamic node powering up past ResumeTimeout, or whose instance vanished while it was
  powering up, is failed (DOWN with a coded reason, then powered down) and its instance ended;
- a dynamic node Slurm believes powered up whose instance is gone (killed, reclaimed) is
  failed the same way, so its jobs are requeued at once and the node can be resumed again;
- an instance whose node Slurm has powered down, or that no node of the cluster owns, or that
  is an older duplicate of a node's instance, is an orphan and is terminated;
- a static node whose instance is gone, or that Slurm has marked DOWN for not responding, is
  replaced: jobs requeued, a fresh instance launched, its address given to Slurm;
- what a slurmctld restarted from stale state leaves (a node drained for a "Duplicate jobid",
  a job "launch failed requeued held") is undone: the node resumed, the job released;
- a group whose launches or repairs keep failing is protected (``protect``): its nodes are
  drained with the reason and left alone until ``--lift`` (``clusterkit unprotect``, ``up``).

Deciding (``plan``) is separate from acting (``apply``), so the rules are tested on plain
data. Every action is an event in the head's log. Each pass also follows the jobs that Spot
agents requeued until they end (``jobwatch``), since Slurm soon forgets finished jobs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from clusterkit.nodetools import events, jobwatch, notify, protect
from clusterkit.nodetools.cloud import Cloud, Instance
from clusterkit.nodetools.clouds import cloud_from_config, load_config
from clusterkit.nodetools.meter import Meter
from clusterkit.nodetools.power import POWER_CONFIG, PowerConfig, Scontrol, launch_group
from clusterkit.nodetools.spot import CONFIG as SPOT_CONFIG
from clusterkit.nodetools.spot import SlurmOps, SpotConfig
from clusterkit.slurm import SlurmNode
from clusterkit.slurmreader import SlurmReader

INTERVAL_SECONDS = 3.0
# The playbook starts the reconciler before slurmctld, and slurmctld may restart: until Slurm
# first answers, a failing pass is the daemon starting, not an error, for this long.
STARTUP_GRACE_SECONDS = 120.0
ORPHAN_GRACE_SECONDS = 10.0  # an instance this young may belong to a resume still running
# What a slurmctld restarted from state older than what ran leaves behind (it saves its state
# up to 5 s after a change): a job it launched again is found running already on its node, so
# Slurm drains that node and holds the job. Neither is an operator's doing; both are undone.
CONTROLLER_DRAINS = ("Duplicate jobid",)
HELD_AFTER_FAILED_LAUNCH = "launch failed requeued held"


@dataclass(frozen=True)
class Action:
    kind: str  # fail | terminate | replace
    nodes: tuple[str, ...] = ()
    instances: tuple[str, ...] = ()
    reason: str = ""


@dataclass
class Reconciler:
    config: PowerConfig
    powering_up_since: dict[str, float] = field(default_factory=dict)
    seen_instance: set[str] = field(default_factory=set)  # nodes powering up with an instance

    def plan(
        self,
        nodes: Sequence[SlurmNode],
        instances: Sequence[Instance],
        now: float,
        protected: Collection[str] = (),
    ) -> list[Action]:
        """What to do this pass. Nodes of a ``protected`` group are left as they are; their
        orphans are still ended."""
        live = [i for i in instances if i.alive]
        newest = _newest_by_node(live)
        actions = self._orphans(nodes, live, newest, now)
        for node in nodes:
            group = self.config.node_group.get(node.name)
            if group is None or group in protected:
                continue
            mine = newest.get(node.name)
            if node.name in self.config.static:
                actions += self._static(node, mine)
            else:
                actions += self._dynamic(node, mine, now)
        return actions

    def _orphans(
        self, nodes: Sequence[SlurmNode], live: Sequence[Instance],
        newest: dict[str, Instance], now: float,
    ) -> list[Action]:  # fmt: skip
        by_name = {n.name: n for n in nodes}
        actions = []
        for inst in live:
            node = by_name.get(inst.node)
            if not inst.node and now - inst.launched_at <= ORPHAN_GRACE_SECONDS:
                continue  # launched a moment ago: its batch's names are being written
            if inst.node not in self.config.node_group:
                why = "no node of this cluster owns it"
            elif newest[inst.node].instance_id != inst.instance_id:
                why = f"an older duplicate of {newest[inst.node].instance_id}"
            elif (
                node is not None
                and node.is_powered_down
                and "POWERING_UP" not in node.flags
                and now - inst.launched_at > ORPHAN_GRACE_SECONDS
            ):
                why = "its node is powered down"
            else:
                continue
            actions.append(Action("terminate", (inst.node,), (inst.instance_id,), why))
        return actions

    def _dynamic(self, node: SlurmNode, inst: Instance | None, now: float) -> list[Action]:
        flags = set(node.flags)
        if "POWERING_UP" in flags:
            since = self.powering_up_since.setdefault(node.name, now)
            if inst is not None:
                self.seen_instance.add(node.name)
            ids = (inst.instance_id,) if inst else ()
            if inst is None and node.name in self.seen_instance:
                return [self._fail(node.name, ids, "(Code:InstanceLost) gone while powering up")]
            if now - since > self.config.resume_timeout:
                timeout = self.config.resume_timeout
                return [self._fail(node.name, ids, f"(Code:ResumeTimeout) not up in {timeout}s")]
            return []
        self.powering_up_since.pop(node.name, None)
        self.seen_instance.discard(node.name)
        # POWER_DOWN: asked to power down (a fail, an operator), not done yet: no instance
        # is expected, and failing it again would only repeat what is under way.
        if flags & {"POWERED_DOWN", "POWERING_DOWN", "POWER_DOWN"} or inst is not None:
            return []
        return [self._fail(node.name, (), "(Code:InstanceLost) instance gone")]

    def _fail(self, node: str, ids: tuple[str, ...], reason: str) -> Action:
        self.powering_up_since.pop(node, None)
        self.seen_instance.discard(node)
        return Action("fail", (node,), ids, reason)

    def _static(self, node: SlurmNode, inst: Instance | None) -> list[Action]:
        if inst is None:
            return [Action("replace", (node.name,), (), "(Code:InstanceLost) instance gone")]
        if node.state == "DOWN" and "not responding" in node.reason.lower():
            return [Action("replace", (node.name,), (inst.instance_id,),
                           "(Code:NotResponding) slurmd not responding")]  # fmt: skip
        return []

    # -- acting --------------------------------------------------------------------------------

    def apply(self, actions: Sequence[Action], cloud: Cloud, slurm: Scontrol) -> None:
        for action in actions:
            start = time.monotonic()
            jobs = slurm.jobs_on(action.nodes) if action.kind != "terminate" else []
            if action.instances:
                cloud.terminate(action.instances)
            if action.kind == "fail":
                slurm.fail(action.nodes, action.reason)
            elif action.kind == "replace":
                self._replace(action, cloud, slurm)
            # Requeued jobs go again soon, not after Slurm's fixed 121 s.
            slurm.retry_jobs(jobs, self.config.retry_seconds)
            events.record(
                "reconciler", action.kind, nodes=list(action.nodes),
                instances=list(action.instances), reason=action.reason, jobs=jobs,
                seconds=round(time.monotonic() - start, 3),
            )  # fmt: skip

    def _replace(self, action: Action, cloud: Cloud, slurm: Scontrol) -> None:
        # DOWN first: the node's jobs are requeued now, not after SlurmdTimeout.
        slurm.update(action.nodes, state="DOWN", reason=action.reason)
        for group, members in self.config.by_group(action.nodes).items():
            made, error = launch_group(cloud, group, members, self.config.options[group])
            slurm.set_addresses(made)
            # A fresh instance: whatever drained the old one (a Spot notice) does not apply to
            # it, and Slurm keeps a drain across a new slurmd's registration. The DOWN above
            # stays until that registration (ReturnToService=2), so no job is sent to the node
            # before its slurmd runs. A node whose reason is no longer ours was drained by
            # someone since (an operator): that drain stays.
            reasons = slurm.reasons([i.node for i in made])
            slurm.undrain([i.node for i in made if reasons.get(i.node, "") == action.reason])
            if error is not None:
                events.record("reconciler", "replace failed", nodes=members, error=error.code,
                              detail=error.message)  # fmt: skip


@dataclass
class PassErrors:
    """Which failed passes become events: each distinct error once while it lasts, and none
    before a first pass succeeded unless the start-up grace is over."""

    started: float
    grace: float = STARTUP_GRACE_SECONDS
    succeeded: bool = False
    last: str = ""

    def failed(self, error: str, now: float) -> bool:
        """A pass failed with ``error``; True when it is to be recorded."""
        if not self.succeeded and now - self.started < self.grace:
            return False
        new = error != self.last
        self.last = error
        return new

    def passed(self) -> None:
        self.succeeded = True
        self.last = ""


def drained_by_a_restart(nodes: Sequence[SlurmNode]) -> list[str]:
    """Nodes Slurm itself drained because a restarted controller relaunched a running job."""
    return [n.name for n in nodes if "DRAIN" in n.flags and n.reason.startswith(CONTROLLER_DRAINS)]


def held_by_a_restart(squeue_text: str) -> list[str]:
    """Jobs held after a relaunch failed (``squeue -h -t PD -o '%A|%R'`` lines)."""
    return [
        line.split("|", 1)[0].strip()
        for line in squeue_text.splitlines()
        if "|" in line and HELD_AFTER_FAILED_LAUNCH in line.split("|", 1)[1]
    ]


def undo_restart_artifacts(nodes: Sequence[SlurmNode], slurm: Scontrol) -> None:
    """Resume what a controller restart drained and release what it held, so that every job
    runs again (from its start or its checkpoint) instead of waiting forever."""
    drained = drained_by_a_restart(nodes)
    if drained:
        slurm.resume(drained)
        events.record("reconciler", "resume", nodes=drained, reason=CONTROLLER_DRAINS[0])
    listed = _run(["squeue", "-h", "-t", "PD", "-o", "%A|%R"])
    for job in held_by_a_restart(listed):
        subprocess.run(["scontrol", "release", job], capture_output=True, timeout=30, check=False)
        events.record("reconciler", "released", job=job, reason=HELD_AFTER_FAILED_LAUNCH)


def _newest_by_node(instances: Sequence[Instance]) -> dict[str, Instance]:
    newest: dict[str, Instance] = {}
    for inst in instances:
        if inst.node not in newest or inst.launched_at > newest[inst.node].launched_at:
            newest[inst.node] = inst
    return newest


def _run(argv: list[str]) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=30).stdout


def follow_jobs(watch: jobwatch.JobWatch, events_dir: Path) -> None:
    """Record what became of the jobs Spot agents requeued (one ``scontrol`` when any)."""
    watch.follow(watch.new_events(events_dir))
    if not watch.following:
        return
    jobs = jobwatch.snapshot()
    # Eligible now, not after Slurm's 121 s (a job whose agent died with its node).
    SlurmOps().release(watch.held(jobs))
    missing = watch.missing(jobs)
    for found in watch.observe(jobs, jobwatch.attempts(missing) if missing else None):
        events.record("reconciler", found.pop("action"), **found)


def notifier_of(
    path: Path, cluster: str, old: notify.Notifier | None = None
) -> notify.Notifier | None:
    """The notifier ``power.json`` asks for (None without targets); what ``old`` already sent
    is kept."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return old
    targets = notify.Targets.from_dict(data.get("notify"))
    if targets is None:
        return None
    if old is not None:
        old.targets = targets
        return old
    found = notify.Notifier(cluster, targets, _run)
    found.load()
    return found


def protection_of(config: PowerConfig) -> protect.Protection:
    return protect.Protection(
        node_group=config.node_group, after=config.protect_after, window=config.protect_window
    )


def lift_main(groups: Sequence[str]) -> int:
    """``--lift``: lift protected mode from ``groups`` (every protected one when empty)."""
    config = PowerConfig.load()
    protection = protection_of(config)
    protection.observe(events.read(), time.time())
    nodes = SlurmReader.create(_run, local=True).nodes()
    try:
        lifted = protect.lift(protection, groups, nodes, Scontrol())
    except ValueError as exc:
        print(f"ck-reconciler: {exc}", file=sys.stderr)
        return 2
    for group in lifted:
        print(f"lifted {group}")
    return 0


@dataclass
class Watched:
    """The reconciler's settings, read again when ``power.json`` changes (``up`` again)."""

    path: Path
    mtime: float = -1.0

    def changed(self) -> bool:
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            return False
        if mtime == self.mtime:
            return False
        self.mtime = mtime
        return True


def one_pass(
    reconciler: Reconciler,
    protection: protect.Protection,
    tail: events.Tail,
    *,
    cloud: Cloud,
    slurm: Scontrol,
    reader: SlurmReader,
    meter: Meter | None = None,
) -> None:
    """One pass: take in new events (protecting a group over its limit), meter the
    instances, then plan and act on every group not protected, then undo what a controller
    restart left."""
    nodes = reader.nodes()
    for group in protection.observe(tail.read(), time.time()):
        protect.protect(protection, group, nodes, slurm)
    instances = cloud.describe()
    if meter is not None:
        meter.record(instances, time.time())
    actions = reconciler.plan(nodes, instances, time.time(), set(protection.protected))
    reconciler.apply(actions, cloud, slurm)
    undo_restart_artifacts(nodes, slurm)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ck-reconciler", description=__doc__.splitlines()[0])
    parser.add_argument("--interval", type=float, default=INTERVAL_SECONDS)
    parser.add_argument("--once", action="store_true", help="one pass, then exit")
    parser.add_argument("--spot-config", type=Path, default=SPOT_CONFIG)
    parser.add_argument(
        "--lift", nargs="*", metavar="GROUP",
        help="lift protected mode from these groups (every protected group when none), exit",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.lift is not None:
        return lift_main(args.lift)
    settings = Watched(POWER_CONFIG)
    settings.changed()
    reconciler = Reconciler(PowerConfig.load())
    protection = protection_of(reconciler.config)
    tail = events.Tail()
    cloud = cloud_from_config(load_config())
    slurm = Scontrol()
    reader = SlurmReader.create(_run, local=True)
    watch = jobwatch.JobWatch()
    meter = Meter.from_log(events.read())
    notifier = notifier_of(POWER_CONFIG, reconciler.config.cluster)
    notices = events.Tail()
    events.record("reconciler", "started", interval=args.interval)
    errors = PassErrors(started=time.monotonic())
    while True:
        try:
            if settings.changed():
                reconciler.config = PowerConfig.load()
                notifier = notifier_of(POWER_CONFIG, reconciler.config.cluster, notifier)
                fresh = protection_of(reconciler.config)
                protection.node_group = fresh.node_group
                protection.after, protection.window = fresh.after, fresh.window
            one_pass(
                reconciler, protection, tail, cloud=cloud, slurm=slurm, reader=reader, meter=meter
            )
            follow_jobs(watch, Path(SpotConfig.load(args.spot_config).events_dir))
            if notifier is not None:
                notifier.tick(time.time(), notices.read())
            errors.passed()
        except Exception as exc:  # noqa: BLE001 - a watchdog logs and tries again
            error = f"{type(exc).__name__}: {exc}"[-500:]
            if errors.failed(error, time.monotonic()):
                events.record("reconciler", "error", detail=error)
        if args.once:
            return 0
        time.sleep(args.interval)


if __name__ == "__main__":
    sys.exit(main())
