"""Checkpoints of a job: ``ck-checkpoint save|restore|path|list`` and the same as a Python API.

Every job of a clusterkit cluster has ``CK_CHECKPOINT_DIR`` in its environment (set by the
cluster's TaskProlog): a directory on shared storage, ``~/checkpoints/CLUSTER/JOBID``
(``JOBID_TASK`` for an array task), or an ``s3://bucket/prefix`` URL. A checkpoint is a set of
files saved together as ``ckpt-NNNNNN`` with a ``ck-meta.json`` (time, job, restart count).

Writes are atomic: a checkpoint is written under a temporary name and renamed into place
(on S3 its ``ck-meta.json`` is written last and marks it complete), so a job killed while
saving leaves the previous checkpoint intact. The newest checkpoint and the one before it are
kept. From Python (the node's ``python3``)::

    import sys; sys.path.append("/shared/clusterkit/lib")
    from clusterkit.nodetools.checkpoint import Checkpoints
    ck = Checkpoints()
    state = ck.load_json() or {"step": 0}
    ...
    ck.save_json(state)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from clusterkit.errors import ClusterkitError

ENV = "CK_CHECKPOINT_DIR"
META = "ck-meta.json"
PREFIX = "ckpt-"
KEEP = 2  # the newest checkpoint and the one before it
STALE_TEMP_SECONDS = 600.0  # a temporary checkpoint this old was left by a killed save


class CheckpointError(ClusterkitError):
    """A checkpoint could not be saved or read; the message says what to do."""


@dataclass(frozen=True)
class Checkpoint:
    seq: int
    time: float  # when it was saved (epoch seconds)
    location: str  # its directory or s3:// prefix
    job: str = ""
    restart_count: int = 0


class Store(Protocol):
    def checkpoints(self) -> list[Checkpoint]: ...
    def save(self, sources: Sequence[Path], meta: dict[str, Any], seq: int) -> Checkpoint: ...
    def restore(self, checkpoint: Checkpoint, dest: Path) -> None: ...
    def delete(self, checkpoint: Checkpoint) -> None: ...


class Checkpoints:
    """The checkpoints of one job, in the store ``where`` (default: ``$CK_CHECKPOINT_DIR``);
    ``region`` is an S3 store's (default: boto3's, e.g. ``$AWS_DEFAULT_REGION``)."""

    def __init__(self, where: str | None = None, region: str | None = None) -> None:
        where = where or os.environ.get(ENV, "")
        if not where:
            raise CheckpointError(
                f"{ENV} is not set: run inside a job of a clusterkit cluster, or pass a directory"
            )
        self.where = where
        self.store: Store = (
            S3Store(where, region) if where.startswith("s3://") else FileStore(Path(where))
        )

    def list(self) -> list[Checkpoint]:
        return sorted(self.store.checkpoints(), key=lambda c: c.seq)

    def latest(self) -> Checkpoint | None:
        found = self.list()
        return found[-1] if found else None

    def save(self, paths: Sequence[str | Path]) -> Checkpoint:
        """Save files and directories (each under its own name) as the newest checkpoint."""
        sources = [Path(p) for p in paths]
        missing = [str(p) for p in sources if not p.exists()]
        if missing:
            raise CheckpointError(f"cannot save {', '.join(missing)}: no such file or directory")
        names = [p.name for p in sources]
        if len(set(names)) != len(names) or META in names:
            raise CheckpointError(f"names to save must be distinct and not {META}: {names}")
        before = self.list()
        seq = before[-1].seq + 1 if before else 1
        meta = {
            "time": time.time(),
            "job": _job_id(),
            "restart_count": int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0),
            "host": socket.gethostname(),
            "files": names,
        }
        saved = self.store.save(sources, meta, seq)
        for old in self.list()[:-KEEP]:
            self.store.delete(old)
        return saved

    def save_json(self, data: Any, name: str = "state.json") -> Checkpoint:
        """Save ``data`` as JSON in a checkpoint of its own (one file, ``name``)."""
        tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"ck-{uuid.uuid4().hex}"
        tmp.mkdir(mode=0o700)
        try:
            (tmp / name).write_text(json.dumps(data), encoding="utf-8")
            return self.save([tmp / name])
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def restore(self, dest: str | Path = ".") -> Checkpoint | None:
        """Copy the newest checkpoint's files into ``dest``; None when there is none yet."""
        newest = self.latest()
        if newest is not None:
            Path(dest).mkdir(parents=True, exist_ok=True)
            self.store.restore(newest, Path(dest))
        return newest

    def load_json(self, name: str = "state.json") -> Any | None:
        """The JSON ``save_json`` saved last, or None when there is no checkpoint yet."""
        tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"ck-{uuid.uuid4().hex}"
        try:
            if self.restore(tmp) is None:
                return None
            return json.loads((tmp / name).read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise CheckpointError(f"the newest checkpoint has no {name}") from exc
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _job_id() -> str:
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return os.environ.get("SLURM_JOB_ID", "")


def _checkpoint(seq: int, location: str, meta: dict[str, Any]) -> Checkpoint:
    return Checkpoint(
        seq=seq, time=float(meta.get("time", 0.0)), location=location,
        job=str(meta.get("job", "")), restart_count=int(meta.get("restart_count", 0)),
    )  # fmt: skip


def _seq(name: str) -> int | None:
    digits = name[len(PREFIX) :]
    return int(digits) if name.startswith(PREFIX) and digits.isdigit() else None


# ---------------------------------------------------------------------------------------------
# Stores


class FileStore:
    """Checkpoints as directories on a (shared) file system."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def checkpoints(self) -> list[Checkpoint]:
        found = []
        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            return []
        for entry in entries:
            seq = _seq(entry.name)
            if seq is None:
                continue
            try:
                meta = json.loads(Path(entry.path, META).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue  # being deleted, or not ours
            found.append(_checkpoint(seq, entry.path, meta))
        return found

    def save(self, sources: Sequence[Path], meta: dict[str, Any], seq: int) -> Checkpoint:
        self.root.mkdir(parents=True, exist_ok=True)
        self._remove_stale_temps()
        tmp = self.root / f".tmp-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            for src in sources:
                if src.is_dir():
                    shutil.copytree(src, tmp / src.name, symlinks=True)
                else:
                    shutil.copy2(src, tmp / src.name)
            (tmp / META).write_text(json.dumps(meta), encoding="utf-8")
            while True:
                target = self.root / f"{PREFIX}{seq:06d}"
                try:
                    # One rename: readers see all of the checkpoint or none of it.
                    os.rename(tmp, target)
                    break
                except OSError:
                    if not target.exists():
                        raise
                    seq += 1  # another save of this job took the number first
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return _checkpoint(seq, str(target), meta)

    def _remove_stale_temps(self) -> None:
        now = time.time()
        for entry in os.scandir(self.root):
            if entry.name.startswith(".tmp-"):
                try:
                    if now - entry.stat().st_mtime > STALE_TEMP_SECONDS:
                        shutil.rmtree(entry.path, ignore_errors=True)
                except OSError:
                    continue

    def restore(self, checkpoint: Checkpoint, dest: Path) -> None:
        src = Path(checkpoint.location)
        for entry in src.iterdir():
            if entry.name == META:
                continue
            if entry.is_dir():
                shutil.copytree(entry, dest / entry.name, symlinks=True, dirs_exist_ok=True)
            else:
                shutil.copy2(entry, dest / entry.name)

    def delete(self, checkpoint: Checkpoint) -> None:
        # Renamed away first, so a reader never lists a checkpoint that is half deleted.
        doomed = Path(checkpoint.location)
        trash = doomed.with_name(f".tmp-del-{doomed.name}-{uuid.uuid4().hex[:8]}")
        try:
            os.rename(doomed, trash)
        except OSError:
            return
        shutil.rmtree(trash, ignore_errors=True)


class S3Store:
    """Checkpoints as objects under ``s3://bucket/prefix/ckpt-NNNNNN/``. A failed S3 call
    (no access, no such bucket, no network) is a ``CheckpointError`` naming the store."""

    def __init__(self, url: str, region: str | None = None) -> None:
        bucket, _, prefix = url[len("s3://") :].partition("/")
        if not bucket:
            raise CheckpointError(f"{url}: an s3 store is s3://BUCKET/PREFIX")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        try:
            import boto3  # noqa: PLC0415 - optional: only s3 stores need it
            from botocore.exceptions import BotoCoreError, ClientError  # noqa: PLC0415
        except ImportError as exc:
            raise CheckpointError("s3:// checkpoint stores need boto3 on the node") from exc
        self.failures: tuple[type[Exception], ...] = (BotoCoreError, ClientError)
        self.s3 = boto3.client("s3", region_name=region)

    @contextlib.contextmanager
    def _calls(self) -> Iterator[None]:
        try:
            yield
        except self.failures as exc:
            where = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
            raise CheckpointError(f"{where}: {' '.join(str(exc).split())}") from exc

    def _key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    def checkpoints(self) -> list[Checkpoint]:
        found = []
        with self._calls():
            pages = self.s3.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self._key(PREFIX)
            )
            for page in pages:
                for obj in page.get("Contents", []):
                    key = str(obj["Key"])
                    name, _, rest = key[len(self._key()) :].lstrip("/").partition("/")
                    seq = _seq(name)
                    if seq is None or rest != META:
                        continue
                    body = self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
                    location = f"s3://{self.bucket}/{self._key(name)}"
                    found.append(_checkpoint(seq, location, json.loads(body)))
        return found

    def save(self, sources: Sequence[Path], meta: dict[str, Any], seq: int) -> Checkpoint:
        name = f"{PREFIX}{seq:06d}"
        with self._calls():
            for src in sources:
                files = [src] if src.is_file() else sorted(p for p in src.rglob("*") if p.is_file())
                for path in files:
                    rel = path.relative_to(src.parent).as_posix()
                    self.s3.upload_file(str(path), self.bucket, self._key(name, rel))
            # Written last: a checkpoint without its meta is incomplete and never listed.
            body = json.dumps(meta)
            self.s3.put_object(Bucket=self.bucket, Key=self._key(name, META), Body=body)
        return _checkpoint(seq, f"s3://{self.bucket}/{self._key(name)}", meta)

    def _objects(self, checkpoint: Checkpoint) -> list[str]:
        prefix = checkpoint.location[len(f"s3://{self.bucket}/") :] + "/"
        keys: list[str] = []
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        for page in pages:
            keys += [str(o["Key"]) for o in page.get("Contents", [])]
        return keys

    def restore(self, checkpoint: Checkpoint, dest: Path) -> None:
        prefix = checkpoint.location[len(f"s3://{self.bucket}/") :] + "/"
        with self._calls():
            for key in self._objects(checkpoint):
                rel = key[len(prefix) :]
                if rel == META:
                    continue
                target = dest / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                self.s3.download_file(self.bucket, key, str(target))

    def delete(self, checkpoint: Checkpoint) -> None:
        with self._calls():
            keys = self._objects(checkpoint)
            # The meta goes first: from then on the checkpoint is no longer listed.
            keys.sort(key=lambda k: not k.endswith("/" + META))
            for start in range(0, len(keys), 1000):
                batch = [{"Key": k} for k in keys[start : start + 1000]]
                self.s3.delete_objects(Bucket=self.bucket, Delete={"Objects": batch})


# ---------------------------------------------------------------------------------------------
# ck-checkpoint


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ck-checkpoint",
        description="Save and restore a job's checkpoints (in $CK_CHECKPOINT_DIR).",
        epilog="Inside a job: 'ck-checkpoint save state.json' after each step, and at start "
        "'ck-checkpoint restore || echo fresh start'. restore exits 1 when there is none yet.",
    )
    parser.add_argument("--dir", help=f"the store (default: ${ENV}); a directory or s3:// URL")
    sub = parser.add_subparsers(dest="command", required=True)
    save = sub.add_parser("save", help="save files/directories as the newest checkpoint")
    save.add_argument("paths", nargs="+")
    restore = sub.add_parser("restore", help="copy the newest checkpoint's files here")
    restore.add_argument("--to", default=".", help="where to put them (default: .)")
    sub.add_parser("path", help="print the newest checkpoint's location (exit 1: none)")
    sub.add_parser("list", help="list the checkpoints kept")
    args = parser.parse_args(argv)
    try:
        return _command(Checkpoints(args.dir), args)
    except (CheckpointError, OSError) as exc:
        print(f"ck-checkpoint: {exc}", file=sys.stderr)
        return 2


def _command(ck: Checkpoints, args: argparse.Namespace) -> int:
    if args.command == "save":
        saved = ck.save(args.paths)
        print(saved.location)
        return 0
    if args.command == "list":
        for c in ck.list():
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(c.time))
            print(f"{c.seq}\t{stamp}\trestart {c.restart_count}\t{c.location}")
        return 0
    found = ck.restore(args.to) if args.command == "restore" else ck.latest()
    if found is None:
        print(f"ck-checkpoint: no checkpoint yet in {ck.where}", file=sys.stderr)
        return 1
    print(found.location)
    return 0


if __name__ == "__main__":
    sys.exit(main())
