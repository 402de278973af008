"""``make lint``'s check that the core never names a provider: no comparison with a provider's
kind (``spec.provider == "aws"``, ``kind in ("local", ...)``, ``case "local":``) outside the
places whose job is to name them. A difference between providers belongs behind
``providers/base.py`` (a trait, a class attribute, a method); see CONTRIBUTING.md.

Run as ``python -m tests.provider_names``; exits 1 listing each finding as ``path:line: code``.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable
from pathlib import Path

from clusterkit.providers import KINDS

ROOT = Path(__file__).resolve().parent.parent / "clusterkit"
# Where naming providers is the job: the providers themselves, the spec's schema (one section
# per provider), and the nodes' registry of cloud backends (cloud.json's ``kind``).
ALLOWED = ("providers/", "spec.py", "nodetools/clouds.py")


def _names_a_kind(node: ast.expr) -> bool:
    items = node.elts if isinstance(node, ast.Tuple | ast.List | ast.Set) else [node]
    return any(isinstance(i, ast.Constant) and i.value in KINDS for i in items)


def findings_in(source: str, where: str) -> list[str]:
    """Each place in ``source`` that compares something with a provider's kind."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare) and any(
            _names_a_kind(side) for side in (node.left, *node.comparators)
        ):
            found.append(f"{where}:{node.lineno}: {ast.unparse(node)}")
        elif isinstance(node, ast.MatchValue) and _names_a_kind(node.value):
            found.append(f"{where}:{node.lineno}: case {ast.unparse(node.value)}")
    return found


def core_modules(root: Path = ROOT) -> Iterable[Path]:
    for path in sorted(root.rglob("*.py")):
        if not path.relative_to(root).as_posix().startswith(ALLOWED):
            yield path


def main() -> int:
    found = [
        f
        for path in core_modules()
        for f in findings_in(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT.parent)))
    ]
    for line in found:
        print(f"{line}  (a provider named in the core: make it a trait or a Provider method)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
