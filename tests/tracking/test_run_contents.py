"""What the training run holds once every stage has appended to it: all params, the ONNX files."""

import logging
import shutil
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from carinspect.config import Settings, ThresholdConfig
from carinspect.stages import threshold

SECTIONS = {  # one key of every params section a stage of the run read
    "data.source": "demo",
    "data.demo.per_class": "24",
    "ingest.short_side": "40",
    "split.train": "0.6",
    "model.name": "test_resnet",
    "train.epochs": "2",
    "mlflow.experiment": "carinspect",
    "evaluate.workers": "0",
    "threshold.target_precision": "0.5",
    "export.opset": "18",
}


def test_the_run_holds_every_section_and_the_onnx_files(upstream: dict[str, Path]) -> None:
    client = MlflowClient(f"sqlite:///{upstream['tracking']}")
    run = client.get_run(str(upstream["run_id"]))
    for key, value in SECTIONS.items():
        assert run.data.params.get(key) == value, key
    exported = {f.path for f in client.list_artifacts(run.info.run_id, "export")}
    assert {"export/model.onnx", "export/model.json"} <= exported


def test_a_changed_later_section_is_a_tag_not_a_failure(
    tmp_path: Path,
    upstream: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """DVC re-runs threshold alone after its params change: the run keeps its first values."""
    db = tmp_path / "mlflow.db"
    shutil.copy(upstream["tracking"], db)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    cfg = ThresholdConfig(
        positive_class="clean", target_precision=0.6, allow_fallback=True, bootstrap=0
    )
    predictions = upstream["calibration"].parent / "predictions.csv"
    with caplog.at_level(logging.WARNING):
        threshold.run(cfg, Settings(), predictions, tmp_path / "thr", str(upstream["run_id"]))
    run = MlflowClient(f"sqlite:///{db}").get_run(str(upstream["run_id"]))
    assert run.data.params["threshold.target_precision"] == "0.5"
    assert run.data.tags["params.latest.threshold.target_precision"] == "0.6"
    assert "threshold.target_precision" in caplog.text
