"""``ck-machinefile``: the MPI machinefile of the Slurm job it runs in.

Reads ``SLURM_JOB_NODELIST`` and ``SLURM_JOB_CPUS_PER_NODE`` and writes one line per host
with its slot count, in Open MPI's (``host slots=N``) or MPICH's (``host:N``) syntax::

    mpirun --hostfile "$(ck-machinefile)" ./app
    mpiexec -f "$(ck-machinefile --flavor mpich)" ./app
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal, cast

from clusterkit.errors import SlurmError
from clusterkit.hostlist import hostnames
from clusterkit.render import render

Flavor = Literal["openmpi", "mpich"]
FLAVORS: tuple[Flavor, ...] = ("openmpi", "mpich")
PROG = "ck-machinefile"

# One item of SLURM_JOB_CPUS_PER_NODE: "4" (one node) or "4(x2)" (two nodes of 4 CPUs).
_CPUS_ITEM = re.compile(r"^([1-9][0-9]*)(?:\(x([1-9][0-9]*)\))?$")

EPILOG = """\
examples:
  mpirun --hostfile "$(ck-machinefile)" ./app
  mpiexec -f "$(ck-machinefile --flavor mpich)" ./app

exit status:
  0  written; the path is on stdout
  1  the file could not be written
  2  not inside a Slurm job, or the job's environment is not understood
"""


class JobError(Exception):
    """The job's environment does not describe a usable allocation; one line says why."""


def machinefile(
    hosts: Sequence[tuple[str, int]],
    flavor: Flavor,
    *,
    cluster: str | None = None,
    job_id: str | None = None,
) -> str:
    """The machinefile text: ``hosts`` are (host, slots) pairs, in order."""
    if flavor not in FLAVORS:
        raise ValueError(f"unknown MPI flavor {flavor!r}; choose one of {', '.join(FLAVORS)}")
    return render(
        f"slurm/machinefile.{flavor}.j2", hosts=list(hosts), origin=origin(cluster, job_id)
    )


def origin(cluster: str | None, job_id: str | None) -> str:
    """What the file was written for, as its header comment says it."""
    job = f"Slurm job {job_id}" if job_id else "a Slurm job"
    return f"cluster {cluster}, {job}" if cluster else job


def cpus_per_node(value: str) -> list[int]:
    """CPU counts by node from ``SLURM_JOB_CPUS_PER_NODE``: ``"4(x2),2"`` -> ``[4, 4, 2]``."""
    counts: list[int] = []
    for item in value.split(","):
        match = _CPUS_ITEM.match(item.strip())
        if match is None:
            raise ValueError(f"SLURM_JOB_CPUS_PER_NODE={value!r} is not of the form 4(x2),2")
        counts += [int(match.group(1))] * int(match.group(2) or 1)
    return counts


def job_hosts(env: Mapping[str, str]) -> list[tuple[str, int]]:
    """(host, CPUs) pairs of the job whose environment is ``env``; ``JobError`` if none."""
    nodelist = env.get("SLURM_JOB_NODELIST")
    if not nodelist:
        raise JobError("not inside a Slurm job (SLURM_JOB_NODELIST is not set)")
    cpus_value = env.get("SLURM_JOB_CPUS_PER_NODE")
    if not cpus_value:
        raise JobError("SLURM_JOB_CPUS_PER_NODE is not set")
    try:
        hosts = hostnames(nodelist)
        cpus = cpus_per_node(cpus_value)
    except (SlurmError, ValueError) as exc:
        raise JobError(str(exc)) from None
    if len(hosts) != len(cpus):
        raise JobError(
            f"SLURM_JOB_NODELIST={nodelist!r} names {len(hosts)} host(s) but "
            f"SLURM_JOB_CPUS_PER_NODE={cpus_value!r} gives {len(cpus)} CPU count(s)"
        )
    return list(zip(hosts, cpus, strict=True))


def default_path(env: Mapping[str, str], flavor: Flavor) -> Path:
    """``$TMPDIR/machinefile.<jobid>.<flavor>`` (``/tmp`` without ``$TMPDIR``)."""
    job_id = env.get("SLURM_JOB_ID")
    if not job_id:
        raise JobError("SLURM_JOB_ID is not set; name the file with -o FILE")
    return Path(env.get("TMPDIR") or "/tmp") / f"machinefile.{job_id}.{flavor}"


def parser() -> argparse.ArgumentParser:
    """The command line of ``ck-machinefile``."""
    p = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Write the MPI machinefile of the Slurm job this runs in\n"
            "(from SLURM_JOB_NODELIST and SLURM_JOB_CPUS_PER_NODE) and print its path."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--flavor",
        choices=FLAVORS,
        default="openmpi",
        help="openmpi: 'host slots=N' lines (the default); mpich: 'host:N' lines",
    )
    p.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        type=Path,
        help="where to write (default: $TMPDIR or /tmp, machinefile.<jobid>.<flavor>)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    """Run ``ck-machinefile``; returns the exit status."""
    args = parser().parse_args(argv)
    flavor = cast(Flavor, args.flavor)
    env = os.environ
    try:
        hosts = job_hosts(env)
        path: Path = args.output or default_path(env, flavor)
    except JobError as exc:
        return fail(str(exc), 2)
    text = machinefile(
        hosts, flavor, cluster=env.get("SLURM_CLUSTER_NAME"), job_id=env.get("SLURM_JOB_ID")
    )
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        return fail(f"cannot write {path}: {exc.strerror or exc}", 1)
    print(path)
    return 0


def fail(message: str, status: int) -> int:
    """Print ``message`` as one line on stderr and return ``status``."""
    print(f"{PROG}: {message}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
