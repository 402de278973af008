"""What differs between providers in what clusterkit renders and checks, as plain data.

Every provider class carries one ``Traits`` (``Provider.traits``). The orchestrator hands it
to the modules that render files and run checks, so they never ask which provider they
serve and never import one.
"""

from __future__ import annotations

from dataclasses import dataclass

from clusterkit.spec import ClusterSpec


@dataclass(frozen=True)
class Traits:
    shared_storage: str  # what `shared_storage.type: auto` means: sshfs | nfs
    service_manager: str  # how daemons are started: direct (no systemd) | systemd
    slurmd_flags: str  # extra flags of slurmd in the compute boot script
    cgroup_plugin: str  # cgroup.conf's CgroupPlugin
    # Nodes declare more CPUs than the machine has, and GPUs that are only counted.
    emulated_hardware: bool
    # The head reaches shared storage through a mount of its own, as the computes do; else
    # it serves the directory itself.
    head_mounts_shared: bool


def shared_type(spec: ClusterSpec, traits: Traits) -> str:
    """The shared storage a cluster uses: the spec's choice, else the provider's."""
    if spec.shared_storage.type != "auto":
        return spec.shared_storage.type
    return traits.shared_storage
