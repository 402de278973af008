"""``clusterkit verify NAME``: check over SSH that a live cluster really works.

The checks themselves, and judging what the nodes said, are in ``checks.py``; this module
runs their commands. Commands run in three phases (what needs nothing; what needs those
results: decoding credentials, reading the other nodes' files, Slurm steps; clean-up). In a
phase each node runs its commands in parallel in one SSH session, and every node at once.
Sessions go through ``sshpool.Pool``: one paramiko connection per node with the cluster's own
trust (its known_hosts under each node's alias, no other key accepted; its user key; its
ssh_config's addresses and ProxyCommand), closed before ``verify`` returns unless the caller
lent the pool (``up`` does). A node SSH could not reach is not tried again: its checks fail
saying why, so ``verify`` raises only when the cluster itself cannot be loaded
(``StateError``, ``SpecError``).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import re
import secrets
import shlex
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from clusterkit import interrupt
from clusterkit.billing import has_budgets
from clusterkit.checks import (
    CACHED_SLURM_CONF,
    COMPUTE_CHECKS,
    HEAD_CHECKS,
    HEAD_SLURM_CONF,
    NOT_RUN,
    STEP_MEMORY_MB,
    Check,
    Key,
    Layout,
    Output,
    busy_nodes,
    failures,
    judge_all,
    node_busy,
    node_ready,
    shared_content,
    shared_peers,
    step_jobs,
)
from clusterkit.errors import SlurmError
from clusterkit.files import ClusterFiles
from clusterkit.plan import cluster_users, head_name
from clusterkit.providers import provider_class
from clusterkit.slurm import SINFO_ARGV, SlurmNode, parse_sinfo
from clusterkit.spec import ClusterSpec
from clusterkit.sshpool import CommandTimeout, NodeUnreachable, Pool, PoolError
from clusterkit.state import ClusterState, check_name, load_state, spec_of
from clusterkit.traits import Traits
from clusterkit.trust import ClusterTrust

# What other modules import from here (the checks' names and results live in checks.py).
__all__ = [
    "COMPUTE_CHECKS",
    "HEAD_CHECKS",
    "Check",
    "Command",
    "Remote",
    "failures",
    "layout_of",
    "registering",
    "run_checks",
    "verify",
    "wait_until_registered",
]

COMMAND_TIMEOUT = 20  # seconds a command may run on a node before `timeout` kills it
SRUN_TIMEOUT = 30
REGISTER_WAIT_SECONDS = 60  # longest wait for repaired nodes to be idle in Slurm again
SRUN_IMMEDIATE = 10  # seconds srun waits for an allocation before giving up
SESSION_SLACK = 10  # seconds a session may outlast its slowest command (`timeout -k 2`, ssh)
TIMED_OUT = 124  # exit status of coreutils' timeout when it had to stop the command

# Runs inside a step: prints "cpus N", then "memory LIMIT" for the step's memory cgroup and
# each ancestor the node can see. /proc/self/cgroup gives the path on the host's hierarchy,
# but a local node sees only its cluster's subtree (bind-mounted over the controller), so the
# longest suffix of that path that exists under the mount is the step's cgroup.
CGROUP_SCRIPT = r"""
echo "job $SLURM_JOB_ID"
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


# Run on the head as root with the two users of two tenants: the first one's job holds a CPU
# (until the second's has run: then it is cancelled); the second must not see it, and its
# own job, started meanwhile, must land on another node.
# A budget that holds either job (the user's choice, not a fault) ends the check early with
# a line ``held USER REASON``.
ISOLATION_SCRIPT = r"""
cd /tmp
first=$(mktemp) second=$(mktemp)
step() { runuser -u "$1" -- srun --immediate=10 --job-name=ck-verify-tenant --time=1 \
    --nodes=1 --ntasks=1 --cpus-per-task=1 --mem=64M sh -c "hostname; sleep $2"; }
held() {
    reason=$(squeue -h -u "$1" -n ck-verify-tenant -t PD -o %r | grep -m1 GrpBillingMinutes) \
        || return 1
    echo "held $1 $reason"; scancel -n ck-verify-tenant; wait; rm -f "$first" "$second"
}
step "$FIRST" 60 >"$first" 2>&1 &
i=0
until [ -n "$(squeue -h -u "$FIRST" -t R -n ck-verify-tenant -o %i)" ] || [ $i -ge 40 ]; do
    held "$FIRST" && exit 0
    sleep 0.25; i=$((i + 1))
done
echo "seen $(runuser -u "$SECOND" -- squeue -h -u "$FIRST" -o %i | wc -l)"
step "$SECOND" 0 >"$second" 2>&1 &
last=$!
while kill -0 "$last" 2>/dev/null; do
    held "$SECOND" && exit 0
    sleep 0.25
done
for i in $(seq 40); do [ -s "$first" ] && break; sleep 0.25; done  # its host, once printed
scancel -u "$FIRST" -n ck-verify-tenant  # it held its node until the second step had run
wait
echo "first $(head -n1 "$first")"
echo "second $(head -n1 "$second")"
rm -f "$first" "$second"
"""
# sacct until it lists every one of the jobs (slurmctld sends records to slurmdbd at once, but
# not synchronously), at most 10 s.
SACCT_SCRIPT = r"""
for i in $(seq 40); do
    n=$(sacct -n -X -P -j "$JOBS" -o jobid | sort -u | wc -l)
    [ "$n" -ge "$COUNT" ] && break
    sleep 0.25
done
sacct -n -X -P -j "$JOBS" -o jobid,state,user
"""


SACCT_ANSWERS = "sacct -n -X -P -S now-10minutes -o jobid,state"


def verify(name: str, pool: Pool | None = None) -> list[Check]:
    """Run every check on every node of live cluster ``name``; head first, then computes.

    Commands go through ``pool`` when given (left open), else through a pool of its own.
    Raises only when the cluster cannot be loaded (``StateError``, ``SpecError``).
    """
    check_name(name)
    state = load_state(name)
    layout = layout_of(state, spec_of(state), provider_class(state.provider).traits)
    trust = ClusterTrust(name, state.dir)
    with Remote.open(trust, pool) as remote:
        return run_checks(layout, remote)


def registering(nodes: Sequence[SlurmNode], wanted: Sequence[str]) -> list[str]:
    """The ``wanted`` nodes Slurm does not have ready yet for a reason that passes on its own:
    unknown to it, UNKNOWN (a controller that just started), DOWN or NOT_RESPONDING without a
    drain (a slurmd that came back registers, and ReturnToService=2 returns the node)."""
    by_name = {n.name: n for n in nodes}
    waiting = []
    for name in wanted:
        node = by_name.get(name)
        if node is None or not (node_ready(node) or node_busy(node) or "DRAIN" in node.flags):
            waiting.append(name)
    return waiting


def wait_until_registered(
    pool: Pool, head: str, computes: Sequence[str], timeout: float = REGISTER_WAIT_SECONDS
) -> list[str]:
    """Wait, at most ``timeout`` seconds, until Slurm has every one of ``computes`` ready or
    settled (an operator's drain does not pass by waiting); return those still registering.

    After a repair (a restarted slurmctld, a replaced node) Slurm needs a few seconds before
    its nodes are idle again: verifying at once would fail on what is about to pass."""
    deadline = time.monotonic() + timeout
    waiting = list(computes)
    while True:
        try:
            rc, out, _ = pool.run(head, SINFO_ARGV, timeout=COMMAND_TIMEOUT)
            waiting = registering(parse_sinfo(out), computes) if rc == 0 else waiting
        except (PoolError, SlurmError):
            pass  # the controller starting: asked again until the deadline
        if not waiting or time.monotonic() >= deadline:
            return waiting
        time.sleep(0.5)


def layout_of(state: ClusterState, spec: ClusterSpec, traits: Traits) -> Layout:
    """The head, the compute nodes in plan order and what the checks need of the spec."""
    nodes = sorted(state.nodes.values(), key=lambda n: n.index)
    users = cluster_users(spec)
    # A budget counts verification's steps as work, and a spent one would hold them: root
    # belongs to no tenant and is under no budget (Slurm sets the same cgroup limits).
    as_root = not users or has_budgets(spec)
    return Layout(
        head=head_name(spec.name),
        computes=tuple(n.name for n in nodes if n.role == "compute"),
        user="root" if as_root else users[0].name,
        shared_dir=spec.shared_storage.mount_point,
        head_mounts_shared=traits.head_mounts_shared,
        rendered_conf=ClusterFiles(state.dir).slurm_conf_dir / "slurm.conf",
        accounting=spec.accounting.enabled,
        slurm_cluster=spec.slurm_cluster_name,
        tenant_users=tuple(t.users[0] for t in spec.tenants),
    )


# --- running commands on nodes ------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    """A ``sh`` script to run on ``node``, stopped after ``timeout`` seconds."""

    node: str
    script: str
    timeout: int = COMMAND_TIMEOUT


class Remote:
    """Runs batches of commands on a cluster's nodes through an SSH ``Pool``.

    One batch is one SSH session (a channel of the node's pooled connection) whose commands
    run in parallel on the node.
    """

    def __init__(self, pool: Pool) -> None:
        self._pool = pool
        self._lost: dict[str, Output] = {}  # node -> why SSH to it failed; not tried again

    @classmethod
    @contextlib.contextmanager
    def open(cls, trust: ClusterTrust, pool: Pool | None = None) -> Iterator[Remote]:
        """A ``Remote`` over ``pool``, or over a pool of its own that is closed at the end."""
        if pool is not None:
            yield cls(pool)
            return
        with Pool(trust) as own:
            yield cls(own)

    def run_batch(self, node: str, commands: Sequence[Command]) -> list[Output]:
        """Run ``commands`` on ``node`` in one session; their outputs in their order.

        Once SSH to a node has failed, its later batches fail the same way without waiting
        for another connection timeout.
        """
        if node in self._lost:
            return [self._lost[node]] * len(commands)
        marker = f"ck-{secrets.token_hex(4)}"
        script = batch_script(commands, marker)
        limit = max(c.timeout for c in commands) + SESSION_SLACK
        try:
            rc, stdout, stderr = self._pool.run(node, ["sh", "-c", script], limit)
        except CommandTimeout as exc:
            missing = Output(NOT_RUN, "", f"no result from {node} ({exc.reason})")
            return [missing] * len(commands)
        except NodeUnreachable as exc:
            self._lost[node] = Output(NOT_RUN, "", str(exc))
            return [self._lost[node]] * len(commands)
        found = parse_batch(stdout, marker)
        session = Output(rc, stdout, stderr)
        missing = Output(NOT_RUN, "", f"no result from {node} (session {session.why()})")
        return [_with_timeout(found.get(i, missing), c) for i, c in enumerate(commands)]


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


# --- what runs where ----------------------------------------------------------------------


def run_checks(layout: Layout, remote: Remote) -> list[Check]:
    """Probe every node in three phases and judge what came back."""
    token = secrets.token_hex(6)
    files = {n: f"{layout.shared_dir}/.ck-verify-{token}-{n}" for n in layout.nodes}
    with interrupt.pool(len(layout.nodes)) as pool:
        first = run_phase(pool, remote, first_plan(layout, files, token))
        second = run_phase(pool, remote, second_plan(layout, files, first))
        third = run_phase(pool, remote, cleanup_plan(layout, files, first, second))
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
    if layout.accounting:
        plan[head, "slurmdbd"] = Command(head, "pgrep -x slurmdbd")
        plan[head, "clusters"] = Command(head, "sacctmgr -n -P list cluster format=cluster")
    for node in layout.computes:
        plan[node, "slurmd"] = Command(node, "pgrep -x slurmd")
        plan[node, "conf"] = Command(node, f"sha256sum {CACHED_SLURM_CONF}")
    for node in layout.nodes:
        plan[node, "munged"] = Command(node, "pgrep -x munged")
        plan[node, "munge"] = Command(node, "munge -n")
        if node != head or layout.head_mounts_shared:
            plan[node, "mount"] = Command(node, shlex.join(["mountpoint", layout.shared_dir]))
        content = shlex.quote(shared_content(token, node))
        plan[node, "write"] = Command(node, f"echo {content} > {shlex.quote(files[node])}")
    return plan


def second_plan(
    layout: Layout, files: Mapping[str, str], first: Mapping[Key, Output]
) -> dict[Key, Command]:
    """Commands that need the first phase: decode credentials, read files, run steps."""
    head = layout.head
    plan = {}
    busy = busy_nodes(first[head, "sinfo"])
    for node in layout.computes:
        if first[head, "munge"].ok:
            plan[node, "unmunge-head"] = Command(node, _unmunge(first[head, "munge"]))
        if first[node, "munge"].ok:
            plan[node, "unmunge-node"] = Command(head, _unmunge(first[node, "munge"]))
        if first[node, "slurmd"].ok and first[head, "ping"].ok and node not in busy:
            plan[node, "step"] = Command(head, _srun(layout, node), SRUN_TIMEOUT)
    for node in layout.nodes:
        others = [files[o] for o in shared_peers(layout.nodes, node) if first[o, "write"].ok]
        if others:
            plan[node, "read"] = Command(node, shlex.join(["sha256sum", *others]))
    return plan


def cleanup_plan(
    layout: Layout,
    files: Mapping[str, str],
    first: Mapping[Key, Output],
    second: Mapping[Key, Output] | None = None,
) -> dict[Key, Command]:
    """Each node removes what it wrote to shared storage; once the steps are done, the head
    looks for them in accounting and puts two tenants' jobs side by side."""
    plan = {
        (node, "remove"): Command(node, shlex.join(["rm", "-f", files[node]]))
        for node in layout.nodes
        if first[node, "write"].ok
    }
    head, ping = layout.head, first[layout.head, "ping"].ok
    jobs = step_jobs(layout, second or {})
    if layout.accounting and layout.computes:
        # No step ran (their nodes' checks say why): sacct must answer all the same.
        env = f"JOBS={','.join(jobs)} COUNT={len(jobs)}"
        script = f"{env}; export JOBS COUNT\n{SACCT_SCRIPT}" if jobs else SACCT_ANSWERS
        plan[head, "sacct"] = Command(head, script)
    if layout.checks_isolation and ping:
        first_user, second_user = (shlex.quote(u) for u in layout.tenant_users[:2])
        env = f"FIRST={first_user} SECOND={second_user}"
        plan[head, "tenants"] = Command(head, f"{env}\n{ISOLATION_SCRIPT}", SRUN_TIMEOUT)
    return plan


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
