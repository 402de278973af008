"""The checks of ``clusterkit verify``: what each one is, and judging what the nodes said.

Everything here is pure: the judges take the ``Output`` of commands run on the nodes (by
``verify.py``) and give one ``Check`` per check and node, head first, then compute nodes in
plan order. The checks, per node (``HEAD_CHECKS``, ``COMPUTE_CHECKS``):

- ``munged``, ``slurmctld`` (head), ``slurmd`` (computes): the daemon runs on that node
  (``pgrep`` on the node: local nodes have a PID namespace of their own);
- ``scontrol-ping`` (head): slurmctld answers UP;
- ``munge-from-head`` / ``munge-to-head`` (computes): a credential made by ``munge -n`` on the
  head decodes with ``unmunge`` on the compute node, and one made there decodes on the head
  (the credential travels through this process, never through a file);
- ``slurm-conf``: the head's ``/etc/slurm/slurm.conf`` is the one clusterkit rendered, and a
  compute node's configless cache (``SlurmdSpoolDir/conf-cache/slurm.conf``) is the head's;
- ``shared-mounted``: shared storage is a mount point (on the head of a local cluster too,
  where the provider bind-mounts it);
- ``shared-rw``: the node writes a unique file to shared storage, reads with the right
  content the files of the next ``SHARED_PEERS`` nodes (in plan order, wrapping round: every
  file is read by that many other nodes, and the reads grow with the nodes, not their
  square), then removes its own;
- ``slurm-idle`` (computes): ``sinfo --json`` shows the node IDLE, MIXED or ALLOCATED (busy
  with jobs) and neither drained, down nor not responding;
- ``cgroup-cpus`` / ``cgroup-memory`` (computes): a step run from the head as the first cluster
  user with ``srun -c1 --mem=64M`` sees one CPU and an effective memory limit of 64 MiB.

With accounting on (the head):

- ``slurmdbd``: the daemon runs; ``accounting``: slurmdbd holds the cluster's row (slurmctld
  registered with it);
- ``sacct``: accounting recorded every job the ``cgroup-*`` steps ran (``sacct -j``); where
  no step could run (the compute nodes' own checks say why), ``sacct`` still answers. A
  cluster without compute nodes yet (all dynamic) has no such check.

With two tenants or more and two compute nodes or more (the head):

- ``tenant-isolation``: a job of the first tenant's first user runs; the second tenant's
  first user cannot list it (``squeue``), and its own job, started meanwhile, runs on another
  node.

A check that could not run (SSH down, a command missing or hanging) fails, and its detail
says why.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from clusterkit.errors import SlurmError
from clusterkit.slurm import SlurmNode, parse_sinfo
from clusterkit.slurmconf import path_settings

HEAD_CHECKS: tuple[str, ...] = (
    "munged", "slurmctld", "scontrol-ping", "slurm-conf", "shared-mounted", "shared-rw",
)  # fmt: skip
COMPUTE_CHECKS: tuple[str, ...] = (
    "munged", "slurmd", "munge-from-head", "munge-to-head", "slurm-conf", "shared-mounted",
    "shared-rw", "slurm-idle", "cgroup-cpus", "cgroup-memory",
)  # fmt: skip

ACCOUNTING_CHECKS: tuple[str, ...] = ("slurmdbd", "accounting", "sacct")
TENANT_CHECKS: tuple[str, ...] = ("tenant-isolation",)

HEAD_SLURM_CONF = "/etc/slurm/slurm.conf"
CACHED_SLURM_CONF = f"{path_settings()['SlurmdSpoolDir']}/conf-cache/slurm.conf"
STEP_MEMORY_MB = 64
STEP_MEMORY_BYTES = STEP_MEMORY_MB * 1024 * 1024
READY_STATES = frozenset({"IDLE", "MIXED"})
# A node whose every CPU runs users' jobs is healthy, only busy (verify's step waits for it).
BUSY_STATES = frozenset({"ALLOCATED"})
BAD_FLAGS = frozenset({"DRAIN", "DOWN", "NOT_RESPONDING"})
NOT_RUN = -1  # an Output's rc when the command gave no result at all; stderr says why


@dataclass(frozen=True)
class Check:
    """The outcome of one check on one node; ``detail`` says what was seen or why it failed."""

    node: str
    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class Output:
    """What a command run on a node gave (rc ``NOT_RUN``: it gave nothing, see stderr)."""

    rc: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.rc == 0

    def why(self) -> str:
        """One line saying how the command failed."""
        tail = " | ".join((self.stderr.strip() or self.stdout.strip()).splitlines()[-3:])
        if self.rc == NOT_RUN:
            return tail or "no result"
        return f"exit {self.rc}: {tail or 'no output'}"


@dataclass(frozen=True)
class Layout:
    """What the checks need to know of a cluster."""

    head: str
    computes: tuple[str, ...]
    user: str
    shared_dir: str
    head_mounts_shared: bool
    rendered_conf: Path
    accounting: bool = False
    slurm_cluster: str = ""
    tenant_users: tuple[str, ...] = ()  # the first user of each tenant, in spec order

    @property
    def nodes(self) -> tuple[str, ...]:
        return (self.head, *self.computes)

    @property
    def checks_isolation(self) -> bool:
        """Two tenants' jobs can be put side by side: two tenants, two nodes."""
        return self.accounting and len(self.tenant_users) >= 2 and len(self.computes) >= 2

    @property
    def head_checks(self) -> tuple[str, ...]:
        """The head's checks, in order, for this cluster."""
        accounting = ACCOUNTING_CHECKS if self.computes else ACCOUNTING_CHECKS[:-1]
        return (
            HEAD_CHECKS
            + (accounting if self.accounting else ())
            + (TENANT_CHECKS if self.checks_isolation else ())
        )


Key = tuple[str, str]
"""(the node a probe is about, the probe's name); a probe may run on another node."""


def failures(checks: Iterable[Check]) -> list[Check]:
    """The checks that failed, in their order."""
    return [c for c in checks if not c.ok]


# Each node reads the shared files of this many others (fewer in a smaller cluster).
SHARED_PEERS = 3


def shared_peers(nodes: Sequence[str], node: str) -> list[str]:
    """The nodes whose shared files ``node`` reads: the next ``SHARED_PEERS`` in ``nodes``,
    wrapping round."""
    at = list(nodes).index(node)
    count = min(SHARED_PEERS, len(nodes) - 1)
    return [nodes[(at + i) % len(nodes)] for i in range(1, count + 1)]


def shared_content(token: str, node: str) -> str:
    return f"clusterkit verify {token} from {node}"


def content_sha256(token: str, node: str) -> str:
    """The digest of the file ``node`` wrote (``echo`` adds the newline)."""
    return hashlib.sha256((shared_content(token, node) + "\n").encode()).hexdigest()


def judge_all(
    layout: Layout, probes: Mapping[Key, Output], files: Mapping[str, str], token: str
) -> list[Check]:
    """Every check from what the probes gave, head first, then computes in plan order."""
    checks = _head_checks(layout, probes) + _compute_checks(layout, probes)
    checks += _accounting_checks(layout, probes)
    checks += _every_node_checks(layout, probes, files, token)
    return sorted(checks, key=lambda c: _order(layout, c))


def _head_checks(layout: Layout, probes: Mapping[Key, Output]) -> list[Check]:
    head = layout.head
    return [
        judge_daemon(head, "slurmctld", probes[head, "slurmctld"]),
        judge_ping(head, probes[head, "ping"]),
        judge_head_conf(head, probes[head, "conf"], _local_sha256(layout.rendered_conf)),
    ]


def _accounting_checks(layout: Layout, probes: Mapping[Key, Output]) -> list[Check]:
    head = layout.head
    checks = []
    if layout.accounting:
        checks += [
            judge_daemon(head, "slurmdbd", probes[head, "slurmdbd"]),
            judge_registered(head, layout.slurm_cluster, probes[head, "clusters"]),
        ]
    if layout.accounting and layout.computes:  # no compute node yet: no job to look for
        checks.append(judge_sacct(head, step_jobs(layout, probes), probes.get((head, "sacct"))))
    if layout.checks_isolation:
        checks.append(judge_isolation(head, layout.tenant_users, probes.get((head, "tenants"))))
    return checks


def step_jobs(layout: Layout, probes: Mapping[Key, Output]) -> list[str]:
    """The job ids the ``cgroup-*`` steps printed (``job N``), in node order."""
    found = []
    for node in layout.computes:
        out = probes.get((node, "step"))
        for line in out.stdout.splitlines() if out is not None and out.ok else []:
            key, _, value = line.strip().partition(" ")
            if key == "job" and value.isdigit():
                found.append(value)
    return list(dict.fromkeys(found))


def judge_registered(node: str, cluster: str, out: Output) -> Check:
    """``sacctmgr list cluster`` names the cluster once slurmctld registered with slurmdbd."""
    if not out.ok:
        return Check(node, "accounting", False, f"slurmdbd does not answer: {out.why()}")
    if cluster in out.stdout.split():
        return Check(node, "accounting", True, f"cluster {cluster} is registered with slurmdbd")
    return Check(
        node, "accounting", False,
        f"slurmdbd knows no cluster {cluster} (slurmctld did not register; its log says why)",
    )  # fmt: skip


def judge_sacct(node: str, jobs: Sequence[str], out: Output | None) -> Check:
    """``sacct -j`` lists every job the steps ran."""
    if out is None:
        return Check(node, "sacct", False, "slurmdbd was not asked")
    if not out.ok:
        return Check(node, "sacct", False, f"sacct failed: {out.why()}")
    if not jobs:
        return Check(node, "sacct", True, "sacct answers (no verify job ran to look for: "
                     "see the compute nodes' checks)")  # fmt: skip
    seen = {line.split("|")[0] for line in out.stdout.splitlines() if line.strip()}
    missing = [j for j in jobs if j not in seen]
    if missing:
        return Check(node, "sacct", False, f"accounting has no record of job {', '.join(missing)}")
    return Check(node, "sacct", True, f"accounting recorded the {len(jobs)} verify job(s)")


def judge_isolation(node: str, users: Sequence[str], out: Output | None) -> Check:
    """``ISOLATION_SCRIPT``'s lines ``first HOST``, ``second HOST`` and ``seen N``."""
    first, second = users[0], users[1]
    if out is None:
        return Check(node, "tenant-isolation", False, "slurmctld does not answer")
    got = dict(line.strip().partition(" ")[::2] for line in out.stdout.splitlines())
    if "held" in got:
        user, _, reason = got["held"].partition(" ")
        return Check(
            node, "tenant-isolation", True,
            f"not checked: a budget holds {user}'s job ({reason}); "
            "`clusterkit verify` checks it once the budget allows",
        )  # fmt: skip
    hosts = got.get("first", ""), got.get("second", "")
    if not out.ok or not all(hosts):
        return Check(node, "tenant-isolation", False, f"the tenants' jobs did not run: {out.why()}")
    if got.get("seen", "") != "0":
        return Check(
            node, "tenant-isolation", False,
            f"{second} can list {got.get('seen')} job(s) of {first}, another tenant's user",
        )  # fmt: skip
    if hosts[0] == hosts[1]:
        return Check(
            node, "tenant-isolation", False,
            f"jobs of {first} and {second}, of two tenants, ran side by side on {hosts[0]}",
        )  # fmt: skip
    return Check(
        node, "tenant-isolation", True,
        f"{first}'s job on {hosts[0]} and {second}'s on {hosts[1]}; "
        f"{second} cannot list {first}'s",
    )  # fmt: skip


def _compute_checks(layout: Layout, probes: Mapping[Key, Output]) -> list[Check]:
    head = layout.head
    checks: list[Check] = []
    slurm_nodes = _sinfo_nodes(probes[head, "sinfo"])
    busy = busy_nodes(probes[head, "sinfo"])
    for node in layout.computes:
        checks += [
            judge_daemon(node, "slurmd", probes[node, "slurmd"]),
            judge_munge(
                node, "munge-from-head", probes[head, "munge"], probes.get((node, "unmunge-head"))
            ),
            judge_munge(
                node, "munge-to-head", probes[node, "munge"], probes.get((node, "unmunge-node"))
            ),
            judge_conf(node, probes[node, "conf"], probes[head, "conf"]),
            judge_idle(node, slurm_nodes),
            *judge_step(
                node, probes.get((node, "step")), probes[node, "slurmd"], busy=node in busy
            ),
        ]
    return checks


def _every_node_checks(
    layout: Layout, probes: Mapping[Key, Output], files: Mapping[str, str], token: str
) -> list[Check]:
    checks: list[Check] = []
    for node in layout.nodes:
        expected = {
            files[o]: content_sha256(token, o)
            for o in shared_peers(layout.nodes, node)
            if probes[o, "write"].ok
        }
        checks += [
            judge_daemon(node, "munged", probes[node, "munged"]),
            judge_shared_rw(node, probes, expected),
        ]
        if (node, "mount") in probes:
            checks.append(judge_mounted(node, layout.shared_dir, probes[node, "mount"]))
    return checks


def _order(layout: Layout, check: Check) -> tuple[int, int]:
    names = layout.head_checks if check.node == layout.head else COMPUTE_CHECKS
    rank = names.index(check.name) if check.name in names else len(names)
    return layout.nodes.index(check.node), rank


def judge_daemon(node: str, daemon: str, out: Output) -> Check:
    """``pgrep -x DAEMON`` exits 0 and prints pids when the daemon runs."""
    if out.ok:
        pids = ", ".join(out.stdout.split())
        return Check(node, daemon, True, f"{daemon} is running (pid {pids})")
    if out.rc == 1:
        return Check(node, daemon, False, f"{daemon} is not running on {node}")
    return Check(node, daemon, False, f"cannot look for {daemon}: {out.why()}")


def judge_ping(node: str, out: Output) -> Check:
    """``scontrol ping`` prints ``Slurmctld(primary) at HOST is UP`` when slurmctld answers."""
    line = out.stdout.strip().splitlines()[0] if out.stdout.strip() else ""
    if out.ok and re.search(r"\bis UP\b", line):
        return Check(node, "scontrol-ping", True, line)
    return Check(node, "scontrol-ping", False, f"slurmctld does not answer: {line or out.why()}")


def judge_munge(node: str, name: str, made: Output, out: Output | None) -> Check:
    """``munge -n`` made a credential (``made``) and ``unmunge`` accepted it (``out``): it
    exits 0 and says ``STATUS: Success (0)``."""
    if out is None:
        return Check(node, name, False, f"no credential was made: {made.why()}")
    status = unmunge_status(out.stdout)
    if out.ok and status.startswith("Success"):
        return Check(node, name, True, f"credential decoded ({unmunge_host(out.stdout)})")
    return Check(node, name, False, f"credential not decoded: {status or out.why()}")


def unmunge_status(text: str) -> str:
    """The value of ``unmunge``'s ``STATUS:`` line (``Success (0)``), or ``""``."""
    match = re.search(r"^STATUS:\s*(.+?)\s*$", text, re.MULTILINE)
    return match.group(1) if match else ""


def unmunge_host(text: str) -> str:
    """Where ``unmunge`` says the credential was made (``ENCODE_HOST:``), or ``?``."""
    match = re.search(r"^ENCODE_HOST:\s*(.+?)\s*$", text, re.MULTILINE)
    return f"made on {match.group(1)}" if match else "made on ?"


def parse_sha256sum(text: str) -> dict[str, str]:
    """``sha256sum`` output as ``{path: hex digest}`` (lines it could not hash are absent)."""
    found = {}
    for line in text.splitlines():
        match = re.fullmatch(r"\\?([0-9a-f]{64}) [ *](.+)", line.strip())
        if match:
            found[match.group(2)] = match.group(1)
    return found


def _digest(out: Output) -> str | None:
    digests = list(parse_sha256sum(out.stdout).values()) if out.ok else []
    return digests[0] if len(digests) == 1 else None


def _local_sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def judge_head_conf(node: str, out: Output, rendered: str | None) -> Check:
    """The head's slurm.conf is byte for byte the one clusterkit rendered."""
    digest = _digest(out)
    if digest is None:
        return Check(node, "slurm-conf", False, f"cannot hash {HEAD_SLURM_CONF}: {out.why()}")
    if rendered is None:
        return Check(node, "slurm-conf", False, "clusterkit has no rendered slurm.conf to compare")
    if digest != rendered:
        return Check(
            node, "slurm-conf", False,
            f"{HEAD_SLURM_CONF} differs from clusterkit's (sha256 {digest[:12]} != "
            f"{rendered[:12]}): run `clusterkit up` again",
        )  # fmt: skip
    return Check(node, "slurm-conf", True, f"{HEAD_SLURM_CONF} is clusterkit's ({digest[:12]})")


def judge_conf(node: str, out: Output, head_out: Output) -> Check:
    """A compute node's configless cache of slurm.conf is the head's file."""
    digest, reference = _digest(out), _digest(head_out)
    if digest is None:
        return Check(node, "slurm-conf", False, f"cannot hash {CACHED_SLURM_CONF}: {out.why()}")
    if reference is None:
        return Check(node, "slurm-conf", False, "the head's slurm.conf could not be hashed")
    if digest != reference:
        return Check(
            node, "slurm-conf", False,
            f"{CACHED_SLURM_CONF} (sha256 {digest[:12]}) is not the head's ({reference[:12]}): "
            "restart slurmd or run `scontrol reconfigure` on the head",
        )  # fmt: skip
    return Check(node, "slurm-conf", True, f"same slurm.conf as the head ({digest[:12]})")


def judge_mounted(node: str, directory: str, out: Output) -> Check:
    """``mountpoint DIR`` exits 0 when shared storage is mounted there."""
    if out.ok:
        return Check(node, "shared-mounted", True, f"{directory} is a mount point")
    if out.rc == NOT_RUN:
        return Check(node, "shared-mounted", False, f"cannot look at {directory}: {out.why()}")
    return Check(node, "shared-mounted", False, f"{directory} is not mounted: {out.why()}")


def judge_shared_rw(node: str, probes: Mapping[Key, Output], expected: Mapping[str, str]) -> Check:
    """The node wrote its file, read its peers' with the right content, removed its own."""
    write = probes[node, "write"]
    if write.rc == NOT_RUN:
        return Check(node, "shared-rw", False, f"cannot try shared storage: {write.why()}")
    if not write.ok:
        return Check(node, "shared-rw", False, f"cannot write to shared storage: {write.why()}")
    problems = unreadable(expected, probes.get((node, "read")))
    remove = probes.get((node, "remove"))
    if remove is not None and not remove.ok:
        problems.append(f"cannot remove its file: {remove.why()}")
    if problems:
        return Check(node, "shared-rw", False, "; ".join(problems))
    return Check(
        node,
        "shared-rw",
        True,
        f"wrote and removed a file; read those of {len(expected)} other node(s)",
    )


def unreadable(expected: Mapping[str, str], out: Output | None) -> list[str]:
    """Problems reading the other nodes' files: missing ones and ones with other content."""
    if not expected:
        return []
    if out is None:
        return ["files of the other nodes were not read"]
    seen = parse_sha256sum(out.stdout)
    problems = []
    for path, digest in expected.items():
        if path not in seen:
            problems.append(f"cannot read {path}")
        elif seen[path] != digest:
            problems.append(f"{path} has other content than was written")
    if problems and out.stderr.strip():
        problems.append(out.why())
    return problems


def _sinfo_nodes(out: Output) -> list[SlurmNode] | str:
    if not out.ok:
        return f"sinfo --json failed on the head: {out.why()}"
    try:
        return parse_sinfo(out.stdout)
    except SlurmError as exc:
        return str(exc)


def judge_idle(node: str, slurm_nodes: Sequence[SlurmNode] | str) -> Check:
    """Slurm has the node IDLE, MIXED or ALLOCATED, not drained, down or unresponsive."""
    if isinstance(slurm_nodes, str):
        return Check(node, "slurm-idle", False, slurm_nodes)
    found = next((n for n in slurm_nodes if n.name == node), None)
    if found is None:
        return Check(node, "slurm-idle", False, f"Slurm has no node {node}")
    reason = f" ({found.reason})" if found.reason else ""
    busy = ": busy with jobs" if node_busy(found) else ""
    detail = f"Slurm says {found.display_state}{reason}{busy}"
    return Check(node, "slurm-idle", node_ready(found) or node_busy(found), detail)


def node_ready(node: SlurmNode) -> bool:
    """IDLE or MIXED without DRAIN, DOWN or NOT_RESPONDING: ready to take jobs."""
    return node.state in READY_STATES and not BAD_FLAGS.intersection(node.flags)


def node_busy(node: SlurmNode) -> bool:
    """ALLOCATED without DRAIN, DOWN or NOT_RESPONDING: every CPU runs jobs."""
    return node.state in BUSY_STATES and not BAD_FLAGS.intersection(node.flags)


def busy_nodes(out: Output) -> set[str]:
    """The nodes ``sinfo --json`` shows busy with jobs (none where it gave no answer)."""
    found = _sinfo_nodes(out)
    return set() if isinstance(found, str) else {n.name for n in found if node_busy(n)}


def parse_step(text: str) -> tuple[int | None, list[int]]:
    """``CGROUP_SCRIPT``'s output: the CPU count and every finite memory limit it printed.

    ``max`` (cgroup v2) and v1's "no limit" (near 2**63) are not limits and are left out.
    """
    cpus = None
    limits = []
    for line in text.splitlines():
        key, _, value = line.strip().partition(" ")
        if not value.isdigit():
            continue
        if key == "cpus":
            cpus = int(value)
        elif key == "memory" and int(value) < 1 << 62:
            limits.append(int(value))
    return cpus, limits


def judge_step(node: str, out: Output | None, slurmd: Output, busy: bool = False) -> list[Check]:
    """``cgroup-cpus`` and ``cgroup-memory`` from the step run on ``node`` (none is run on a
    node ``busy`` with jobs: it would wait for them)."""
    if out is None and busy:
        detail = ("not checked: every CPU of the node runs jobs; "
                  "`clusterkit verify` checks it once one is free")  # fmt: skip
        return [
            Check(node, "cgroup-cpus", True, detail),
            Check(node, "cgroup-memory", True, detail),
        ]
    if out is None:
        why = "slurmctld does not answer"
        if not slurmd.ok:
            why = judge_daemon(node, "slurmd", slurmd).detail
        return [
            Check(node, "cgroup-cpus", False, f"no step was run: {why}"),
            Check(node, "cgroup-memory", False, f"no step was run: {why}"),
        ]
    if not out.ok:
        detail = f"srun on the head failed: {out.why()}"
        return [
            Check(node, "cgroup-cpus", False, detail),
            Check(node, "cgroup-memory", False, detail),
        ]
    cpus, limits = parse_step(out.stdout)
    return [judge_cpus(node, cpus), judge_memory(node, limits)]


def judge_cpus(node: str, cpus: int | None) -> Check:
    """A step given one CPU (``-c1``) must see exactly one."""
    if cpus is None:
        return Check(node, "cgroup-cpus", False, "the step printed no CPU count")
    ok = cpus == 1
    detail = f"a step with -c1 sees {cpus} CPU(s)" + ("" if ok else ", not 1")
    return Check(node, "cgroup-cpus", ok, detail)


def judge_memory(node: str, limits: Sequence[int]) -> Check:
    """The effective limit is the smallest along the step's cgroup and its ancestors."""
    if not limits:
        return Check(
            node, "cgroup-memory", False, f"a --mem={STEP_MEMORY_MB}M step has no memory limit"
        )
    limit = min(limits)
    ok = limit == STEP_MEMORY_BYTES
    detail = f"a --mem={STEP_MEMORY_MB}M step is limited to {limit} bytes"
    return Check(node, "cgroup-memory", ok, detail + ("" if ok else f", not {STEP_MEMORY_BYTES}"))
