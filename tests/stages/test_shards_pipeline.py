"""The stages on shards in S3 (moto): ingest -> split -> train on 2 gloo ranks -> evaluate ->
threshold -> export, the same code as over files; a broken shard stops train before epoch 1."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import boto3
import pytest

from carinspect.config import (
    DataConfig,
    DemoConfig,
    IngestConfig,
    Settings,
    SplitConfig,
    load_params,
)
from carinspect.contracts.folders import EvaluateDir, ExportDir, ThresholdDir, TrainDir
from carinspect.contracts.shards import ShardIndex
from carinspect.stages import evaluate, export, ingest, split, threshold, train
from carinspect.stages.train import TrainError
from tests.conftest import VENV_BIN, tiny_params


def _prepare(root: Path, shards: str) -> tuple[Path, Path]:
    data = DataConfig(
        source="demo", demo=DemoConfig(per_class=24, broken=False), format="shards", shards=shards
    )
    ingest.run(data, IngestConfig(short_side=40, shard_mb=0.05), root / "ingest")
    result = split.run(
        SplitConfig(train=0.6, val=0.2, test=0.2), root / "ingest" / "manifest.csv", root / "split"
    )
    return root / "ingest", result.splits


def test_stages_over_s3_shards_with_two_ranks(
    tmp_path: Path, s3_endpoint: str, sqlite_tracking: str
) -> None:
    boto3.client("s3").create_bucket(Bucket="stages")
    ingest_dir, splits = _prepare(tmp_path, "s3://stages/demo")
    assert len(ShardIndex.read(ingest_dir / "images" / "shards.json").shards) >= 3
    params = tiny_params(tmp_path, train__epochs=2, train__batch_size=4, train__workers=1,
                         train__sampler="weighted", train__shuffle_window=8)  # fmt: skip
    out = subprocess.run(
        [str(VENV_BIN / "carinspect"), "train", "--params", str(params), "--ingest", str(ingest_dir),
         "--splits", str(splits), "--out", str(tmp_path / "train"), "--nproc", "2"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "streaming 28 training images from" in out.stderr and "s3://stages/demo" in out.stderr
    history = (tmp_path / "train" / "history.csv").read_text().splitlines()
    assert len(history) == 3  # header and two epochs

    p = load_params(params)
    best = TrainDir(tmp_path / "train").best
    ev = evaluate.run(p.evaluate, Settings(), best, ingest_dir, splits, tmp_path / "evaluate")
    predictions = EvaluateDir(ev.out).predictions.read_text().splitlines()
    assert len(predictions) == 1 + 10 + 10  # val and test, every image once
    paths = [line.split(",")[1] for line in predictions[1:]]
    assert all(p.startswith("images/shard-") for p in paths) and len(set(paths)) == 20
    cfg = p.threshold.model_copy(update={"allow_fallback": True})
    th = threshold.run(cfg, Settings(), EvaluateDir(ev.out).predictions, tmp_path / "threshold")
    ex = export.run(
        p.export, Settings(), best, EvaluateDir(ev.out).calibration, ThresholdDir(th.out).rule,
        ingest_dir, splits, tmp_path / "export",
    )  # fmt: skip
    figures = json.loads(ExportDir(ex.out).metrics.read_text())
    assert figures["fp32"]["images"] == 10 and figures["fp32"]["decision_flips"] == 0


def test_a_missing_shard_stops_training_before_the_first_epoch(
    tmp_path: Path, sqlite_tracking: str
) -> None:
    ingest_dir, splits = _prepare(tmp_path, "")
    index = ShardIndex.read(ingest_dir / "images" / "shards.json")
    (ingest_dir / "images" / index.shards[-1].name).unlink()
    p = load_params(tiny_params(tmp_path))
    with pytest.raises(TrainError, match=rf"names shard {index.shards[-1].name}, which is not in"):
        train.run(p.model, p.train, p.mlflow, Settings(), ingest_dir, splits, tmp_path / "train")
    assert not (tmp_path / "train").exists()
    assert not (tmp_path / "mlruns").exists()


def test_resume_inside_an_epoch_over_shards(tmp_path: Path, sqlite_tracking: str) -> None:
    """The stream continues where the checkpoint stopped: weights equal to one run's."""
    from tests.conftest import Prepared
    from tests.stages.test_train import resumes_inside_an_epoch

    ingest_dir, splits = _prepare(tmp_path, "")
    resumes_inside_an_epoch(tmp_path, Prepared(ingest_dir, splits))


@pytest.mark.parametrize("shape", ["three classes", "two tasks"])
def test_other_shapes_train_and_evaluate_over_shards(
    tmp_path: Path, demo_dir: Path, sqlite_tracking: str, shape: str
) -> None:
    """A severity scale and two tasks trained together, as users bring them, from shards."""
    from carinspect.data.intake.demo import TASKS_CSV

    if shape == "three classes":
        demo = DemoConfig(per_class=12, broken=False, classes=["clean", "dusty", "muddy"])
        data = DataConfig(source="demo", demo=demo, format="shards")
    else:
        data = DataConfig(
            source=str(demo_dir / TASKS_CSV), task=["cleanliness", "damage"], format="shards"
        )
    ingest.run(data, IngestConfig(short_side=40, shard_mb=0.05), tmp_path / "ingest")
    splits = split.run(
        SplitConfig(train=0.6, val=0.2, test=0.2), tmp_path / "ingest" / "manifest.csv",
        tmp_path / "split",
    ).splits  # fmt: skip
    p = load_params(tiny_params(tmp_path, train__batch_size=4))
    result = train.run(
        p.model, p.train, p.mlflow, Settings(), tmp_path / "ingest", splits, tmp_path / "train"
    )
    ev = evaluate.run(p.evaluate, Settings(), result.best, tmp_path / "ingest", splits,
                      tmp_path / "evaluate")  # fmt: skip
    report = json.loads(EvaluateDir(ev.out).report.read_text())
    if shape == "three classes":
        assert report["classes"] == ["clean", "dusty", "muddy"]
    else:
        assert set(report["tasks"]) == {"cleanliness", "damage"}
