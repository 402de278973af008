"""``clusterkit verify NAME``: check over SSH that a live cluster really works.

Every check runs commands on the cluster's nodes through testinfra's ``ssh`` backend with the
cluster's own ``ssh_config`` (its known_hosts, ``StrictHostKeyChecking yes``; testinfra adds
only ``ConnectTimeout`` and ``ControlMaster``/``ControlPersist`` options, never host key ones)
and ``BatchMode``. Each check yields one ``Check`` naming its node; a check that cannot run
(SSH down, a command missing or hanging) is a failed ``Check`` whose detail says why, so
``verify`` raises only when the cluster itself cannot be loaded (``StateError``, ``SpecError``).

The checks, per node (``HEAD_CHECKS``, ``COMPUTE_CHECKS``):

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
- ``shared-rw``: the node writes a unique file to shared storage, reads the file of every
  other node with the right content, then removes its own;
- ``slurm-idle`` (computes): ``sinfo --json`` shows the node IDLE or MIXED and neither
  drained, down nor not responding;
- ``cgroup-cpus`` / ``cgroup-memory`` (computes): a step run from the head as the first cluster
  user with ``srun -c1 --mem=64M`` sees one CPU and an effective memory limit of 64 MiB.

Commands run in three phases (what needs nothing; what needs those results: decoding
credentials, reading the other nodes' files, Slurm steps; clean-up). In a phase each node gets
one SSH session whose commands run in parallel there, and every node at once; sessions to a
node share one multiplexed connection, closed before ``verify`` returns, and a node SSH could
not reach is not tried again.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import re
import secrets
import shlex
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import testinfra

from clusterkit import interrupt, proc
from clusterkit.errors import ClusterkitError, SlurmError
from clusterkit.files import ClusterFiles
from clusterkit.plan import cluster_users, head_name
from clusterkit.providers import provider_class
from clusterkit.slurm import SINFO_ARGV, SlurmNode, parse_sinfo
from clusterkit.slurmconf import path_settings
from clusterkit.spec import ClusterSpec
from clusterkit.state import ClusterState, check_name, load_state, spec_of
from clusterkit.traits import Traits
from clusterkit.trust import ClusterTrust

HEAD_CHECKS: tuple[str, ...] = (
    "munged", "slurmctld", "scontrol-ping", "slurm-conf", "shared-mounted", "shared-rw",
)  # fmt: skip
COMPUTE_CHECKS: tuple[str, ...] = (
    "munged", "slurmd", "munge-from-head", "munge-to-head", "slurm-conf", "shared-mounted",
    "shared-rw", "slurm-idle", "cgroup-cpus", "cgroup-memory",
)  # fmt: skip

HEAD_SLURM_CONF = "/etc/slurm/slurm.conf"
CACHED_SLURM_CONF = f"{path_settings()['SlurmdSpoolDir']}/conf-cache/slurm.conf"
STEP_MEMORY_MB = 64
STEP_MEMORY_BYTES = STEP_MEMORY_MB * 1024 * 1024
READY_STATES = frozenset({"IDLE", "MIXED"})
BAD_FLAGS = frozenset({"DRAIN", "DOWN", "NOT_RESPONDING"})

COMMAND_TIMEOUT = 20  # seconds a command may run on a node before `timeout` kills it
SRUN_TIMEOUT = 30
SRUN_IMMEDIATE = 10  # seconds srun waits for an allocation before giving up
CONNECT_TIMEOUT = 5
CONTROL_PERSIST = 10  # seconds a multiplexing master outlives verify() if close() is missed
SSH_EXTRA_ARGS = "-o BatchMode=yes -o ServerAliveInterval=5 -o ServerAliveCountMax=3"
TIMED_OUT = 124  # exit status of coreutils' timeout when it had to stop the command
NOT_RUN = -1  # an Output's rc when the command gave no result at all; stderr says why

# Runs inside a step: prints "cpus N", then "memory LIMIT" for the step's memory cgroup and
# each ancestor the node can see. /proc/self/cgroup gives the path on the host's hierarchy,
# but a local node sees only its cluster's subtree (bind-mounted over the controller), so the
# longest suffix of that path that exists under the mount is the step's cgroup.
CGROUP_SCRIPT = r"""
echo "cpus $(nproc)"
root=/sys/fs/cgroup/memory file=memory.limit_in_bytes
p=$(sed -n 's/^[0-9]*:memory:\(.*\)$/\1/p' /proc/self/cgroup)
if [ -z "$p" ]; then
    root=/sys/fs/cgroup file=memory.max
    p=$(sed -n 's/^0::\(.*\)$/\1/p' /proc/self/cgroup)
fi
while [ ! -e "$root$p/$file" ] && [ "$p" != "${p#/*/}" ]; do p=/${p#/*/}; done
[ -e "$root$p/$file" ] || { echo "no memory cgroup found for $p under $root" >&2; exit 3; }
while :; do
    [ -r "$root$p/$file" ] && echo "memory $(cat "$root$p/$file")"
    [ -z "$p" ] && break
    p=${p%/*}
done
"""


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

    @property
    def nodes(self) -> tuple[str, ...]:
        return (self.head, *self.computes)


def verify(name: str) -> list[Check]:
    """Run every check on every node of live cluster ``name``; head first, then computes.

    Raises only when the cluster cannot be loaded (``StateError``, ``SpecError``).
    """
    check_name(name)
    state = load_state(name)
    layout = layout_of(state, spec_of(state), provider_class(state.provider).traits)
    trust = ClusterTrust(name, state.dir)
    with Remote.open(trust, layout.nodes) as remote:
        return run_checks(layout, remote)


def failures(checks: Iterable[Check]) -> list[Check]:
    """The checks that failed, in their order."""
    return [c for c in checks if not c.ok]


def layout_of(state: ClusterState, spec: ClusterSpec, traits: Traits) -> Layout:
    """The head, the compute nodes in plan order and what the checks need of the spec."""
    nodes = sorted(state.nodes.values(), key=lambda n: n.index)
    users = cluster_users(spec)
    return Layout(
        head=head_name(spec.name),
        computes=tuple(n.name for n in nodes if n.role == "compute"),
        user=users[0].name if users else "root",
        shared_dir=spec.shared_storage.mount_point,
        head_mounts_shared=traits.head_mounts_shared,
        rendered_conf=ClusterFiles(state.dir).slurm_conf_dir / "slurm.conf",
    )


# --- running commands on nodes ------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    """A ``sh`` script to run on ``node``, stopped after ``timeout`` seconds."""

    node: str
    script: str
    timeout: int = COMMAND_TIMEOUT


Key = tuple[str, str]
"""(the node a probe is about, the probe's name); a probe may run on another node."""


class Remote:
    """Runs batches of commands on a cluster's nodes through testinfra's ssh backend.

    One batch is one SSH session whose commands run in parallel on the node. Sessions to
    one node share one connection (a multiplexing master under a private directory, which
    ``close`` stops), so only the first session to a node pays for the key exchange.
    """

    def __init__(self, trust: ClusterTrust, nodes: Sequence[str], control_dir: Path) -> None:
        self._trust = trust
        self._control_dir = control_dir
        self._nodes = list(nodes)
        self._lost: dict[str, Output] = {}  # node -> why SSH to it failed; not tried again

    @classmethod
    @contextlib.contextmanager
    def open(cls, trust: ClusterTrust, nodes: Sequence[str]) -> Iterator[Remote]:
        """A ``Remote`` whose multiplexing masters and their directory go at the end."""
        control_dir = Path(tempfile.mkdtemp(prefix="ck-verify-"))  # short: a socket path
        remote = cls(trust, nodes, control_dir)
        try:
            yield remote
        finally:
            remote.close()

    def host(self, node: str) -> Any:
        """The testinfra host of ``node`` (testinfra caches it)."""
        return testinfra.get_host(
            f"ssh://{node}",
            ssh_config=str(self._trust.ssh_config),
            ssh_extra_args=SSH_EXTRA_ARGS,
            timeout=CONNECT_TIMEOUT,
            controlpath=str(self._control_dir / node),  # not %C: testinfra %-formats it
            controlpersist=CONTROL_PERSIST,
        )

    def run(self, node: str, script: str) -> Output:
        """Run ``script`` with ``sh`` on ``node``; SSH failures are ``Output`` rc 255."""
        try:
            result = self.host(node).run(f"sh -c {shlex.quote(script)}")
        except RuntimeError as exc:  # testinfra: ssh itself failed (exit 255)
            result = exc.args[0] if exc.args else None
            return Output(255, "", _text(getattr(result, "stderr_bytes", str(exc))))
        except OSError as exc:  # the local shell could not even be started
            return Output(255, "", str(exc))
        return Output(result.rc, _text(result.stdout_bytes), _text(result.stderr_bytes))

    def run_batch(self, node: str, commands: Sequence[Command]) -> list[Output]:
        """Run ``commands`` on ``node`` in one session; their outputs in their order.

        Once SSH to a node has failed, its later batches fail the same way without waiting
        for another connection timeout.
        """
        if node in self._lost:
            return [self._lost[node]] * len(commands)
        marker = f"ck-{secrets.token_hex(4)}"
        session = self.run(node, batch_script(commands, marker))
        found = parse_batch(session.stdout, marker)
        if session.rc == 255 and not found:
            tail = session.stderr.strip().splitlines()[-1:] or ["no message"]
            self._lost[node] = Output(NOT_RUN, "", f"SSH to {node} failed: {tail[0]}")
            return [self._lost[node]] * len(commands)
        missing = Output(NOT_RUN, "", f"no result from {node} (session {session.why()})")
        return [_with_timeout(found.get(i, missing), c) for i, c in enumerate(commands)]

    def close(self) -> None:
        """Stop the multiplexing masters and remove their directory."""
        config = str(self._trust.ssh_config)
        for node in self._nodes:
            if not (self._control_dir / node).exists():
                continue
            socket = ["-o", f"ControlPath={self._control_dir / node}"]
            with contextlib.suppress(ClusterkitError):
                proc.run(["ssh", "-F", config, *socket, "-O", "exit", node], check=False)
        shutil.rmtree(self._control_dir, ignore_errors=True)


def _text(data: object) -> str:
    """Output as text; decoded here so testinfra never runs a remote python to guess how."""
    if isinstance(data, bytes):
        return data.decode("utf-8", errors="replace")
    return str(data)


def _with_timeout(out: Output, command: Command) -> Output:
    if out.rc != TIMED_OUT:
        return out
    return Output(out.rc, out.stdout, f"{out.stderr}timed out after {command.timeout}s")


def batch_script(commands: Sequence[Command], marker: str) -> str:
    """A ``sh`` script running ``commands`` in parallel, each under ``timeout``.

    It prints one line per command, ``MARKER:INDEX:EXIT:STDOUT:STDERR`` with both outputs in
    base64; with a fresh ``marker`` nothing a login script prints passes for a result.
    """
    lines = [
        "d=$(mktemp -d) || exit 1",
        'run() { timeout -k 2 "$2" sh -c "$3" >"$d/$1.out" 2>"$d/$1.err" </dev/null;'
        ' echo $? >"$d/$1.rc"; }',
    ]
    for i, command in enumerate(commands):
        lines.append(f"run {i} {command.timeout} {shlex.quote(command.script)} &")
    lines.append("wait")
    lines.append(f"for i in {' '.join(str(i) for i in range(len(commands)))}; do")
    lines.append(
        f'    printf "{marker}:%s:%s:%s:%s\\n" "$i" "$(cat "$d/$i.rc")"'
        ' "$(base64 -w0 <"$d/$i.out")" "$(base64 -w0 <"$d/$i.err")"'
    )
    lines.append("done")
    lines.append('rm -rf "$d"')
    return "\n".join(lines) + "\n"


def parse_batch(text: str, marker: str) -> dict[int, Output]:
    """The outputs ``batch_script`` printed, by command index; other lines are ignored."""
    pattern = re.compile(re.escape(marker) + r":(\d+):(\d+):([A-Za-z0-9+/=]*):([A-Za-z0-9+/=]*)")
    found = {}
    for line in text.splitlines():
        match = pattern.fullmatch(line.strip())
        if match:
            index, rc, out, err = match.groups()
            with contextlib.suppress(binascii.Error):  # not base64 after all: not a result
                found[int(index)] = Output(int(rc), _b64(out), _b64(err))
    return found


def _b64(data: str) -> str:
    return base64.b64decode(data, validate=True).decode("utf-8", errors="replace")


def run_phase(
    pool: ThreadPoolExecutor, remote: Remote, plan: Mapping[Key, Command]
) -> dict[Key, Output]:
    """Run every command of ``plan``: one session per node, all nodes at once."""
    by_node: dict[str, list[Key]] = {}
    for key, command in plan.items():
        by_node.setdefault(command.node, []).append(key)
    futures = {
        node: pool.submit(remote.run_batch, node, [plan[k] for k in keys])
        for node, keys in by_node.items()
    }
    results: dict[Key, Output] = {}
    for node, keys in by_node.items():
        results.update(zip(keys, futures[node].result(), strict=True))
    return results


# --- the checks ---------------------------------------------------------------------------


def run_checks(layout: Layout, remote: Remote) -> list[Check]:
    """Probe every node in three phases and judge what came back."""
    token = secrets.token_hex(6)
    files = {n: f"{layout.shared_dir}/.ck-verify-{token}-{n}" for n in layout.nodes}
    with interrupt.pool(len(layout.nodes)) as pool:
        first = run_phase(pool, remote, first_plan(layout, files, token))
        second = run_phase(pool, remote, second_plan(layout, files, first))
        third = run_phase(pool, remote, cleanup_plan(layout, files, first))
    return judge_all(layout, {**first, **second, **third}, files, token)


def first_plan(layout: Layout, files: Mapping[str, str], token: str) -> dict[Key, Command]:
    """Commands that need nothing: daemons, Slurm's view, hashes, credentials, writes."""
    head = layout.head
    plan = {
        (head, "slurmctld"): Command(head, "pgrep -x slurmctld"),
        (head, "ping"): Command(head, "scontrol ping"),
        (head, "sinfo"): Command(head, shlex.join(SINFO_ARGV)),
        (head, "conf"): Command(head, f"sha256sum {HEAD_SLURM_CONF}"),
    }
    for node in layout.computes:
        plan[node, "slurmd"] = Command(node, "pgrep -x slurmd")
        plan[node, "conf"] = Command(node, f"sha256sum {CACHED_SLURM_CONF}")
    for node in layout.nodes:
        plan[node, "munged"] = Command(node, "pgrep -x munged")
        plan[node, "munge"] = Command(node, "munge -n")
        if node != head or layout.head_mounts_shared:
            plan[node, "mount"] = Command(node, shlex.join(["mountpoint", layout.shared_dir]))
        content = shlex.quote(_shared_content(token, node))
        plan[node, "write"] = Command(node, f"echo {content} > {shlex.quote(files[node])}")
    return plan


def second_plan(
    layout: Layout, files: Mapping[str, str], first: Mapping[Key, Output]
) -> dict[Key, Command]:
    """Commands that need the first phase: decode credentials, read files, run steps."""
    head = layout.head
    plan = {}
    for node in layout.computes:
        if first[head, "munge"].ok:
            plan[node, "unmunge-head"] = Command(node, _unmunge(first[head, "munge"]))
        if first[node, "munge"].ok:
            plan[node, "unmunge-node"] = Command(head, _unmunge(first[node, "munge"]))
        if first[node, "slurmd"].ok and first[head, "ping"].ok:
            plan[node, "step"] = Command(head, _srun(layout, node), SRUN_TIMEOUT)
    for node in layout.nodes:
        others = [files[o] for o in layout.nodes if o != node and first[o, "write"].ok]
        if others:
            plan[node, "read"] = Command(node, shlex.join(["sha256sum", *others]))
    return plan


def cleanup_plan(
    layout: Layout, files: Mapping[str, str], first: Mapping[Key, Output]
) -> dict[Key, Command]:
    """Each node removes what it wrote to shared storage."""
    return {
        (node, "remove"): Command(node, shlex.join(["rm", "-f", files[node]]))
        for node in layout.nodes
        if first[node, "write"].ok
    }


def _unmunge(credential: Output) -> str:
    return f"printf '%s\\n' {shlex.quote(credential.stdout.strip())} | unmunge"


def _srun(layout: Layout, node: str) -> str:
    """The head-side command running ``CGROUP_SCRIPT`` in a one-CPU, 64 MiB step on ``node``."""
    srun = [
        "srun", f"--immediate={SRUN_IMMEDIATE}", "--chdir=/tmp", "--job-name=ck-verify",
        "--time=1", f"--nodelist={node}", "--nodes=1", "--ntasks=1", "--cpus-per-task=1",
        f"--mem={STEP_MEMORY_MB}M", "sh", "-c", CGROUP_SCRIPT,
    ]  # fmt: skip
    runuser = [] if layout.user == "root" else ["runuser", "-u", layout.user, "--"]
    return "cd /tmp && " + shlex.join([*runuser, *srun])


def _shared_content(token: str, node: str) -> str:
    return f"clusterkit verify {token} from {node}"


def _content_sha256(token: str, node: str) -> str:
    """The digest of the file ``node`` wrote (``echo`` adds the newline)."""
    return hashlib.sha256((_shared_content(token, node) + "\n").encode()).hexdigest()


# --- judging what came back (pure) --------------------------------------------------------


def judge_all(
    layout: Layout, probes: Mapping[Key, Output], files: Mapping[str, str], token: str
) -> list[Check]:
    """Every check from what the probes gave, head first, then computes in plan order."""
    checks = _head_checks(layout, probes) + _compute_checks(layout, probes)
    checks += _every_node_checks(layout, probes, files, token)
    return sorted(checks, key=lambda c: _order(layout, c))


def _head_checks(layout: Layout, probes: Mapping[Key, Output]) -> list[Check]:
    head = layout.head
    return [
        judge_daemon(head, "slurmctld", probes[head, "slurmctld"]),
        judge_ping(head, probes[head, "ping"]),
        judge_head_conf(head, probes[head, "conf"], _local_sha256(layout.rendered_conf)),
    ]


def _compute_checks(layout: Layout, probes: Mapping[Key, Output]) -> list[Check]:
    head = layout.head
    checks: list[Check] = []
    slurm_nodes = _sinfo_nodes(probes[head, "sinfo"])
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
            *judge_step(node, probes.get((node, "step")), probes[node, "slurmd"]),
        ]
    return checks


def _every_node_checks(
    layout: Layout, probes: Mapping[Key, Output], files: Mapping[str, str], token: str
) -> list[Check]:
    checks: list[Check] = []
    for node in layout.nodes:
        expected = {
            files[o]: _content_sha256(token, o)
            for o in layout.nodes
            if o != node and probes[o, "write"].ok
        }
        checks += [
            judge_daemon(node, "munged", probes[node, "munged"]),
            judge_shared_rw(node, probes, expected),
        ]
        if (node, "mount") in probes:
            checks.append(judge_mounted(node, layout.shared_dir, probes[node, "mount"]))
    return checks


def _order(layout: Layout, check: Check) -> tuple[int, int]:
    names = HEAD_CHECKS if check.node == layout.head else COMPUTE_CHECKS
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
    """The node wrote its file, read every other node's with the right content, removed its own."""
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
    """Slurm has the node IDLE or MIXED, not drained, down or unresponsive."""
    if isinstance(slurm_nodes, str):
        return Check(node, "slurm-idle", False, slurm_nodes)
    found = next((n for n in slurm_nodes if n.name == node), None)
    if found is None:
        return Check(node, "slurm-idle", False, f"Slurm has no node {node}")
    ok = node_ready(found)
    reason = f" ({found.reason})" if found.reason else ""
    return Check(node, "slurm-idle", ok, f"Slurm says {found.display_state}{reason}")


def node_ready(node: SlurmNode) -> bool:
    """IDLE or MIXED without DRAIN, DOWN or NOT_RESPONDING: ready to take jobs."""
    return node.state in READY_STATES and not BAD_FLAGS.intersection(node.flags)


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


def judge_step(node: str, out: Output | None, slurmd: Output) -> list[Check]:
    """``cgroup-cpus`` and ``cgroup-memory`` from the step run on ``node``."""
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
