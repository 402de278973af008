"""clusterkit.verify and clusterkit.checks without a cluster: batches, parsing, judging and
result aggregation.

Nothing here fakes SSH: batch scripts run in a local ``sh``, and the judges get
``Output`` values shaped like what the node commands print (unmunge's text as captured on a
live cluster, ``sinfo --json`` from ``tests/unit/data``).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from clusterkit.checks import (
    CACHED_SLURM_CONF,
    COMPUTE_CHECKS,
    HEAD_CHECKS,
    NOT_RUN,
    STEP_MEMORY_BYTES,
    Check,
    Key,
    Layout,
    Output,
    failures,
    judge_all,
    judge_conf,
    judge_cpus,
    judge_daemon,
    judge_head_conf,
    judge_idle,
    judge_memory,
    judge_munge,
    judge_ping,
    judge_shared_rw,
    judge_step,
    parse_sha256sum,
    parse_step,
    unmunge_host,
    unmunge_status,
)
from clusterkit.providers.local.provider import LocalProvider
from clusterkit.slurm import SlurmNode, parse_sinfo
from clusterkit.spec import parse_spec
from clusterkit.sshpool import NodeUnreachable, Pool
from clusterkit.state import ClusterState, NodeState
from clusterkit.trust import ClusterTrust
from clusterkit.verify import (
    Command,
    Remote,
    batch_script,
    cleanup_plan,
    first_plan,
    layout_of,
    parse_batch,
    registering,
    second_plan,
)

DATA = Path(__file__).parent / "data"
UNMUNGE_OK = """\
STATUS:          Success (0)
ENCODE_HOST:     vfy-head (10.250.1.2)
ENCODE_TIME:     2026-11-22 20:18:34 +0000 (1795378714)
DECODE_TIME:     2026-11-22 20:18:34 +0000 (1795378714)
TTL:             300
CIPHER:          aes128 (4)
MAC:             sha256 (5)
ZIP:             none (0)
UID:             root (0)
GID:             root (0)
LENGTH:          0

"""
UNMUNGE_BAD_KEY = "STATUS:          Invalid credential (15)\n"
V1_UNLIMITED = 9223372036854771712
RUN_ID = "0123456789ab"


def ok(stdout: str = "") -> Output:
    return Output(0, stdout, "")


def sha_line(digest: str, path: str) -> str:
    return f"{digest}  {path}\n"


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# --- batches: run for real in a local sh --------------------------------------------------


MARKER = "ck-5eed"


def run_locally(script: str) -> str:
    done = subprocess.run(
        ["sh", "-c", script], capture_output=True, text=True, timeout=30, check=False
    )
    return done.stdout


def test_a_batch_returns_each_commands_exit_status_and_outputs() -> None:
    commands = [
        Command("n", "echo out; echo err >&2"),
        Command("n", "printf 'a:b\\nc'; exit 3"),
        Command("n", "no-such-command-anywhere"),
        Command("n", "cat"),  # stdin is /dev/null: returns at once
    ]
    found = parse_batch(run_locally(batch_script(commands, MARKER)), MARKER)
    assert found[0] == Output(0, "out\n", "err\n")
    assert found[1] == Output(3, "a:b\nc", "")
    assert found[2].rc == 127 and "not found" in found[2].stderr
    assert found[3] == Output(0, "", "")


def test_batch_commands_run_in_parallel_each_under_its_timeout() -> None:
    commands = [Command("n", "sleep 5", timeout=1), Command("n", "sleep 1; echo late")]
    found = parse_batch(run_locally(batch_script(commands, MARKER)), MARKER)
    assert found[0].rc == 124  # coreutils' timeout stopped it
    assert found[1] == Output(0, "late\n", "")


def test_what_a_login_script_prints_is_not_a_result() -> None:
    noise = "echo 'ck-0ld:1:0:Zm9v:'; echo welcome; echo 'ck-5eed:9:1:not base64!:'\n"
    text = run_locally(noise + batch_script([Command("n", "echo real")], MARKER))
    assert parse_batch(text, MARKER) == {0: Output(0, "real\n", "")}


def test_malformed_result_lines_are_ignored() -> None:
    text = "ck-5eed:0:0:abc:\nck-5eed:x:0::\nck-5eed:1:0::\n"
    assert parse_batch(text, MARKER) == {1: Output(0, "", "")}


def test_bytes_that_are_not_utf8_do_not_break_a_batch() -> None:
    script = batch_script([Command("n", "printf '\\377ok'")], MARKER)
    found = parse_batch(run_locally(script), MARKER)
    assert found[0].stdout == "\ufffdok"


def test_output_why_names_the_exit_status_or_the_reason() -> None:
    assert Output(2, "", "a\nb\nc\nd\n").why() == "exit 2: b | c | d"
    assert Output(1, "only stdout", "").why() == "exit 1: only stdout"
    assert Output(NOT_RUN, "", "SSH to n failed: refused").why() == "SSH to n failed: refused"


class CountingPool(Pool):
    """A pool that counts the sessions it is asked for."""

    def __init__(self, trust: ClusterTrust) -> None:
        super().__init__(trust)
        self.sessions = 0

    def run(self, node: str, argv: Sequence[str], timeout: float) -> tuple[int, str, str]:
        self.sessions += 1
        return super().run(node, argv, timeout)


def test_when_ssh_fails_every_command_of_the_batch_says_why(tmp_path: Path) -> None:
    trust = ClusterTrust("demo", tmp_path)  # no ssh_config yet: no connection can be made
    pool = CountingPool(trust)
    with Remote.open(trust, pool) as remote:
        outs = remote.run_batch("demo-head", [Command("demo-head", "true")] * 2)
        assert [o.rc for o in outs] == [NOT_RUN, NOT_RUN]
        assert outs[0].why().startswith("SSH to demo-head failed: ")
        assert str(trust.ssh_config) in outs[0].why()
        again = remote.run_batch("demo-head", [Command("demo-head", "true")])
        assert again == outs[:1]  # not tried again
    assert pool.sessions == 1
    with pytest.raises(NodeUnreachable, match="cannot read"):  # lent: still open, not closed
        pool.run("demo-head", ["true"], 1)


def test_a_remote_of_its_own_closes_its_pool(tmp_path: Path) -> None:
    with Remote.open(ClusterTrust("demo", tmp_path)) as remote:
        pool = remote._pool
    with pytest.raises(NodeUnreachable, match="pool is closed"):
        pool.run("demo-head", ["true"], 1)


# --- parsing ------------------------------------------------------------------------------


def test_sha256sum_output_is_read_per_path() -> None:
    a, b = digest("a"), digest("b")
    text = (
        f"{a}  /shared/x\n{b} */shared/y\n\\{a}  /shared/odd\\nname\n"
        "sha256sum: /shared/z: No such file or directory\n"
    )
    assert parse_sha256sum(text) == {
        "/shared/x": a,
        "/shared/y": b,
        "/shared/odd\\nname": a,
    }


def test_unmunge_status_and_origin() -> None:
    assert unmunge_status(UNMUNGE_OK) == "Success (0)"
    assert unmunge_host(UNMUNGE_OK) == "made on vfy-head (10.250.1.2)"
    assert unmunge_status(UNMUNGE_BAD_KEY) == "Invalid credential (15)"
    assert unmunge_status("") == ""


def test_step_output_gives_the_cpus_and_only_real_memory_limits() -> None:
    v1 = f"cpus 1\nmemory {V1_UNLIMITED}\nmemory 67108864\nmemory 67108864\nmemory {V1_UNLIMITED}\n"
    assert parse_step(v1) == (1, [67108864, 67108864])
    assert parse_step("cpus 2\nmemory max\nmemory 134217728\n") == (2, [134217728])
    assert parse_step("garbage\n") == (None, [])


# --- judging ------------------------------------------------------------------------------


def test_daemon_checks() -> None:
    assert judge_daemon("c1", "slurmd", ok("428\n")) == Check(
        "c1", "slurmd", True, "slurmd is running (pid 428)"
    )
    down = judge_daemon("c1", "slurmd", Output(1, "", ""))
    assert not down.ok and down.detail == "slurmd is not running on c1"
    unknown = judge_daemon("c1", "slurmd", Output(NOT_RUN, "", "SSH to c1 failed: refused"))
    assert not unknown.ok and "SSH to c1 failed" in unknown.detail


def test_scontrol_ping() -> None:
    assert judge_ping("h", ok("Slurmctld(primary) at h is UP\n")).ok
    down = judge_ping("h", Output(1, "Slurmctld(primary) at h is DOWN\n", ""))
    assert not down.ok and "is DOWN" in down.detail
    assert not judge_ping("h", Output(NOT_RUN, "", "SSH to h failed: x")).ok


def test_munge_round_trip() -> None:
    made = ok("MUNGE:AwQ...:\n")
    assert judge_munge("c1", "munge-from-head", made, ok(UNMUNGE_OK)).ok
    rejected = judge_munge("c1", "munge-from-head", made, Output(15, UNMUNGE_BAD_KEY, ""))
    assert not rejected.ok and "Invalid credential" in rejected.detail
    not_made = judge_munge("c1", "munge-to-head", Output(1, "", "munged not running"), None)
    assert not not_made.ok and "no credential was made" in not_made.detail


def test_slurm_conf_on_the_head_is_the_rendered_one() -> None:
    head = ok(sha_line(digest("conf"), "/etc/slurm/slurm.conf"))
    assert judge_head_conf("h", head, digest("conf")).ok
    stale = judge_head_conf("h", head, digest("other"))
    assert not stale.ok and "differs" in stale.detail
    assert not judge_head_conf("h", head, None).ok
    assert not judge_head_conf("h", Output(1, "", "No such file"), digest("conf")).ok


def test_slurm_conf_on_a_compute_node_is_the_heads() -> None:
    head = ok(sha_line(digest("conf"), "/etc/slurm/slurm.conf"))
    same = ok(sha_line(digest("conf"), CACHED_SLURM_CONF))
    assert judge_conf("c1", same, head).ok
    other = judge_conf("c1", ok(sha_line(digest("old"), CACHED_SLURM_CONF)), head)
    assert not other.ok and "not the head's" in other.detail
    missing = judge_conf("c1", Output(1, "", "No such file or directory"), head)
    assert not missing.ok and CACHED_SLURM_CONF in missing.detail
    assert not judge_conf("c1", same, Output(NOT_RUN, "", "SSH")).ok


def test_slurm_idle_from_captured_sinfo() -> None:
    nodes = parse_sinfo((DATA / "sinfo-22.05.json").read_text(encoding="utf-8"))
    mixed = judge_idle("compute-st-2", nodes)
    assert mixed.ok and mixed.detail == "Slurm says MIXED"
    unresponsive = judge_idle("compute-st-1", nodes)
    assert not unresponsive.ok and "NOT_RESPONDING" in unresponsive.detail
    assert not judge_idle("compute-st-9", nodes).ok
    assert not judge_idle("compute-st-1", "sinfo --json reported an error").ok


def test_drained_nodes_are_not_ready() -> None:
    nodes = parse_sinfo((DATA / "sinfo-22.05-derived-cloud-drain.json").read_text("utf-8"))
    assert not judge_idle("compute-st-2", nodes).ok  # MIXED+DRAIN


def test_cgroup_limits() -> None:
    assert judge_cpus("c1", 1).ok
    assert not judge_cpus("c1", 2).ok
    assert not judge_cpus("c1", None).ok
    assert judge_memory("c1", [STEP_MEMORY_BYTES, 2 * STEP_MEMORY_BYTES]).ok
    assert not judge_memory("c1", [2 * STEP_MEMORY_BYTES]).ok
    assert not judge_memory("c1", []).ok


def test_a_step_that_was_not_run_fails_both_cgroup_checks_with_the_reason() -> None:
    checks = judge_step("c1", None, Output(1, "", ""))
    assert [c.name for c in checks] == ["cgroup-cpus", "cgroup-memory"]
    assert all(not c.ok and "slurmd is not running on c1" in c.detail for c in checks)
    failed = judge_step("c1", Output(1, "", "srun: error: Unable to allocate"), ok("1"))
    assert all(not c.ok and "Unable to allocate" in c.detail for c in failed)


def test_shared_rw_names_what_went_wrong() -> None:
    expected = {"/shared/f-c2": digest("c2\n")}
    good = {
        ("c1", "write"): ok(),
        ("c1", "read"): ok(sha_line(digest("c2\n"), "/shared/f-c2")),
        ("c1", "remove"): ok(),
    }
    assert judge_shared_rw("c1", good, expected).ok
    changed = {**good, ("c1", "read"): ok(sha_line(digest("x"), "/shared/f-c2"))}
    assert "other content" in judge_shared_rw("c1", changed, expected).detail
    gone = {**good, ("c1", "read"): Output(1, "", "sha256sum: /shared/f-c2: No such file")}
    assert "cannot read /shared/f-c2" in judge_shared_rw("c1", gone, expected).detail
    stuck = {**good, ("c1", "remove"): Output(1, "", "Permission denied")}
    assert "cannot remove" in judge_shared_rw("c1", stuck, expected).detail
    unwritable = {("c1", "write"): Output(1, "", "Read-only file system")}
    assert "cannot write" in judge_shared_rw("c1", unwritable, {}).detail


# --- plans and aggregation ----------------------------------------------------------------


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    conf = tmp_path / "slurm.conf"
    conf.write_text("ClusterName=demo\n", encoding="utf-8")
    return Layout(
        head="demo-head",
        computes=("compute-st-1", "compute-st-2"),
        user="ckuser",
        shared_dir="/shared",
        head_mounts_shared=True,
        rendered_conf=conf,
    )


def files_of(layout: Layout) -> dict[str, str]:
    return {n: f"/shared/.ck-verify-{RUN_ID}-{n}" for n in layout.nodes}


def healthy_probes(layout: Layout) -> dict[Key, Output]:
    """What every probe gives on a working cluster, phase by phase as ``run_checks`` asks."""
    files = files_of(layout)
    conf = hashlib.sha256(layout.rendered_conf.read_bytes()).hexdigest()
    sinfo = {"errors": [], "nodes": [{"name": n, "state": "idle"} for n in layout.computes]}
    answers = {
        "slurmctld": ok("7696\n"),
        "slurmd": ok("428\n"),
        "munged": ok("319\n"),
        "ping": ok(f"Slurmctld(primary) at {layout.head} is UP\n"),
        "sinfo": ok(json.dumps(sinfo)),
        "conf": ok(sha_line(conf, "/etc/slurm/slurm.conf")),
        "munge": ok("MUNGE:AwQ...:\n"),
        "mount": ok("/shared is a mountpoint\n"),
        "write": ok(),
        "unmunge-head": ok(UNMUNGE_OK),
        "unmunge-node": ok(UNMUNGE_OK),
        "step": ok(f"job 7\ncpus 1\nmemory 67108864\nmemory {V1_UNLIMITED}\n"),
        "remove": ok(),
        "slurmdbd": ok("1054\n"),
        "clusters": ok("demo\n"),
        "sacct": ok("7|COMPLETED|ckuser\n"),
        "tenants": ok("seen 0\nfirst compute-st-1\nsecond compute-st-2\n"),
    }
    first = {key: answers[key[1]] for key in first_plan(layout, files, RUN_ID)}
    second = {}
    for key, command in second_plan(layout, files, first).items():
        if key[1] == "read":
            paths = command.script.split()[1:]
            text = "".join(sha_line(_written(p), p) for p in paths)
            second[key] = ok(text)
        else:
            second[key] = answers[key[1]]
    third = {key: answers[key[1]] for key in cleanup_plan(layout, files, first, second)}
    return {**first, **second, **third}


def _written(path: str) -> str:
    node = path.rsplit(f"{RUN_ID}-", 1)[1]
    return digest(f"clusterkit verify {RUN_ID} from {node}\n")


def test_a_healthy_cluster_passes_every_check_on_every_node(layout: Layout) -> None:
    checks = judge_all(layout, healthy_probes(layout), files_of(layout), RUN_ID)
    assert failures(checks) == []
    by_node: dict[str, list[str]] = {}
    for check in checks:
        by_node.setdefault(check.node, []).append(check.name)
    assert list(by_node) == ["demo-head", "compute-st-1", "compute-st-2"]
    assert by_node["demo-head"] == list(HEAD_CHECKS)
    assert by_node["compute-st-1"] == by_node["compute-st-2"] == list(COMPUTE_CHECKS)


def test_a_dead_slurmd_fails_its_node_and_no_step_is_run_there(layout: Layout) -> None:
    files = files_of(layout)
    first = {
        key: value
        for key, value in healthy_probes(layout).items()
        if key in first_plan(layout, files, RUN_ID)
    }
    first["compute-st-1", "slurmd"] = Output(1, "", "")
    second = second_plan(layout, files, first)
    assert ("compute-st-1", "step") not in second
    assert second["compute-st-2", "step"].node == "demo-head"
    probes = {
        key: v for key, v in healthy_probes(layout).items() if key != ("compute-st-1", "step")
    }
    probes["compute-st-1", "slurmd"] = Output(1, "", "")
    failed = failures(judge_all(layout, probes, files, RUN_ID))
    assert {(c.node, c.name) for c in failed} == {
        ("compute-st-1", "slurmd"),
        ("compute-st-1", "cgroup-cpus"),
        ("compute-st-1", "cgroup-memory"),
    }


def test_an_unreachable_node_fails_its_checks_and_is_left_out_of_the_others(
    layout: Layout,
) -> None:
    files = files_of(layout)
    probes = healthy_probes(layout)
    gone = Output(NOT_RUN, "", "SSH to compute-st-2 failed: Connection refused")
    first = {key: v for key, v in probes.items() if key in first_plan(layout, files, RUN_ID)}
    for key in first:
        if key[0] == "compute-st-2":
            first[key] = gone
    second = second_plan(layout, files, first)
    assert ("compute-st-2", "unmunge-node") not in second  # no credential was made there
    assert ("compute-st-2", "step") not in second
    assert files["compute-st-2"] not in second["demo-head", "read"].script
    assert ("compute-st-2", "remove") not in cleanup_plan(layout, files, first)


def test_the_head_of_a_cloud_cluster_serves_shared_storage_without_mounting_it(
    layout: Layout,
) -> None:
    cloud = Layout(**{**layout.__dict__, "head_mounts_shared": False})
    plan = first_plan(cloud, files_of(cloud), RUN_ID)
    assert ("demo-head", "mount") not in plan
    assert ("compute-st-1", "mount") in plan


def test_steps_run_from_the_head_as_the_first_cluster_user(layout: Layout) -> None:
    files = files_of(layout)
    first = {key: ok() for key in first_plan(layout, files, RUN_ID)}
    step = second_plan(layout, files, first)["compute-st-1", "step"]
    assert step.node == "demo-head"
    assert "runuser -u ckuser -- srun" in step.script
    assert "--nodelist=compute-st-1" in step.script
    assert "--cpus-per-task=1" in step.script and "--mem=64M" in step.script


def test_layout_of_a_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLUSTERKIT_HOME", str(tmp_path))
    spec = parse_spec({"name": "demo", "groups": [{"name": "gpu", "min": 2, "max": 2}]})
    nodes = {
        "gpu-st-2": NodeState(name="gpu-st-2", role="compute", group="gpu", index=2),
        "demo-head": NodeState(name="demo-head", role="head", index=0),
        "gpu-st-1": NodeState(name="gpu-st-1", role="compute", group="gpu", index=1),
    }
    state = ClusterState(name="demo", provider="local", nodes=nodes)
    got = layout_of(state, spec, LocalProvider.traits)
    assert got.nodes == ("demo-head", "gpu-st-1", "gpu-st-2")
    assert got.user == "ckuser" and got.shared_dir == "/shared" and got.head_mounts_shared
    assert got.rendered_conf == tmp_path / "clusters/demo/rendered/slurm/slurm.conf"
    no_users = parse_spec({"name": "demo", "users": []})
    assert layout_of(state, no_users, LocalProvider.traits).user == "root"
    # a budget would count (and could hold) a user's steps: root is under none
    capped = parse_spec({"name": "demo", "cost": {"budget": 5}})
    assert layout_of(state, capped, LocalProvider.traits).user == "root"


def test_failures_keeps_only_failed_checks_in_order() -> None:
    checks = [
        Check("h", "munged", True, ""),
        Check("c1", "slurmd", False, "x"),
        Check("c2", "slurmd", False, "y"),
    ]
    assert failures(checks) == checks[1:]
    assert failures([]) == []


def _slurm_node(name: str, state: str, *flags: str) -> SlurmNode:
    return SlurmNode(
        name=name, state=state, flags=flags, cpus=2, alloc_cpus=0, memory_mb=2048,
        alloc_memory_mb=0, partitions=("all",), reason="", address=name, hostname=name,
    )  # fmt: skip


def test_up_waits_for_nodes_that_are_registering_not_for_drained_ones() -> None:
    nodes = [
        _slurm_node("n1", "IDLE"),
        _slurm_node("n2", "UNKNOWN"),  # a controller that just started
        _slurm_node("n3", "DOWN", "NOT_RESPONDING"),  # a slurmd coming back
        _slurm_node("n4", "IDLE", "DRAIN"),  # an operator's drain: waiting will not change it
        _slurm_node("n5", "MIXED"),
        _slurm_node("n7", "ALLOCATED"),  # busy with users' jobs: ready, only full
    ]
    assert registering(nodes, ["n1", "n2", "n3", "n4", "n5", "n6", "n7"]) == ["n2", "n3", "n6"]
    assert registering(nodes, ["n1", "n5"]) == []


# --- accounting and tenants ---------------------------------------------------------------


@pytest.fixture
def tenants(layout: Layout) -> Layout:
    return Layout(**{
        **layout.__dict__, "accounting": True, "slurm_cluster": "demo",
        "tenant_users": ("alice", "bob"),
    })  # fmt: skip


def _by_name(checks: list[Check], node: str) -> dict[str, Check]:
    return {c.name: c for c in checks if c.node == node}


def test_with_accounting_and_two_tenants_the_head_checks_them_after_its_own(
    tenants: Layout,
) -> None:
    checks = judge_all(tenants, healthy_probes(tenants), files_of(tenants), RUN_ID)
    assert failures(checks) == []
    head = [c.name for c in checks if c.node == "demo-head"]
    assert head == [*HEAD_CHECKS, "slurmdbd", "accounting", "sacct", "tenant-isolation"]
    plan = cleanup_plan(tenants, files_of(tenants), healthy_probes(tenants),
                        healthy_probes(tenants))  # fmt: skip
    assert "JOBS=7 COUNT=1" in plan["demo-head", "sacct"].script
    assert "FIRST=alice SECOND=bob" in plan["demo-head", "tenants"].script


@pytest.mark.parametrize(
    ("probe", "answer", "check", "detail"),
    [
        ("clusters", ok("other\n"), "accounting", "slurmdbd knows no cluster demo"),
        ("clusters", Output(1, "", "Connection refused"), "accounting",
         "slurmdbd does not answer"),
        ("sacct", ok(""), "sacct", "accounting has no record of job 7"),
        ("tenants", ok("seen 1\nfirst compute-st-1\nsecond compute-st-2\n"),
         "tenant-isolation", "bob can list 1 job(s) of alice"),
        ("tenants", ok("seen 0\nfirst compute-st-1\nsecond compute-st-1\n"),
         "tenant-isolation", "ran side by side on compute-st-1"),
        ("tenants", Output(1, "seen 0\nfirst compute-st-1\nsecond \n", "srun: error"),
         "tenant-isolation", "the tenants' jobs did not run"),
        ("slurmdbd", Output(1, "", ""), "slurmdbd", "slurmdbd is not running"),
    ],
)  # fmt: skip
def test_what_breaks_accounting_or_isolation_fails_its_check(
    tenants: Layout, probe: str, answer: Output, check: str, detail: str
) -> None:
    probes = {**healthy_probes(tenants), ("demo-head", probe): answer}
    got = _by_name(judge_all(tenants, probes, files_of(tenants), RUN_ID), "demo-head")[check]
    assert not got.ok
    assert detail in got.detail


def test_a_budget_that_holds_the_tenants_jobs_leaves_isolation_unchecked_not_failed(
    tenants: Layout,
) -> None:
    held = ok("held bob AssocGrpBillingMinutes\n")
    probes = {**healthy_probes(tenants), ("demo-head", "tenants"): held}
    got = _by_name(judge_all(tenants, probes, files_of(tenants), RUN_ID), "demo-head")
    check = got["tenant-isolation"]
    assert check.ok and check.detail.startswith(
        "not checked: a budget holds bob's job (AssocGrpBillingMinutes)"
    )


def test_where_no_step_ran_sacct_must_still_answer(tenants: Layout) -> None:
    probes = healthy_probes(tenants)
    for node in tenants.computes:
        probes[node, "step"] = Output(1, "", "srun: error: Unable to allocate resources")
    plan = cleanup_plan(tenants, files_of(tenants), probes, probes)
    assert "-S now-10minutes" in plan["demo-head", "sacct"].script
    got = _by_name(judge_all(tenants, probes, files_of(tenants), RUN_ID), "demo-head")["sacct"]
    assert got.ok and "no verify job ran" in got.detail
    probes["demo-head", "sacct"] = Output(1, "", "Slurm accounting storage is disabled")
    got = _by_name(judge_all(tenants, probes, files_of(tenants), RUN_ID), "demo-head")["sacct"]
    assert not got.ok and "Slurm accounting storage is disabled" in got.detail


def test_without_compute_nodes_accounting_is_checked_without_a_job(tenants: Layout) -> None:
    empty = Layout(**{**tenants.__dict__, "computes": ()})
    assert empty.head_checks == (*HEAD_CHECKS, "slurmdbd", "accounting")
    checks = judge_all(empty, healthy_probes(empty), files_of(empty), RUN_ID)
    assert failures(checks) == []
    assert [c.name for c in checks] == list(empty.head_checks)


def test_one_tenant_or_one_node_is_not_checked_for_isolation(tenants: Layout) -> None:
    one = Layout(**{**tenants.__dict__, "tenant_users": ("alice",)})
    assert "tenant-isolation" not in one.head_checks
    small = Layout(**{**tenants.__dict__, "computes": ("compute-st-1",)})
    assert "tenant-isolation" not in small.head_checks


def test_a_node_busy_with_jobs_is_healthy_and_its_step_is_not_run(layout: Layout) -> None:
    full = _slurm_node("compute-st-1", "ALLOCATED")
    busy = judge_idle("compute-st-1", [full])
    assert busy.ok and busy.detail == "Slurm says ALLOCATED: busy with jobs"
    assert not judge_idle("compute-st-1", [_slurm_node("compute-st-1", "ALLOCATED", "DRAIN")]).ok
    files = files_of(layout)
    first = {key: ok() for key in first_plan(layout, files, RUN_ID)}
    sinfo = {"nodes": [{"name": "compute-st-1", "state": "allocated"},
                       {"name": "compute-st-2", "state": "idle"}]}  # fmt: skip
    first["demo-head", "sinfo"] = ok(json.dumps(sinfo))
    second = second_plan(layout, files, first)
    # a step would wait for the users' jobs: not run there, and said so
    assert ("compute-st-1", "step") not in second and ("compute-st-2", "step") in second
    cpus, memory = judge_step("compute-st-1", None, ok(), busy=True)
    assert cpus.ok and memory.ok and cpus.detail.startswith("not checked: every CPU")


@pytest.mark.parametrize("count", [1, 2, 3, 4, 5, 251])
def test_shared_files_are_read_by_three_peers_whatever_the_size(count: int) -> None:
    from clusterkit.checks import SHARED_PEERS, shared_peers

    nodes = [f"n{i}" for i in range(count)]
    reads = {n: shared_peers(nodes, n) for n in nodes}
    peers = min(SHARED_PEERS, count - 1)
    assert all(len(set(r)) == len(r) == peers and n not in r for n, r in reads.items())
    readers = {n: sum(n in r for r in reads.values()) for n in nodes}
    assert set(readers.values()) == {peers}  # every file read, and by as many as read any
    assert sum(len(r) for r in reads.values()) == count * peers  # not count * (count - 1)
