"""Node-side tools: small commands that run on the cluster's nodes, inside Slurm jobs.

They run with the node's system ``python3`` and ``python3-jinja2``, not with clusterkit's
virtualenv, so they may import only the standard library, ``jinja2``, ``clusterkit.render``
and ``clusterkit.slurm`` (with ``clusterkit.errors``, which it raises) -- never pydantic or
``clusterkit.spec``. A unit test holds them to it.
"""

# Commands installed on shared storage (``/shared/clusterkit/bin``): command -> module with a
# ``main()``. One line per tool; the playbooks install every entry.
NODE_TOOLS = {
    "ck-machinefile": "clusterkit.nodetools.machinefile",
    "ck-pack-run": "clusterkit.nodetools.packrun",
    "ck-pack": "clusterkit.nodetools.packstate",
}
