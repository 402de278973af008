"""`up` run by an unprivileged user fails with one line, and creates nothing."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.driver import CK, Clusterkit


def test_up_without_root_says_so(ck: Clusterkit) -> None:
    # Readable by nobody: pytest's own temp root is private to root.
    shared = Path(tempfile.mkdtemp(prefix="ck-noroot-"))
    os.chmod(shared, 0o755)  # noqa: S103 - the unprivileged user must read the spec
    spec = shared / "noroot.yaml"
    spec.write_text(ck.spec("noroot", 1).read_text())
    home = shared / "home"
    proc = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
         CK, "up", "-f", str(spec)],
        env={**ck.env, "CLUSTERKIT_HOME": str(home), "HOME": "/nonexistent"},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: the local provider needs root")
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not home.exists()  # nothing half-created
    shutil.rmtree(shared)
