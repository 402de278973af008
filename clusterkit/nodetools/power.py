"""Slurm power saving on the head: ``ck-resume``, ``ck-suspend`` and ``ck-resume-fail``.

slurmctld runs these as SlurmUser with a hostlist argument and must never wait on them. Each
one copies what it needs at once (``SLURM_RESUME_FILE`` is deleted when the program exits),
forks its work into the background and exits 0. The work talks to the cloud API
(``clusterkit.nodetools.cloud``): the same code drives the local cloud service and EC2.

Resume tries a group's options in order (instance types, then on-demand where the spec allows
it); a capacity error moves on to the next option at once. Nodes still without an instance
are set DOWN with the provider's code in the reason, then powered down, so their jobs go back
to the queue and the nodes can be resumed again later. Every step is an event in the head's
log, with its duration.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clusterkit import proc
from clusterkit.errors import CommandError
from clusterkit.hostlist import compress_hostlist, hostnames
from clusterkit.nodetools import events
from clusterkit.nodetools.cloud import (
    CAPACITY_CODES,
    Cloud,
    CloudError,
    Instance,
    LaunchResult,
    Option,
)
from clusterkit.nodetools.clouds import cloud_from_config, load_config

POWER_CONFIG = Path("/etc/clusterkit/power.json")
RESUME_FILES = Path("/var/lib/clusterkit/power")  # copies of SLURM_RESUME_FILE


@dataclass(frozen=True)
class PowerConfig:
    """What the programs know of the cluster (``/etc/clusterkit/power.json``)."""

    cluster: str
    options: dict[str, tuple[Option, ...]]  # group -> capacity options, in order
    node_group: dict[str, str]  # every compute node -> its group
    static: frozenset[str]
    resume_timeout: int
    retry_seconds: int = 30
    protect_after: int = 10  # failed launches or repairs of a group that protect it (0: never)
    protect_window: float = 600.0  # seconds over which they are counted

    @staticmethod
    def from_dict(data: dict[str, Any]) -> PowerConfig:
        groups = data["groups"]
        return PowerConfig(
            cluster=data["cluster"],
            options={g: tuple(Option(**o) for o in v["options"]) for g, v in groups.items()},
            node_group={n: g for g, v in groups.items() for n in v["static"] + v["dynamic"]},
            static=frozenset(n for v in groups.values() for n in v["static"]),
            resume_timeout=int(data["resume_timeout"]),
            retry_seconds=int(data.get("retry_seconds", 30)),
            protect_after=int(data.get("protected_mode", {}).get("failures", 10)),
            protect_window=float(data.get("protected_mode", {}).get("window_seconds", 600)),
        )

    @staticmethod
    def load(path: Path = POWER_CONFIG) -> PowerConfig:
        return PowerConfig.from_dict(json.loads(path.read_text(encoding="utf-8")))

    def by_group(self, nodes: Sequence[str]) -> dict[str, list[str]]:
        """``nodes`` by group; a name the cluster does not have is an error of the caller."""
        groups: dict[str, list[str]] = {}
        for node in nodes:
            if node not in self.node_group:
                raise ValueError(f"{node} is not a compute node of cluster {self.cluster}")
            groups.setdefault(self.node_group[node], []).append(node)
        return groups


class Scontrol:
    """The few ``scontrol`` calls power saving makes; each names its nodes as a hostlist."""

    def update(self, nodes: Sequence[str], **settings: str) -> None:
        if not nodes:
            return
        pairs = [f"{k}={v}" for k, v in settings.items()]
        proc.run(["scontrol", "update", f"nodename={compress_hostlist(nodes)}", *pairs])

    def resume(self, nodes: Sequence[str]) -> None:
        """Clear a drain or DOWN. A node that registered again already (ReturnToService) is
        no longer DOWN, and Slurm refuses RESUME as an invalid state: nothing to do then."""
        self._lenient_state(nodes, "RESUME")

    def undrain(self, nodes: Sequence[str]) -> None:
        """Clear a drain and leave the base state: a DOWN node stays DOWN until its slurmd
        registers (ReturnToService=2), so no job is sent to it before it can run one."""
        self._lenient_state(nodes, "UNDRAIN")

    def reasons(self, nodes: Sequence[str]) -> dict[str, str]:
        """Each node's reason (``""``: none), as ``sinfo`` shows it now."""
        if not nodes:
            return {}
        out = proc.run(["sinfo", "-h", "-N", "-n", compress_hostlist(nodes), "-o", "%N|%E"]).stdout
        found = {}
        for line in out.splitlines():
            name, _, reason = line.partition("|")
            found[name.strip()] = "" if reason.strip() == "none" else reason.strip()
        return found

    def _lenient_state(self, nodes: Sequence[str], state: str) -> None:
        if not nodes:
            return
        done = proc.run(["scontrol", "update", f"nodename={compress_hostlist(nodes)}",
                         f"state={state}"], check=False)  # fmt: skip
        if done.returncode != 0 and "Invalid node state" not in done.stderr:
            raise CommandError(list(done.args), done.returncode, done.stderr)

    def set_addresses(self, instances: Sequence[Instance]) -> None:
        """Tell Slurm where each node now lives (one call: lists in the same order)."""
        if instances:
            names = ",".join(i.node for i in instances)
            addrs = ",".join(i.address for i in instances)
            proc.run(["scontrol", "update", f"nodename={names}", f"nodeaddr={addrs}",
                      f"nodehostname={names}"])  # fmt: skip

    def jobs_on(self, nodes: Sequence[str]) -> list[int]:
        """Ids of the jobs running on ``nodes`` (array tasks by their own job id)."""
        if not nodes:
            return []
        out = proc.run(["squeue", "-h", "-o", "%A", "-w", compress_hostlist(nodes)]).stdout
        return sorted({int(x) for x in out.split() if x.isdigit()})

    def retry_jobs(self, jobs: Sequence[int], seconds: int) -> None:
        """Make requeued jobs eligible again after ``seconds`` (Slurm would wait 121 s)."""
        for job in jobs:
            # A job that ended or started meanwhile refuses the update: nothing to do then.
            proc.run(["scontrol", "update", f"jobid={job}", f"starttime=now+{seconds}"],
                     check=False)  # fmt: skip

    def fail(self, nodes: Sequence[str], reason: str) -> None:
        """DOWN with ``reason`` (jobs requeue), then powered down so the nodes come back."""
        self.update(nodes, state="DOWN", reason=reason)
        self.update(nodes, state="POWER_DOWN_FORCE", reason=reason)


def failure_reason(error: CloudError | None) -> str:
    """The reason Slurm shows for nodes that could not be resumed."""
    code = error.code if error else "Unknown"
    return f"(Code:{code}) resume failed"


# ---------------------------------------------------------------------------------------------
# Resume


def launch_group(
    cloud: Cloud, group: str, nodes: Sequence[str], options: Sequence[Option]
) -> tuple[list[Instance], CloudError | None]:
    """Instances for ``nodes``, trying ``options`` in order; the error that stopped the rest.

    A capacity error, or a launch that made fewer instances than asked, moves the nodes
    still missing to the next option. Any other error stops: it would fail on every option.
    """
    made: list[Instance] = []
    remaining = list(nodes)
    error: CloudError | None = None
    for option in options:
        start = time.monotonic()
        try:
            result = cloud.launch(group, remaining, option)
        except CloudError as exc:
            result = LaunchResult.of(remaining, [], exc)
        events.record(
            "resume", "launch", group=group, nodes=remaining,
            instance_type=option.instance_type, lifecycle=option.lifecycle,
            instances={i.node: i.instance_id for i in result.instances},
            error=result.error.code if result.error else None,
            seconds=round(time.monotonic() - start, 3),
        )  # fmt: skip
        made += result.instances
        remaining = list(result.failed)
        if not remaining:
            return made, None
        error = result.error or CloudError("InsufficientInstanceCapacity", "fewer instances made")
        if error.code not in CAPACITY_CODES:
            break
    return made, error


def resume(
    nodes: Sequence[str],
    config: PowerConfig,
    cloud: Cloud,
    slurm: Scontrol,
    jobs: Sequence[int] = (),
) -> None:
    """Power up ``nodes`` for ``jobs``: launch, give Slurm their addresses, fail what could
    not be had; the jobs that fail requeues are tried again after the configured delay."""
    start = time.monotonic()
    groups = config.by_group(nodes)
    with ThreadPoolExecutor(max_workers=max(1, len(groups))) as pool:
        futures = {
            g: pool.submit(launch_group, cloud, g, members, config.options[g])
            for g, members in groups.items()
        }
        outcomes = {g: f.result() for g, f in futures.items()}
    failed = False
    for group, (made, error) in outcomes.items():
        slurm.set_addresses(made)
        missing = [n for n in groups[group] if n not in {i.node for i in made}]
        if missing:
            failed = True
            reason = failure_reason(error)
            slurm.fail(missing, reason)
            events.record("resume", "failed", group=group, nodes=missing, reason=reason,
                          detail=error.message if error else "")  # fmt: skip
    if failed and jobs:
        slurm.retry_jobs(jobs, config.retry_seconds)
        events.record("resume", "jobs retried", jobs=list(jobs), after=config.retry_seconds)
    events.record("resume", "done", nodes=list(nodes), seconds=round(time.monotonic() - start, 3))


# ---------------------------------------------------------------------------------------------
# Suspend and resume failure


def instances_of(cloud: Cloud, nodes: Sequence[str]) -> list[Instance]:
    wanted = set(nodes)
    return [i for i in cloud.describe() if i.node in wanted]


def suspend(nodes: Sequence[str], cloud: Cloud, slurm: Scontrol) -> None:
    """Release the instances of ``nodes``; Slurm forgets their addresses."""
    start = time.monotonic()
    gone = instances_of(cloud, nodes)
    cloud.terminate([i.instance_id for i in gone])
    # Back to the node's own name: an old address must not be reused for a new instance.
    slurm.update(nodes, nodeaddr=compress_hostlist(nodes), nodehostname=compress_hostlist(nodes))
    events.record("suspend", "terminated", nodes=list(nodes),
                  instances={i.node: i.instance_id for i in gone},
                  seconds=round(time.monotonic() - start, 3))  # fmt: skip


def resume_failed(nodes: Sequence[str], cloud: Cloud, slurm: Scontrol, timeout: int) -> None:
    """Nodes that did not come up within ResumeTimeout: end their instances, power them down."""
    gone = instances_of(cloud, nodes)
    cloud.terminate([i.instance_id for i in gone])
    reason = f"(Code:ResumeTimeout) not up within {timeout}s"
    slurm.fail(nodes, reason)
    events.record("resume-fail", "powered down", nodes=list(nodes), reason=reason,
                  instances={i.node: i.instance_id for i in gone})  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Entry points


def keep_resume_file() -> str | None:
    """Copy ``SLURM_RESUME_FILE`` (the jobs behind a resume) before slurmctld deletes it."""
    source = os.environ.get("SLURM_RESUME_FILE")
    if not source or not os.path.exists(source):
        return None
    RESUME_FILES.mkdir(parents=True, exist_ok=True)
    target = RESUME_FILES / f"resume-{time.time():.6f}.json"
    shutil.copyfile(source, target)
    return str(target)


def detach() -> bool:
    """Fork the work away from slurmctld: True in the background child, False in the parent."""
    if os.fork() > 0:
        return False
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    return True


def _jobs_of(resume_file: str | None) -> list[int]:
    if resume_file is None:
        return []
    try:
        data = json.loads(Path(resume_file).read_text(encoding="utf-8"))
        return [int(j["job_id"]) for j in data.get("jobs", [])]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def run_program(name: str, argv: Sequence[str]) -> int:
    """Shared start of the three programs: parse, record, detach, do the work."""
    if len(argv) != 1:
        print(f"usage: {name} HOSTLIST (run by slurmctld)", file=sys.stderr)
        return 2
    nodes = hostnames(argv[0])
    resume_file = keep_resume_file() if name == "ck-resume" else None
    jobs = _jobs_of(resume_file)
    events.record(name[3:], "called", nodes=nodes, jobs=jobs)
    if not detach():
        return 0
    try:
        _work(name, nodes, jobs)
    except Exception as exc:  # noqa: BLE001 - a detached child has no one else to tell
        events.record(name[3:], "error", nodes=nodes, detail=f"{type(exc).__name__}: {exc}"[-500:])
        os._exit(1)
    os._exit(0)


def _work(name: str, nodes: list[str], jobs: list[int]) -> None:
    config = PowerConfig.load()
    cloud = cloud_from_config(load_config())
    slurm = Scontrol()
    if name == "ck-resume":
        try:
            resume(nodes, config, cloud, slurm, jobs)
        except (CloudError, CommandError) as exc:
            # Nodes left powering up would hold their jobs until ResumeTimeout.
            code = exc.code if isinstance(exc, CloudError) else "ResumeError"
            slurm.fail(nodes, f"(Code:{code}) resume failed")
            raise
    elif name == "ck-suspend":
        suspend(nodes, cloud, slurm)
    else:
        resume_failed(nodes, cloud, slurm, config.resume_timeout)


def resume_main() -> int:
    return run_program("ck-resume", sys.argv[1:])


def suspend_main() -> int:
    return run_program("ck-suspend", sys.argv[1:])


def resume_fail_main() -> int:
    return run_program("ck-resume-fail", sys.argv[1:])
