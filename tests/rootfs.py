"""A small root file system made from this machine's own programs and the libraries they
link (no registry, no download): the image of the container tests."""

from __future__ import annotations

import shutil
import subprocess
import tarfile
from pathlib import Path

PROGRAMS = ("sh", "cat", "echo", "id", "ls", "sleep", "touch", "dd", "mkdir", "pwd")


def _libraries(program: str) -> list[str]:
    out = subprocess.run(["ldd", program], capture_output=True, text=True, check=False).stdout
    return [word for line in out.splitlines() for word in line.split() if word.startswith("/")]


def build_rootfs(root: Path, programs: tuple[str, ...] = PROGRAMS) -> Path:
    """``root`` as a root file system: ``bin/`` with ``programs`` and the libraries at
    their own paths."""
    (root / "bin").mkdir(parents=True, exist_ok=True)
    for name in programs:
        program = shutil.which(name, path="/usr/bin:/bin")
        if program is None:
            raise FileNotFoundError(name)
        shutil.copy2(program, root / "bin" / name)
        for lib in _libraries(program):
            target = root / lib.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                shutil.copy2(lib, target)
    return root


def build_image(path: Path, programs: tuple[str, ...] = PROGRAMS) -> Path:
    """A gzip'ed tar of such a root file system at ``path``, as ``tar -C rootfs -c .``."""
    rootfs = build_rootfs(path.parent / f"{path.name}.rootfs", programs)
    with tarfile.open(path, "w:gz") as tar:
        tar.add(rootfs, arcname=".")
    shutil.rmtree(rootfs)
    return path
