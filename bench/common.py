"""What the benchmarks share: the CLI (through the tests' driver), a cluster for one run, and
the results table."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

# The repository's root, for the CLI driver the tests use too (bench/ itself is on sys.path).
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

from tests.driver import CK, Clusterkit, Result, sh

__all__ = [
    "CK", "Clusterkit", "Result", "ck", "last_line", "local_cluster", "need_root", "save_results",
    "sh", "table", "verdict",
]  # fmt: skip


def ck(home: Path, *args: str, stdin: str | None = None, timeout: float = 600) -> str:
    """``clusterkit ARGS`` with ``home`` as CLUSTERKIT_HOME; its stdout, or RuntimeError."""
    done = Clusterkit(home).run(*args, input=stdin, timeout=timeout, check=False)
    if done.rc != 0:
        raise RuntimeError(f"clusterkit {' '.join(args)}: {done.stderr.strip()[-500:]}")
    return done.stdout


@contextmanager
def local_cluster(spec: dict[str, Any], prefix: str) -> Iterator[Path]:
    """A cluster of ``spec`` in a home of its own, up for the block and always down after."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        home = Path(tmp)
        path = home / "spec.yaml"
        path.write_text(json.dumps(spec), encoding="utf-8")
        try:
            ck(home, "up", "-f", str(path))
            yield home
        finally:
            ck(home, "down", str(spec["name"]))


def last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1] if lines else ""


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def verdict(passed: bool) -> str:
    """A figure's column against its target."""
    return "PASS" if passed else "FAIL"


def need_root(name: str) -> bool:
    """False, after saying why, when this benchmark cannot run here (it builds clusters)."""
    if os.geteuid() == 0:
        return True
    print(f"{name}: needs root (namespaces, bridges)", file=sys.stderr)
    return False


def save_results(path: Path | None, results: Any) -> None:
    """A benchmark's results (a dataclass) as JSON at ``path``, if one was given."""
    if path:
        path.write_text(json.dumps(asdict(results), indent=2) + "\n", encoding="utf-8")
