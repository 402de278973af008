"""Node-side tools: small commands that run on the cluster's nodes, inside Slurm jobs.

They run with the node's system ``python3`` and ``python3-jinja2``, not with clusterkit's
virtualenv, so they may import only the standard library, ``jinja2``, ``clusterkit.render``
and the Slurm helpers ``clusterkit.slurm``, ``slurmreader`` and ``hostlist`` (with
``clusterkit.errors``, which they raise) -- never pydantic or ``clusterkit.spec``. A unit test
holds them to it.
"""

# Commands installed on shared storage (``/shared/clusterkit/bin``): command -> ``module`` with
# a ``main()``, or ``module:function``. One line per tool; the playbooks install every entry.
NODE_TOOLS = {
    "ck-machinefile": "clusterkit.nodetools.machinefile",
    "ck-pack-run": "clusterkit.nodetools.packrun",
    "ck-pack": "clusterkit.nodetools.packstate",
    "ck-resume": "clusterkit.nodetools.power:resume_main",
    "ck-suspend": "clusterkit.nodetools.power:suspend_main",
    "ck-resume-fail": "clusterkit.nodetools.power:resume_fail_main",
    "ck-reconciler": "clusterkit.nodetools.reconciler",
    "ck-spot-agent": "clusterkit.nodetools.spot",
    "ck-spot-events": "clusterkit.nodetools.spot_events",
    "ck-checkpoint": "clusterkit.nodetools.checkpoint",
    "ck-run": "clusterkit.nodetools.ckrun",
    "ck-supervise": "clusterkit.nodetools.supervise",
    "ck-accounts": "clusterkit.nodetools.accounts",
}


def entry_point(target: str) -> tuple[str, str]:
    """``(module, function)`` of a NODE_TOOLS value."""
    module, _, function = target.partition(":")
    return module, function or "main"
