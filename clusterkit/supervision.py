"""What ``ck-supervise`` keeps alive on a node without systemd, as commands computed here.

The compute boot script and the head's playbook start their daemons and mounts as before, then
register each with ``ck-supervise add`` (which starts the supervisor). The lists below are the
only description of those services: the boot script renders them, Ansible runs them. On a node
with systemd (``Traits.service_manager``) units restart what dies, and the lists are empty.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from clusterkit import accounting
from clusterkit.plan import cluster_users, head_name, tenant_groups
from clusterkit.spec import ClusterSpec
from clusterkit.traits import Traits, shared_type

LOG_DIR = "/var/log/clusterkit"
SSHD_PORT = 22
SLURMCTLD_PORT = 6817
# A mount gives up on a head that has not answered for 60 s (12 keepalives 5 s apart), then
# reconnects. Not sooner: a head serving 250 nodes on 2 cores was measured missing 15 s of
# keepalives while they all booted, and the dropped mount failed a node's boot.
SSHFS_OPTIONS = "BatchMode=yes,allow_other,reconnect,ServerAliveInterval=5,ServerAliveCountMax=12"
# The root mounts (the shared directory, each tenant's) reach the head as root: the kernel
# must check each file's mode itself (default_permissions), or every user could write
# anywhere. A tenant's files show as the group's to read and write (umask), as SFTP makes
# them root's.
ROOT_MOUNT_OPTIONS = "default_permissions"
TENANT_MOUNT_OPTIONS = "default_permissions,umask=0007"


@dataclass(frozen=True)
class Supervised:
    name: str
    command: tuple[str, ...]
    process: str = ""  # alive while a process of this name runs
    mount: str = ""  # alive while this mount point answers
    listen: int = 0  # alive while something listens on this TCP port
    background: bool = False  # the command stays in the foreground
    requeue: bool = False  # a repair means the node's running jobs lost their files

    def add_argv(self, tool: str, events: str = "") -> list[str]:
        """The ``ck-supervise add`` command line that registers this service."""
        argv = [tool, *(["--events", events] if events else []), "add", self.name]
        if self.process:
            argv += ["--process", self.process]
        elif self.mount:
            argv += ["--mount", self.mount]
        else:
            argv += ["--listen", str(self.listen)]
        if self.background:
            argv += ["--background", "--log", f"{LOG_DIR}/{self.name.removeprefix('ck-')}.log"]
        if self.requeue:
            argv += ["--requeue-jobs"]
        return [*argv, "--", *self.command]


def tool(spec: ClusterSpec) -> str:
    return f"{spec.shared_storage.mount_point}/clusterkit/bin/ck-supervise"


def sshfs_command(remote: str, mount_point: str, key: str, extra: str = "") -> tuple[str, ...]:
    options = f"IdentityFile={key},{SSHFS_OPTIONS}" + (f",{extra}" if extra else "")
    return ("sshfs", "-o", options, remote, mount_point)


def _sshd() -> Supervised:
    return Supervised("sshd", ("/usr/sbin/sshd", "-D", "-e"), listen=SSHD_PORT, background=True)


def _bin(spec: ClusterSpec, name: str, *args: str) -> tuple[str, ...]:
    shared = spec.shared_storage.mount_point
    return (f"{shared}/clusterkit/bin/{name}", *args)


def compute_services(
    spec: ClusterSpec, traits: Traits, *, node_key: str, user_key_dir: str
) -> list[Supervised]:
    """A compute node's services, mounts first (a home lies under the shared directory)."""
    if traits.service_manager != "direct":
        return []
    head, shared = head_name(spec.name), spec.shared_storage.mount_point
    found = []
    if shared_type(spec, traits) == "sshfs":
        found.append(Supervised(
            "shared", sshfs_command(f"root@{head}:{shared}", shared, node_key, ROOT_MOUNT_OPTIONS),
            mount=shared, requeue=True,
        ))  # fmt: skip
        found += [
            Supervised(
                f"tenant-{t.name}",
                sshfs_command(f"root@{head}:{t.directory}", t.directory, node_key,
                              TENANT_MOUNT_OPTIONS),
                mount=t.directory,
                requeue=True,
            )
            for t in tenant_groups(spec)
        ]  # fmt: skip
        found += [
            Supervised(
                f"home-{u.name}",
                sshfs_command(f"{u.name}@{head}:{u.home}", u.home, f"{user_key_dir}/{u.name}"),
                mount=u.home,
                requeue=True,
            )
            for u in cluster_users(spec)
        ]
    slurmd = ("/usr/sbin/slurmd", "--conf-server", f"{head}:{SLURMCTLD_PORT}")
    spot = _bin(spec, "ck-spot-agent", "--config", f"{shared}/clusterkit/etc/spot.json")
    return [
        *found,
        _sshd(),
        Supervised("munged", ("runuser", "-u", "munge", "--", "/usr/sbin/munged"), "munged"),
        Supervised("slurmd", (*slurmd, *traits.slurmd_flags.split()), process="slurmd"),
        Supervised("ck-spot-agent", spot, process="ck-spot-agent", background=True),
    ]


def head_services(spec: ClusterSpec, traits: Traits, *, spot_events: bool) -> list[Supervised]:
    """The head's services (its shared directory is its own: nothing mounted)."""
    if traits.service_manager != "direct":
        return []
    spot_json = f"{spec.shared_storage.mount_point}/clusterkit/etc/spot.json"
    found = [
        _sshd(),
        Supervised("munged", ("runuser", "-u", "munge", "--", "/usr/sbin/munged"), "munged"),
        *_accounting_services(spec),
        Supervised("slurmctld", ("/usr/sbin/slurmctld",), process="slurmctld"),
        Supervised(
            "ck-reconciler",
            _bin(spec, "ck-reconciler", "--spot-config", spot_json),
            process="ck-reconciler",
            background=True,
        ),
    ]
    if spot_events:
        found.append(Supervised(
            "ck-spot-events", _bin(spec, "ck-spot-events", "--config", spot_json),
            process="ck-spot-events", background=True,
        ))  # fmt: skip
    return found


def _accounting_services(spec: ClusterSpec) -> list[Supervised]:
    """The head's MariaDB (when the database is its own) and slurmdbd, before slurmctld."""
    if not spec.accounting.enabled:
        return []
    found = []
    if accounting.database(spec).on_head:
        found.append(Supervised(
            "mariadbd", accounting.MARIADBD_ARGV, process="mariadbd", background=True,
        ))  # fmt: skip
    return [*found, Supervised("slurmdbd", ("/usr/sbin/slurmdbd",), process="slurmdbd")]


def shell_lines(services: list[Supervised], tool_path: str, events: str = "") -> list[str]:
    """Each service's registration as one shell line (for the boot script)."""
    return [shlex.join(s.add_argv(tool_path, events)) for s in services]
