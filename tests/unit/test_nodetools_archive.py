"""The node tools as nodes get them: the archive on shared storage, run by the system python3.

Nodes have Debian's python3 and python3-jinja2, not the controller's venv, and only what the
archive holds of the package. Every node tool module must import there (isolated: no
PYTHONPATH, no user site-packages), and templates must render from it (the machinefile does
so inside jobs). What they may import at all is an import contract (``make lint``).
"""

from __future__ import annotations

import subprocess
import tarfile
from pathlib import Path

import pytest

from clusterkit.archive import write_nodetools_archive

SYSTEM_PYTHON = Path("/usr/bin/python3")
CHECK = """
import sys
sys.path.insert(0, "lib")  # -I leaves PYTHONPATH and the user's site-packages out
import importlib, pkgutil
import clusterkit.nodetools as tools
for mod in pkgutil.iter_modules(tools.__path__):
    importlib.import_module(f"clusterkit.nodetools.{mod.name}")
from clusterkit.render import render
print(render("slurm/task-prolog.sh.j2", cluster="c", checkpoint_dir="/x", max_restarts=1,
             checkpoint_signal="USR1", region=None).count('echo "export'))
"""


@pytest.mark.skipif(not SYSTEM_PYTHON.exists(), reason="no system python3")
def test_node_tools_import_and_render_from_the_archive(tmp_path: Path) -> None:
    archive = tmp_path / "nodetools.tar.gz"
    write_nodetools_archive(archive)
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path / "lib", filter="data")
    result = subprocess.run(
        [str(SYSTEM_PYTHON), "-I", "-c", CHECK],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "3"
