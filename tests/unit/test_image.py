"""The AWS image recipe as the builder receives it: packed, rendered, and valid."""

from __future__ import annotations

import base64
import io
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from clusterkit.providers.aws import imagebuild, imagerecipe
from clusterkit.providers.aws.launchdata import USER_DATA_LIMIT

ANSIBLE_PLAYBOOK = str(Path(sys.executable).with_name("ansible-playbook"))
RECIPE = imagerecipe.recipe_dir()


def _unpack(user_data: str, into: Path) -> None:
    packed = re.search(r"<<'CK_RECIPE_EOF'.*?\n(.*?)\nCK_RECIPE_EOF", user_data, re.S)
    assert packed, "no recipe archive in the user-data"
    archive = base64.b64decode(packed.group(1))
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        tar.extractall(into, filter="data")


def test_the_recipe_archive_depends_on_contents_only() -> None:
    first, second = imagerecipe.recipe_archive(), imagerecipe.recipe_archive()
    assert first == second and imagerecipe.recipe_id(first) == imagerecipe.recipe_id(second)
    with tarfile.open(fileobj=io.BytesIO(first), mode="r:gz") as tar:
        names = tar.getnames()
    assert names[0] == "bake.yml"
    assert "roles/common/tasks/main.yml" in names and "roles/common/defaults/main.yml" in names


def test_builder_user_data_carries_the_recipe_and_powers_off_only_when_done(
    tmp_path: Path,
) -> None:
    text = imagerecipe.builder_user_data("b1")
    assert len(text.encode()) < USER_DATA_LIMIT
    subprocess.run(["bash", "-n"], input=text, text=True, check=True)
    _unpack(text, tmp_path)
    assert (tmp_path / "bake.yml").read_bytes() == (RECIPE / "bake.yml").read_bytes()
    lines = text.strip().splitlines()
    # Done is said, then the poweroff that stops the builder; a failure exits before both.
    assert lines[-2:] == ['say "done"', "systemctl poweroff"]
    assert 'fail() { say "failed: $1"; exit 1; }' in text
    assert "PRIVATE KEY" not in text and "munge.key" not in text


def test_bake_playbook_passes_ansible_syntax_check(tmp_path: Path) -> None:
    _unpack(imagerecipe.builder_user_data("b1"), tmp_path)
    result = subprocess.run(
        [ANSIBLE_PLAYBOOK, "--syntax-check", "-i", "localhost,", "-c", "local", "bake.yml"],
        cwd=tmp_path,
        env={
            "PATH": "/usr/bin:/bin",
            "ANSIBLE_ROLES_PATH": str(tmp_path / "roles"),
            "HOME": str(tmp_path),
        },
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("console", "reason"),
    [
        ("boot\nclusterkit-bake: started (recipe x)\nclusterkit-bake: failed: apt-get update\n",
         "apt-get update"),
        ("[  12.3] cloud-init[500]: clusterkit-bake: failed: the recipe (bake.yml)\n",
         "the recipe (bake.yml)"),
        ("clusterkit-bake: started (recipe x)\nclusterkit-bake: done\n", None),
        ("", None),
    ],
)  # fmt: skip
def test_bake_failure_is_read_from_the_console(console: str, reason: str | None) -> None:
    assert imagerecipe.bake_failure(console) == reason


def test_image_names_are_checked() -> None:
    assert imagebuild.NAME_RE.match(imagebuild.default_name())
    assert not imagebuild.NAME_RE.match("x") and not imagebuild.NAME_RE.match("a" * 129)
