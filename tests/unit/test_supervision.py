"""What ck-supervise keeps alive on nodes without systemd, computed from the spec and traits."""

from __future__ import annotations

from dataclasses import replace

from clusterkit.providers.aws.provider import AwsProvider
from clusterkit.providers.local.provider import LocalProvider
from clusterkit.spec import AccountingSpec, DatabaseSpec, parse_spec_text
from clusterkit.supervision import compute_services, head_services, shell_lines, tool

SPEC = parse_spec_text("{name: demo, users: [{name: ann, uid: 2001}, {name: bob, uid: 2002}]}",
                       source="test")  # fmt: skip
KEYS = {"node_key": "/etc/ssh/ck_node_key", "user_key_dir": "/var/lib/clusterkit/keys"}


def test_a_local_compute_keeps_its_mounts_first_then_its_daemons() -> None:
    services = compute_services(SPEC, LocalProvider.traits, **KEYS)
    assert [s.name for s in services] == [
        "shared", "home-ann", "home-bob", "sshd", "munged", "slurmd", "ck-spot-agent",
    ]  # fmt: skip
    mounts = {s.name: s for s in services if s.mount}
    assert mounts["shared"].mount == "/shared" and mounts["home-ann"].mount == "/shared/home/ann"
    assert all(s.requeue for s in mounts.values())  # a dead mount took the jobs' files
    assert not any(s.requeue for s in services if not s.mount)  # a daemon restart does not
    slurmd = next(s for s in services if s.name == "slurmd")
    assert slurmd.command == ("/usr/sbin/slurmd", "--conf-server", "demo-head:6817", "-b")


def test_nfs_nodes_and_systemd_hosts_supervise_no_mount_or_nothing() -> None:
    nfs = replace(LocalProvider.traits, shared_storage="nfs")
    assert not any(s.mount for s in compute_services(SPEC, nfs, **KEYS))
    assert compute_services(SPEC, AwsProvider.traits, **KEYS) == []
    assert head_services(SPEC, AwsProvider.traits, spot_events=True) == []


def test_the_head_keeps_its_controller_and_reconciler_and_the_events_consumer_if_any() -> None:
    names = [s.name for s in head_services(SPEC, LocalProvider.traits, spot_events=False)]
    assert names == ["sshd", "munged", "mariadbd", "slurmdbd", "slurmctld", "ck-reconciler"]
    external = SPEC.model_copy(update={"accounting": AccountingSpec(database=DatabaseSpec(
        host="db.example.org", password_secret="file:/p"))})  # fmt: skip
    names = [s.name for s in head_services(external, LocalProvider.traits, spot_events=False)]
    assert names == ["sshd", "munged", "slurmdbd", "slurmctld", "ck-reconciler"]
    off = SPEC.model_copy(update={"accounting": AccountingSpec(enabled=False)})
    names = [s.name for s in head_services(off, LocalProvider.traits, spot_events=False)]
    assert names == ["sshd", "munged", "slurmctld", "ck-reconciler"]
    with_events = head_services(SPEC, LocalProvider.traits, spot_events=True)
    assert with_events[-1].name == "ck-spot-events" and with_events[-1].background


def test_each_registration_is_one_quoted_shell_line_ck_supervise_parses() -> None:
    services = compute_services(SPEC, LocalProvider.traits, **KEYS)
    lines = shell_lines(services, tool(SPEC), "/shared/clusterkit/events/{node}-supervisor.jsonl")
    assert lines[0].startswith(
        "/shared/clusterkit/bin/ck-supervise --events "
        "'/shared/clusterkit/events/{node}-supervisor.jsonl' add shared --mount /shared "
        "--requeue-jobs -- sshfs -o "
    )
    agent = next(line for line in lines if " add ck-spot-agent " in line)
    assert "--background --log /var/log/clusterkit/spot-agent.log --" in agent
    assert " add sshd --listen 22 " in lines[3]
