"""The recipe of AWS node images and what the builder instance runs: ``bake.yml`` and the
roles it uses (``images/aws/``, ``playbooks/roles``) packed into a reproducible archive, its
id, the builder's user-data that carries it, and reading a failed bake from the console.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import tarfile
from pathlib import Path

from clusterkit.providers.aws.image import ImageError
from clusterkit.providers.aws.launchdata import USER_DATA_LIMIT
from clusterkit.render import render_file
from clusterkit.resources import images_dir, playbook_dir

FAILED_MARKER = "clusterkit-bake: failed: "
ROLES = ("common",)  # the playbook roles bake.yml uses


def recipe_dir() -> Path:
    return images_dir() / "aws"


def recipe_archive() -> bytes:
    """bake.yml and its roles as a tar.gz, byte for byte the same for the same files."""
    buf = io.BytesIO()
    entries = [(recipe_dir() / "bake.yml", "bake.yml")]
    roles = playbook_dir() / "roles"
    for role in ROLES:
        for path in sorted((roles / role).rglob("*")):
            if path.is_file() and not any(p.startswith((".", "__")) for p in path.parts):
                entries.append((path, f"roles/{path.relative_to(roles)}"))
    # Time stamps 0 (the gzip header's too): the archive, and the recipe id, depend on the
    # files' contents only.
    with (
        gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=9, mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for path, arcname in entries:
            info = tarfile.TarInfo(arcname)
            data = path.read_bytes()
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def recipe_id(archive: bytes | None = None) -> str:
    """A short digest of the recipe: images baked from the same recipe share it."""
    return hashlib.sha256(archive if archive is not None else recipe_archive()).hexdigest()[:12]


def builder_user_data(build_id: str) -> str:
    archive = recipe_archive()
    encoded = base64.b64encode(archive).decode()
    text = render_file(
        recipe_dir() / "builder.sh.j2",
        build_id=build_id,
        recipe_id=recipe_id(archive),
        recipe_archive="\n".join(encoded[i : i + 76] for i in range(0, len(encoded), 76)),
    )
    if len(text.encode()) > USER_DATA_LIMIT:
        raise ImageError(
            f"the image builder's user-data is {len(text.encode())} bytes, over AWS's 16 KiB: "
            "the recipe (images/aws) has grown too large"
        )
    return text


def bake_failure(console: str) -> str | None:
    """The reason a builder's console gives for a failed bake, if it gives one."""
    for line in reversed(console.splitlines()):
        at = line.find(FAILED_MARKER)
        if at >= 0:
            return line[at + len(FAILED_MARKER) :].strip() or "unknown step"
    return None
