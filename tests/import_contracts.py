"""An import-linter contract of clusterkit's own: what ships to the nodes imports only what
the nodes have (``make lint`` runs it with the others in pyproject.toml).

Node tools run with the node's system python3 from the archive on shared storage, so every
module the archive ships (``clusterkit.archive.ARCHIVE``, the same list that builds the
archive) may import only other shipped modules, the standard library and
``clusterkit.archive.NODE_PACKAGES``. Imports inside functions count too.
"""

from __future__ import annotations

import sys
from typing import Any

from importlinter import Contract, ContractCheck, output

from clusterkit.archive import NODE_PACKAGES, archive_modules


class NodeArchiveContract(Contract):
    def check(self, graph: Any, verbose: bool) -> ContractCheck:
        shipped = set()
        for top in archive_modules():
            shipped.add(top)
            if top != "clusterkit":
                shipped |= set(graph.find_descendants(top))
        allowed_external = set(sys.stdlib_module_names) | set(NODE_PACKAGES)
        bad = []
        for module in sorted(shipped):
            for imported in sorted(graph.find_modules_directly_imported_by(module)):
                top = imported.split(".")[0]
                inside = imported in shipped or imported.rsplit(".", 1)[0] in shipped
                if top == "clusterkit" and not inside:
                    bad.append(f"{module} imports {imported}, which the archive does not ship")
                elif top != "clusterkit" and top not in allowed_external:
                    bad.append(f"{module} imports {imported}, which nodes do not have")
        return ContractCheck(kept=not bad, metadata={"bad": bad})

    def render_broken_contract(self, check: ContractCheck) -> None:
        for line in check.metadata["bad"]:
            output.print_error(line)
            output.new_line()
