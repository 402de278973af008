"""The library's front door for making and removing clusters: ``up`` and ``down`` (with
``down_all``, ``left_behind`` and ``orphans``); looking at one is ``clusterinfo``.

Nothing here prints. Long operations report through a ``Progress`` the caller passes in
(the CLI draws it; tests pass nothing). State is saved after every step, so ``down`` always
knows what ``up`` made, and ``down`` also finds resources by name where state is missing.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from clusterkit import costs, interrupt, proc, report
from clusterkit.accounting import new_password
from clusterkit.boot import node_boots, trusted_nodes, wait_for_boot
from clusterkit.errors import ClusterkitError, ConfigureError, SSHError, StateError
from clusterkit.files import ClusterFiles
from clusterkit.headfiles import notify_targets, render_cluster_files
from clusterkit.nodetools import notify
from clusterkit.plan import NodePlan, head_name, plan_nodes, static_nodes
from clusterkit.playbook import ansible_vars, inventory, run_playbook
from clusterkit.progress import NoProgress, Progress
from clusterkit.providers import provider_class, provider_classes
from clusterkit.providers.base import DryRun, Provider
from clusterkit.spec import DEFAULT_PROVIDER, ClusterSpec
from clusterkit.sshpool import NodeUnreachable, Pool
from clusterkit.state import (
    ClusterState,
    NodeState,
    atomic_write,
    check_name,
    cluster_dir,
    cluster_lock,
    clusters_dir,
    list_states,
    load_state,
    now,
    remove_cluster_dir,
    salvage_state,
    spec_of,
    try_load_state,
)
from clusterkit.trust import ClusterTrust, TrustedNode, keygen, sign_host_key
from clusterkit.verify import failures, verify, wait_until_registered

SSH_WAIT_SECONDS = Provider.ssh_wait_seconds  # a provider may need longer


@contextlib.contextmanager
def _logged_step(state: ClusterState, progress: Progress, title: str) -> Iterator[None]:
    """Run one step under ``progress`` and append its outcome and duration to the log."""
    start = time.monotonic()
    with progress.step(title):
        try:
            yield
        except BaseException as exc:
            if isinstance(exc, interrupt.Interrupted) and exc.step is None:
                exc.step = title  # the step's own work was stopped, not what follows it
            log(state.dir, f"{title}: failed after {time.monotonic() - start:.2f}s: {exc!r}")
            raise
    log(state.dir, f"{title}: done in {time.monotonic() - start:.2f}s")


def log(root: Path, line: str) -> None:
    (root / "logs").mkdir(parents=True, exist_ok=True)
    with open(root / "logs" / "clusterkit.log", "a", encoding="utf-8") as fh:
        fh.write(f"{now()} {line}\n")


# ---------------------------------------------------------------------------------------------
# up


def dry_run(spec: ClusterSpec) -> DryRun:
    """What ``up`` would create for ``spec`` and its hourly cost; changes nothing."""
    return provider_class(spec.provider).dry_run(spec)


def check_prerequisites(spec: ClusterSpec) -> None:
    """Raise ``PrerequisiteError`` if this machine cannot run ``spec``'s provider, and
    ``StateError`` if its name belongs to a cluster of another ``CLUSTERKIT_HOME``."""
    cls = provider_class(spec.provider)
    cls.check_prerequisites()
    cls.check_owner(spec.name, cluster_dir(spec.name), creating=True)


def up(spec: ClusterSpec, progress: Progress | None = None, configure: bool = True) -> ClusterState:
    """Create the cluster ``spec`` describes, or reconcile a live one towards it.

    With ``configure`` (the default) the result is a working Slurm cluster: the head is
    configured through Ansible and compute nodes boot from their boot script. Without it,
    nodes are bare (SSH only), for configuration by other means.
    """
    progress = progress or NoProgress()
    cls = provider_class(spec.provider)
    cls.check_spec(spec, configure)
    check_prerequisites(spec)
    with cluster_lock(spec.name):
        state = _begin(spec)
        provider = cls(state, spec)
        trust = ClusterTrust(spec.name, state.dir)
        pool = Pool(trust)  # one SSH connection per node for the waits and verify
        try:
            # Before anything is made: a secret that cannot be read stops `up` here.
            _database_password(spec, provider, ClusterFiles(state.dir))
            with _logged_step(state, progress, "network"):
                provider.prepare()
                state.mark("network")
            with _logged_step(state, progress, "keys"):
                trusted = _make_keys(spec, provider, trust)
                state.mark("keys")
            with _logged_step(state, progress, "nodes"):
                _converge_nodes(spec, state, provider, trust, trusted, configure=configure)
                provider.start_services()
                if configure:  # only SSH needs them; a bare cloud cluster is not waited for
                    _record_public_addresses(state, provider)
                state.mark("nodes")
            # After the nodes: a provider may assign addresses only at launch (aws).
            trusted = _with_launch_addresses(state, trust, trusted)
            with _logged_step(state, progress, "render"):
                render_cluster_files(spec, state, trusted, provider)
                state.mark("render")
            if configure or provider.ssh_when_bare:
                with _logged_step(state, progress, "ssh"):
                    static = [n.name for n in static_nodes(spec)]
                    wait_for_ssh(pool, static, provider.ssh_wait_seconds, provider.ssh_hint())
            if configure:
                _configure(spec, state, trust, provider, progress, pool=pool)
                with _logged_step(state, progress, "verify"):
                    _verify(spec, pool)
                    state.mark("verify")
            state.status = "ready"
            state.mark("ready")
        except BaseException:
            state.status = "failed"
            state.save()
            raise
        finally:
            pool.close()
    return state


def _begin(spec: ClusterSpec) -> ClusterState:
    state = try_load_state(spec.name)
    if state is None:
        if (cluster_dir(spec.name) / "state.json").exists():
            raise StateError(
                f"cluster {spec.name!r} has unreadable state; run `clusterkit down {spec.name}`"
            )
        state = ClusterState(name=spec.name, provider=spec.provider)
    elif state.provider != spec.provider:
        raise StateError(
            f"cluster {spec.name!r} exists on provider {state.provider!r}, not {spec.provider!r}"
        )
    state.status = "creating"
    state.spec = spec.model_dump(mode="json")
    state.save()
    return state


def _make_keys(spec: ClusterSpec, provider: Provider, trust: ClusterTrust) -> list[TrustedNode]:
    """The user key and a host key per planned node; then known_hosts and ssh_config.

    Keys are made for every node the cluster may ever have, so known_hosts never changes
    while the cluster lives and a node powered up later is trusted from its first boot.
    """
    trust.ensure_user_key()
    files = ClusterFiles(trust.root)
    keygen(files.node_key, f"clusterkit-{spec.name}-node")
    for user in spec.users:
        keygen(files.user_key(user.name), f"{user.name}@{spec.name}")
    if not files.munge_key.exists():
        atomic_write(files.munge_key, os.urandom(1024), mode=0o400)  # fresh for each cluster
    trust.ensure_host_ca()

    def host_key(node: NodePlan, _: object) -> None:
        key = files.host_key(node.name)
        keygen(key, node.name)
        address = provider.address(node)
        principals = [node.name, *([address] if address else [])]
        sign_host_key(trust.host_ca, key, f"{spec.name}:{node.name}", principals)

    interrupt.parallel(host_key, plan_nodes(spec), 8)
    trusted = trusted_nodes(spec, provider.address, trust)
    trust.write(trusted)
    return trusted


def _database_password(spec: ClusterSpec, provider: Provider, files: ClusterFiles) -> None:
    """The password slurmdbd logs in with: made once for the head's own database; read from
    the spec's secret at every ``up`` for an external one (the secret may have changed)."""
    if not spec.accounting.enabled:
        return
    external = spec.accounting.database
    if external is None:
        if not files.db_password.exists():
            atomic_write(files.db_password, new_password(), mode=0o400)
        return
    field = "accounting.database.password_secret"
    atomic_write(
        files.db_password, provider.read_secret(external.password_secret, field), mode=0o400
    )


def _record_public_addresses(state: ClusterState, provider: Provider) -> None:
    """Record where this machine dials each node the provider says it must (aws: the head's
    public IP); a node that has one recorded keeps it."""
    for node in list(state.nodes.values()):
        if node.public_address is None:
            public = provider.public_address(node)
            if public is not None:
                state.nodes[node.name] = node.model_copy(update={"public_address": public})
                state.save()


def _with_launch_addresses(
    state: ClusterState, trust: ClusterTrust, trusted: list[TrustedNode]
) -> list[TrustedNode]:
    """Addresses assigned at launch (aws), and public ones, join known_hosts and ssh_config."""
    launched = [
        replace(t, address=t.address or n.address, public_address=n.public_address)
        if (n := state.nodes.get(t.name)) is not None
        else t
        for t in trusted
    ]
    if launched != trusted:
        trust.write(launched)
    return launched


def _configure(
    spec: ClusterSpec,
    state: ClusterState,
    trust: ClusterTrust,
    provider: Provider,
    progress: Progress,
    *,
    pool: Pool,
) -> None:
    with _logged_step(state, progress, "configure"):
        run_playbook(
            state,
            inventory(state, trust),
            ansible_vars(spec, state, trust, provider.traits),
            limit=head_name(spec.name),
        )
        state.mark("configure")
    with _logged_step(state, progress, "boot"):
        computes = [n.name for n in static_nodes(spec) if n.role == "compute"]
        wait_for_boot(pool, computes)
        state.mark("boot")


def _verify(spec: ClusterSpec, pool: Pool) -> None:
    computes = [n.name for n in static_nodes(spec) if n.role == "compute"]
    wait_until_registered(pool, head_name(spec.name), computes)  # what stays is named below
    failed = failures(verify(spec.name, pool))
    if failed:
        raise ConfigureError(
            "cluster verification failed: "
            + "; ".join(f"{c.node} {c.name}: {c.detail}" for c in failed)
            + f" (details: clusterkit verify {spec.name})"
        )


def _converge_nodes(
    spec: ClusterSpec,
    state: ClusterState,
    provider: Provider,
    trust: ClusterTrust,
    trusted: list[TrustedNode],
    *,
    configure: bool = True,
) -> None:
    """Make the running nodes exactly the planned static ones; keep healthy ones as they are."""
    wanted = {n.name: n for n in static_nodes(spec)}
    for name in [n for n in state.nodes if n not in wanted]:
        provider.terminate(state.nodes[name])
        del state.nodes[name]
        state.save()
    stale = []
    for node in wanted.values():
        current = state.nodes.get(node.name)
        expected = provider.address(node)  # None: the provider assigns it at launch
        if current and expected in (None, current.address) and provider.running(current):
            continue
        _record_launching(state, provider, node, current)
        stale.append(node)
    boots = node_boots(spec, trust, trusted, stale, provider.traits, configure=configure)
    pending = [(node, boots[node.name]) for node in stale]
    # Launched together where the provider's API allows it; each is recorded as it comes.
    for launched in provider.launch_all(pending):
        state.nodes[launched.name] = launched
        state.save()


def _record_launching(
    state: ClusterState, provider: Provider, node: NodePlan, current: NodeState | None
) -> None:
    # Record the node before launching, so a crash mid-launch leaves a trace for `down`.
    stale = current or NodeState(name=node.name, role=node.role, index=node.index)
    provider.terminate(stale)
    state.nodes[node.name] = stale.model_copy(update={"status": "launching", "index": node.index})
    state.save()


def wait_for_ssh(
    pool: Pool, nodes: list[str], timeout: float = SSH_WAIT_SECONDS, hint: str = ""
) -> None:
    """Return once every node answers a real SSH login with the cluster's trust (its own
    host keys only), through ``pool``, whose connections stay open for what follows;
    ``hint`` (what to check) ends the error otherwise."""

    def reach(node: str, stop: threading.Event) -> str | None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            try:
                rc, _, err = pool.run(node, ["true"], timeout=10)
                if rc == 0:
                    return None
                last = f"`true` exited {rc}: " + " | ".join(err.strip().splitlines()[-1:])
            except NodeUnreachable as exc:
                last = exc.reason
            if stop.wait(0.1):
                break
        return f"{node}: {last or 'no answer'}"

    failures = [f for f in interrupt.parallel(reach, nodes) if f]
    if failures:
        raise SSHError(
            f"SSH did not come up within {timeout:.0f}s: "
            + "; ".join(failures)
            + (f" ({hint})" if hint else "")
        )


# ---------------------------------------------------------------------------------------------
# down


def left_behind(name: str) -> list[str]:
    """What of cluster ``name`` exists, as its state records it (``up`` saves the state
    before anything is created), for a user told to remove it; empty when nothing does."""
    state = try_load_state(name)
    if state is None:
        return [f"state in {cluster_dir(name)}"] if cluster_dir(name).exists() else []
    left = []
    if state.network:
        subnet = state.network.get("subnet")
        left.append(f"network {subnet}" if subnet else "network resources")
    if state.nodes:
        left.append(f"{len(state.nodes)} node(s)")
    return [*left, f"state in {state.dir}"]


def down(name: str, progress: Progress | None = None) -> list[str]:
    """Destroy everything cluster ``name`` owns; works from any partial state. Returns what
    was removed. Raises ``StateError`` when nothing of that name exists."""
    check_name(name)
    progress = progress or NoProgress()
    with cluster_lock(name):
        state = try_load_state(name) or salvage_state(name)
        kind = state.provider if state else DEFAULT_PROVIDER
        cls = provider_class(kind)
        has_dir = cluster_dir(name).exists()
        if state is None and not has_dir and name not in _discover(cls):
            raise StateError(f"no cluster named {name!r} (see `clusterkit list`)")
        cls.check_prerequisites()
        cls.check_owner(name, cluster_dir(name), creating=False)
        if state is not None:
            _keep_ledger(name, progress)
            state.status = "deleting"
            state.save()
        with progress.step(f"destroy {name}"):
            ClusterTrust(name, cluster_dir(name)).close_shared()
            removed = cls.destroy(name, state)
            remove_cluster_dir(name)
        (clusters_dir() / f".{name}.lock").unlink(missing_ok=True)
    return removed + ([f"dir {cluster_dir(name)}"] if has_dir else [])


def _keep_ledger(name: str, progress: Progress) -> None:
    """Save what the cluster cost before its database goes; nothing here stops ``down``."""
    try:
        with progress.step("keep the cost ledger and its report"):
            final = costs.keep(name)
            if final is not None:
                report.keep(final)
    except (ClusterkitError, OSError, ValueError) as exc:
        progress.warn(f"no cost ledger kept of {name}: {exc}")
        return
    if final is not None:
        for error in _tell_mission(name, final):
            progress.warn(f"the mission message of {name} was not sent: {error}")


def _tell_mission(name: str, final: costs.Inputs) -> list[str]:
    """The ``mission`` message to the spec's targets: webhook and SNS from here, the command
    on the head (where every other message's command runs)."""
    state = load_state(name)
    spec = spec_of(state)
    targets = notify.Targets.from_dict(notify_targets(spec))
    if targets is None or "mission" not in targets.kinds:
        return []
    msg = notify.message("mission", name, **costs.mission_summary(final))
    errors = notify.deliver(replace(targets, command=None), msg)
    if targets.command:
        trust = ClusterTrust(state.name, state.dir)
        argv = trust.ssh_argv(head_name(name), [targets.command])
        try:
            proc.run(argv, input=json.dumps(msg), timeout=notify.TIMEOUT_SECONDS + 5)
        except ClusterkitError as exc:
            errors.append(f"command: {exc}")
    return errors


def down_all(progress: Progress | None = None) -> dict[str, list[str]]:
    """``down`` every cluster of this ``CLUSTERKIT_HOME``, readable state or not.

    Clusters of other homes on the same machine are left alone; resources whose state is
    gone altogether are listed by ``orphans()`` and removed with ``down NAME``.
    """
    names = {s.name for s in list_states()}
    if clusters_dir().is_dir():
        names |= {p.name for p in clusters_dir().iterdir() if p.is_dir()}
    return {name: down(name, progress) for name in sorted(names)}


def orphans() -> list[str]:
    """Names of clusters with resources on this machine but no state in this home."""
    known = set()
    if clusters_dir().is_dir():
        known = {p.name for p in clusters_dir().iterdir() if p.is_dir()}
    found = {n for cls in provider_classes() if cls.lists_orphans for n in _discover(cls)}
    return sorted(n for n in found if n not in known)


def _discover(cls: type[Provider]) -> list[str]:
    try:
        return cls.discover()
    except ClusterkitError:
        return []
