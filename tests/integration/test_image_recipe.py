"""The AWS image recipe run for real by Ansible on this Debian 12 machine, in check mode.

The builder runs exactly this (``ansible-playbook -c local``) without ``--check``. Check mode
changes nothing here, yet Ansible still resolves every package of the recipe against
Debian's archive (a misspelt or missing package fails) and runs every task's logic.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from clusterkit.providers.aws import imagerecipe
from tests.unit.test_image import _unpack

ANSIBLE_PLAYBOOK = str(Path(sys.executable).with_name("ansible-playbook"))


def test_recipe_runs_in_check_mode_on_debian_12(tmp_path: Path) -> None:
    _unpack(imagerecipe.builder_user_data("check"), tmp_path)
    result = subprocess.run(
        [ANSIBLE_PLAYBOOK, "-c", "local", "-i", "localhost,", "--check", "bake.yml",
         "-e", "ansible_python_interpreter=/usr/bin/python3"],
        cwd=tmp_path,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(tmp_path),
             "ANSIBLE_ROLES_PATH": str(tmp_path / "roles"), "ANSIBLE_NOCOLOR": "1"},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    recap = re.search(r"localhost\s*:\s*ok=(\d+)\s+changed=\d+\s+unreachable=0\s+failed=0",
                      result.stdout)  # fmt: skip
    assert recap, result.stdout[-2000:]
    # Every task of the recipe ran or was skipped for a stated reason; none was left out.
    for task in (
        "Install the node image's packages",
        "Install the image's own packages",
        "Remove the munge key the package made",
        "Remove the builder's SSH host keys",
    ):
        assert f"TASK [{task}" in result.stdout or f"TASK [common : {task}" in result.stdout
    assert list(Path("/etc/ssh").glob("ssh_host_*")), "check mode must not have removed host keys"
