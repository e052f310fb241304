import json
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from carinspect.config import EvaluateConfig, Settings, load_params
from carinspect.stages import evaluate, train
from tests.conftest import Prepared, tiny_params


def test_evaluate_writes_everything_and_logs_to_the_run(
    tmp_path: Path, prepared: Prepared, sqlite_tracking: str
) -> None:
    p = load_params(tiny_params(tmp_path, train__epochs=2))
    trained = train.run(
        p.model, p.train, p.mlflow, Settings(), prepared.ingest, prepared.splits, tmp_path / "train"
    )
    out = tmp_path / "eval"
    result = evaluate.run(EvaluateConfig(workers=0), Settings(), trained.best, prepared.ingest,
                          prepared.splits, out, trained.run_id)  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    for split in ("val", "test"):
        assert 0 <= metrics[split]["accuracy"] <= 1 and 0 <= metrics[split]["ece"] <= 1
        assert metrics["baseline"][split]["balanced_accuracy"] == 0.5
    temperature = json.loads((out / "calibration.json").read_text())["temperature"]
    assert metrics["calibration"]["temperature"] == pytest.approx(temperature, abs=1e-6)
    assert (
        metrics["calibration"]["val_nll_after"] <= metrics["calibration"]["val_nll_before"] + 1e-9
    )
    for name in ("confusion", "curves", "reliability"):
        for split in ("val", "test"):
            assert (out / "figures" / f"{name}_{split}.png").stat().st_size > 1000
    header = (out / "predictions.csv").read_text().splitlines()[0]
    assert header == "split,path,label,predicted,p_clean,p_dirty"
    assert (out / "plots" / "roc" / "dirty.csv").is_file() and (
        out / "plots" / "confusion.csv"
    ).is_file()
    assert result.temperature > 0

    # what went wrong: every wrong test answer and the least certain right ones, by source name
    import csv

    from carinspect.data.intake.manifest import read_manifest

    sources = {r.path: r.source for r in read_manifest(prepared.ingest / "manifest.csv")}
    listed = list(csv.DictReader((out / "mistakes.csv").open()))
    test_rows = [
        r for r in csv.DictReader((out / "predictions.csv").open()) if r["split"] == "test"
    ]
    wrong = {r["path"] for r in test_rows if r["label"] != r["predicted"]}
    assert {r["path"] for r in listed if r["kind"] == "wrong"} == wrong
    assert sum(r["kind"] == "uncertain" for r in listed) == min(12, len(test_rows) - len(wrong))
    assert all(r["source"] == sources[r["path"]] != r["path"] for r in listed)
    from PIL import Image

    with Image.open(out / "figures" / "mistakes.png") as sheet:
        assert sheet.width == 6 * 128 and sheet.height >= 156
    verdict = json.loads((out / "verdict.json").read_text())
    assert verdict["tasks"][0]["images"] == len(test_rows) == result.verdict.tasks[0].images

    mlflow.set_tracking_uri(sqlite_tracking)
    run = MlflowClient().get_run(trained.run_id)
    assert run.data.metrics["eval.test.accuracy"] == pytest.approx(
        metrics["test"]["accuracy"], abs=1e-6
    )
    assert "eval.calibration.temperature" in run.data.metrics
    logged = {a.path for a in MlflowClient().list_artifacts(trained.run_id, "evaluation/figures")}
    assert "evaluation/figures/confusion_test.png" in logged
