"""Read a live Slurm's nodes and jobs: ``SlurmReader``, through a runner or pyslurm.

PyPI's pyslurm cannot be built against Debian's Slurm 22.05, so the default (and the tested)
way to read Slurm is to run ``sinfo --json`` and ``squeue --json`` through a *runner* -- a
callable that runs an argv where Slurm is reachable (over SSH on the head node, or locally with
``SLURM_CONF`` set) and returns its stdout -- and to parse their JSON with ``clusterkit.slurm``.
pyslurm is used only when it imports *and* the caller runs on a machine with Slurm's own
configuration (``SlurmReader.create(..., local=True)``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any, ClassVar, Literal

from clusterkit.errors import SlurmError
from clusterkit.hostlist import compress_hostlist
from clusterkit.slurm import (
    SINFO_ARGV,
    SQUEUE_ARGV,
    SlurmJob,
    SlurmNode,
    job_from_entry,
    node_from_entry,
    parse_sinfo,
    parse_squeue,
)

Runner = Callable[[list[str]], str]
"""Runs a Slurm command (an argv) where Slurm is reachable and returns its stdout."""

Backend = Literal["cli", "pyslurm"]


class SlurmReader:
    """Reads nodes and jobs from Slurm through a ``Runner`` (``sinfo``/``squeue --json``).

    The runner's own failures (``CommandError``, ``SSHError``) pass through unchanged; output
    that is not usable, or that carries Slurm's ``errors``, raises ``SlurmError``.
    """

    backend: ClassVar[Backend] = "cli"

    def __init__(self, runner: Runner) -> None:
        self._runner = runner

    @classmethod
    def create(cls, runner: Runner, *, local: bool = False) -> SlurmReader:
        """The reader to use: pyslurm if ``local`` and it imports, else the CLI (the default).

        ``local`` says the caller runs where libslurm finds the cluster's configuration; a
        runner over SSH is never replaced by a pyslurm that would talk to another Slurm.
        """
        if local:
            module = _import_pyslurm()
            if module is not None:
                return _PyslurmReader(runner, module)
        return cls(runner)

    def nodes(self) -> list[SlurmNode]:
        """Every node Slurm knows, in Slurm's order."""
        return parse_sinfo(self._runner(list(SINFO_ARGV)))

    def jobs(self) -> list[SlurmJob]:
        """Every job slurmctld holds (finished ones until ``MinJobAge`` purges them)."""
        return parse_squeue(self._runner(list(SQUEUE_ARGV)))

    def node(self, name: str) -> SlurmNode:
        """The node called ``name``; ``SlurmError`` if Slurm has no such node."""
        nodes = self.nodes()
        for node in nodes:
            if node.name == name:
                return node
        try:
            known = compress_hostlist(n.name for n in nodes) or "none"
        except SlurmError:  # a name no hostlist can hold: list them plainly
            known = ",".join(n.name for n in nodes)
        raise SlurmError(f"Slurm has no node named {name!r}; its nodes: {known}")

    def job(self, job_id: int) -> SlurmJob | None:
        """The job with this id, or ``None`` once slurmctld has forgotten it (``MinJobAge``).

        A job that has gone is normal (it finished a while ago), unlike an unknown node, so
        it is not an error; ``sacct`` still knows it.
        """
        return next((job for job in self.jobs() if job.job_id == job_id), None)


def _import_pyslurm() -> ModuleType | None:
    try:
        return importlib.import_module("pyslurm")
    except (ImportError, OSError):  # not installed, or built against another libslurm
        return None


# --- optional pyslurm backend (untested here: PyPI's pyslurm cannot be built on 22.05) ----


class _PyslurmReader(SlurmReader):  # pragma: no cover
    """Reads through pyslurm 22.5's dict API (``node().get()``, ``job().get()``) into the same
    dataclasses, by mapping its keys onto the ``--json`` ones and reusing the parsers."""

    backend: ClassVar[Backend] = "pyslurm"

    def __init__(self, runner: Runner, module: ModuleType) -> None:
        super().__init__(runner)
        self._pyslurm = module

    def _load(self, kind: str) -> list[Mapping[str, Any]]:
        try:
            records = getattr(self._pyslurm, kind)().get()
        except Exception as exc:  # pyslurm raises plain ValueError/RuntimeError
            raise SlurmError(f"pyslurm could not load {kind}s: {exc}") from exc
        if not isinstance(records, dict):
            raise SlurmError(f"pyslurm returned {type(records).__name__} for {kind}s")
        return [r for r in records.values() if isinstance(r, dict)]

    def nodes(self) -> list[SlurmNode]:
        nodes = []
        for rec in self._load("node"):
            base, *flags = str(rec.get("state") or "UNKNOWN").split("+")
            entry = {
                "name": rec.get("name"),
                "state": base,
                "state_flags": flags,
                "cpus": rec.get("cpus"),
                "alloc_cpus": rec.get("alloc_cpus"),
                "real_memory": rec.get("real_memory"),
                "alloc_memory": rec.get("alloc_mem"),
                "partitions": list(rec.get("partitions") or []),
                "reason": rec.get("reason"),
                "address": rec.get("node_addr"),
                "hostname": rec.get("node_hostname"),
            }
            nodes.append(node_from_entry(entry, "pyslurm"))
        return nodes

    def jobs(self) -> list[SlurmJob]:
        jobs = []
        for rec in self._load("job"):
            entry = dict(rec)
            entry["array_task_string"] = rec.get("array_task_str")
            entry["user_name"] = None
            status, _, sig = str(rec.get("exit_code") or "").partition(":")  # "exit:signal"
            if sig.isdigit() and int(sig):
                entry["exit_code"] = int(sig)
            else:
                entry["exit_code"] = int(status) << 8 if status.isdigit() else None
            jobs.append(job_from_entry(entry, "pyslurm"))
        return jobs
