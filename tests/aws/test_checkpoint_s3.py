"""ck-checkpoint with an ``s3://`` store, against the moto server (real HTTP, real boto3)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clusterkit.nodetools import checkpoint
from clusterkit.nodetools.checkpoint import CheckpointError, Checkpoints
from clusterkit.nodetools.spot import Handler, RunningJob, SpotConfig

from .conftest import REGION, Aws


def test_s3_store_saves_restores_and_keeps_two(aws: Aws, tmp_path: Path) -> None:
    s3 = aws.client("s3")
    s3.create_bucket(Bucket="ck-ckpt",
                     CreateBucketConfiguration={"LocationConstraint": REGION})  # fmt: skip
    store = "s3://ck-ckpt/demo/42"
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "w.bin").write_bytes(b"\x01\x02")
    ck = Checkpoints(store)
    for step in range(3):
        (tmp_path / "state.json").write_text(json.dumps({"step": step}))
        saved = ck.save([tmp_path / "state.json", tmp_path / "model"])
    assert saved.location == "s3://ck-ckpt/demo/42/ckpt-000003"
    assert [c.seq for c in ck.list()] == [2, 3]
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="ck-ckpt")["Contents"])
    assert keys == [
        f"demo/42/ckpt-00000{n}/{name}"
        for n in (2, 3) for name in ("ck-meta.json", "model/w.bin", "state.json")
    ]  # fmt: skip
    out = tmp_path / "out"
    assert ck.restore(out) is not None
    assert json.loads((out / "state.json").read_text()) == {"step": 2}
    assert (out / "model" / "w.bin").read_bytes() == b"\x01\x02"


def test_s3_checkpoint_without_its_meta_is_incomplete(aws: Aws, tmp_path: Path) -> None:
    s3 = aws.client("s3")
    s3.create_bucket(Bucket="ck-ckpt",
                     CreateBucketConfiguration={"LocationConstraint": REGION})  # fmt: skip
    # What a save killed before its last write leaves: data, no ck-meta.json.
    s3.put_object(Bucket="ck-ckpt", Key="demo/7/ckpt-000001/state.json", Body=b"{}")
    assert Checkpoints("s3://ck-ckpt/demo/7").latest() is None
    assert checkpoint.main(["--dir", "s3://ck-ckpt/demo/7", "restore", "--to", str(tmp_path)]) == 1


def test_a_failed_s3_call_is_a_checkpoint_error(
    aws: Aws, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No such bucket (or no access): one line from ck-checkpoint, and the Spot agent goes on
    as if there were no checkpoint instead of dying in the middle of an interruption."""
    store = "s3://ck-missing/checkpoints/demo/ann/12"
    with pytest.raises(
        CheckpointError, match=r"^s3://ck-missing/checkpoints/demo/ann/12: .*NoSuchBucket"
    ):
        Checkpoints(store).latest()
    (tmp_path / "state.json").write_text("{}")
    assert checkpoint.main(["--dir", store, "save", str(tmp_path / "state.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ck-checkpoint: s3://ck-missing/") and err.count("\n") == 1
    config = SpotConfig(cluster="demo", checkpoint_dir="s3://ck-missing/checkpoints/demo/{user}/{job}",
                        events_dir=str(tmp_path), region=REGION)  # fmt: skip
    assert Handler(config)._latest_checkpoint(RunningJob("12", "ann", 0.0, 0)) is None
