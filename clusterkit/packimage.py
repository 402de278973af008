"""The image of a pack's containers (``pack submit --container IMAGE``), on the host's side:
where it is, and the head's script that unpacks it once into the pack.

IMAGE is a root file system: a directory or a tar archive (plain, gzip, xz, bzip2 or zstd),
such as ``docker export`` of a container or ``tar -C rootfs -c .``. A path that exists on
this machine is streamed to the head as a tar in one SSH session; any other is a path on the
cluster's shared storage (relative to the user's home), unpacked there. Either way it lands
in ``~/ck-pack/.staging/PACK/rootfs`` first and moves into the pack (``image/rootfs``) only
when the pack's arrays are submitted, so a failed submission leaves no image behind. The
copy is the user's own, and the mount points a task's container needs are made in it here,
once, rather than by the first containers of every node at the same time.
"""

from __future__ import annotations

import contextlib
import shlex
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from clusterkit.nodetools.packcontainer import MOUNTPOINTS, NODE_FILES, ROOTFS
from clusterkit.nodetools.packdir import ROOT_NAME, PackError

STAGING = ".staging"  # under ~/ck-pack: images of packs being submitted
# The first bytes of a compressed tar, and GNU tar's option that reads it.
_MAGIC = {
    b"\x1f\x8b": "--gzip",
    b"\xfd7zXZ\x00": "--xz",
    b"BZh": "--bzip2",
    b"\x28\xb5\x2f\xfd": "--zstd",
}
_NOT_ROOTFS = (
    "not a root file system (no bin/ or usr/ at its top); give a directory, or a tar of "
    "one: `docker export CONTAINER > image.tar`, or `tar -C rootfs -c . > image.tar`"
)


@dataclass(frozen=True)
class ImageSource:
    """Where ``--container IMAGE`` is: ``local`` on this machine (``directory`` or a tar,
    ``compression`` its tar option), else a path on the cluster."""

    image: str
    local: Path | None = None
    directory: bool = False
    compression: str = ""


def find(image: str) -> ImageSource:
    """IMAGE as given: on this machine if it exists here (checked), else on the cluster
    (checked there, by ``stage_script``)."""
    if not image.strip():
        raise PackError("--container: give a directory or tar archive of a root file system")
    path = Path(image).expanduser()
    if not path.exists():
        return ImageSource(image)
    if path.is_dir():
        if not any((path / top).exists() for top in ("bin", "usr")):
            raise PackError(f"--container {image}: {_NOT_ROOTFS}")
        return ImageSource(image, path.resolve(), directory=True)
    try:
        with path.open("rb") as fh:
            head = fh.read(512)
    except OSError as exc:
        raise PackError(f"--container {image}: cannot read it ({exc.strerror})") from None
    for magic, option in _MAGIC.items():
        if head.startswith(magic):
            return ImageSource(image, path.resolve(), compression=option)
    if head[257:262] == b"ustar":
        return ImageSource(image, path.resolve())
    raise PackError(f"--container {image}: neither a directory nor a tar archive")


def staging_dir(pack: str) -> str:
    """The image's staging directory on the cluster, as a shell word."""
    return f'"$HOME"/{ROOT_NAME}/{STAGING}/{shlex.quote(pack)}'


def stage_script(pack: str, source: ImageSource, chdir: str | None) -> str:
    """The head's script that unpacks the image into the staging directory (from stdin
    when it is on this machine), checks it and makes its mount points: ``/proc`` and the
    others of ``MOUNTPOINTS``, the pack's directory and ``chdir``. A failure removes it."""
    staging = staging_dir(pack)
    rootfs = f"{staging}/rootfs"
    pack_dir = f'"$HOME"/{ROOT_NAME}/{shlex.quote(pack)}'
    # Device nodes cannot be made without root; a container's /dev is a tmpfs anyway.
    untar = f"tar -x -C {rootfs} --no-same-owner --anchored --exclude=./dev/* --exclude=dev/*"
    if source.local is not None:
        unpack = f"{untar} {source.compression} -f -".replace("  ", " ")
    else:
        src = shlex.quote(source.image)
        missing = (
            f"--container {source.image}: no such directory or tar archive on this machine "
            "or on the cluster"
        )
        unpack = (
            f"cd; [ -e {src} ] || {{ echo {shlex.quote(missing)} >&2; exit 3; }}; "
            f"if [ -d {src} ]; then tar -c -C {src} . | {untar} -f -; else {untar} -f {src}; fi"
        )
    not_rootfs = shlex.quote(f"--container {source.image}: {_NOT_ROOTFS}")
    points = " ".join(f"{rootfs}/{d}" for d in MOUNTPOINTS)
    files = " ".join(f"{rootfs}{f}" for f in NODE_FILES)
    workdirs = f'{rootfs}"$(realpath -m {pack_dir})"'
    if chdir:  # the runner's own directory is the pack's: a relative --chdir is from there
        where = shlex.quote(chdir) if chdir.startswith("/") else f"{pack_dir}/{shlex.quote(chdir)}"
        workdirs += f' {rootfs}"$(realpath -m {where})"'
    return "; ".join((
        "set -e -o pipefail; umask 022",
        f"[ ! -e {pack_dir} ] || {{ echo 'pack {pack} already exists; choose another --name' "
        ">&2; exit 3; }",
        "command -v crun > /dev/null || { echo 'crun is not installed on the cluster (apt "
        "install crun; clusterkit installs it on its nodes)' >&2; exit 3; }",
        f"rm -rf {staging}; mkdir -p {rootfs}; trap 'rm -rf {staging}' EXIT",
        unpack,
        f"[ -e {rootfs}/bin ] || [ -e {rootfs}/usr ] || {{ echo {not_rootfs} >&2; false; }}",
        f"for d in {points}; do [ -e $d ] || [ -L $d ] || mkdir $d; done",
        f"for f in {files}; do [ -e $f ] || [ -L $f ] || : > $f; done",
        f"mkdir -p {workdirs}",
        # the user can remove the pack later, read-only directories of the image included
        f"find {rootfs} -type d ! -perm -u+w -exec chmod u+w {{}} +",
        "trap - EXIT",
    ))  # fmt: skip


def adopt_script(pack: str) -> str:
    """The submit script's step that moves the staged image into the pack (its cwd)."""
    staging = staging_dir(pack)
    return (
        f"mkdir -p {Path(ROOTFS).parent} && mv {staging}/rootfs {ROOTFS} && rm -rf {staging} && "
        f'rmdir --ignore-fail-on-non-empty "$HOME"/{ROOT_NAME}/{STAGING}'
    )


@contextlib.contextmanager
def stream(source: ImageSource) -> Iterator[IO[bytes] | None]:
    """What the staging script reads on stdin: the tarball, a tar of the directory made
    as it is sent (``tar -c``, so an image of any size streams), or nothing (on the
    cluster). A failure of that ``tar`` is the error, rather than the head's complaint of a
    short archive."""
    if source.local is None:
        yield None
        return
    if not source.directory:
        with source.local.open("rb") as fh:
            yield fh
        return
    with tempfile.TemporaryFile() as errors:  # a file: a pipe unread could stall tar
        tar = subprocess.Popen(
            ["tar", "-c", "-C", str(source.local), "--anchored", "--exclude=./dev/*", "."],
            stdout=subprocess.PIPE,
            stderr=errors,
        )
        assert tar.stdout is not None  # noqa: S101 - stdout is a pipe
        try:
            yield tar.stdout
        finally:
            tar.stdout.close()
            code = tar.wait()
            errors.seek(0)
            lines = [ln for ln in errors.read().decode(errors="replace").splitlines()
                     if ln.strip() and "Broken pipe" not in ln]  # fmt: skip
            # tar's exit 1 is a file that changed as it was read; 2, a file it could not read
            if code >= 2 and lines:
                raise PackError(f"--container {source.image}: {lines[-1]}")
