"""Each component's Python function called directly, chained as the pipeline chains them."""

import json
import os
from pathlib import Path

import pytest
import yaml
from kfp import dsl
from mlflow.tracking import MlflowClient

from carinspect.config import parse_params
from components import FUNCTIONS
from components.glue import params_from_inputs, section_texts
from tests.conftest import REPO_ROOT


def _artifact(kind: type, root: Path, name: str) -> dsl.Artifact:
    return kind(name=name, uri=str(root / name), metadata={})


def test_components_called_directly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    raw = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    raw["data"]["demo"]["per_class"] = 20
    raw["train"].update(epochs=1, workers=0, batch_size=16)
    raw["model"]["img_size"] = 32
    raw["evaluate"]["workers"] = 0
    raw["threshold"].update(allow_fallback=True, bootstrap=0)
    raw["register"]["require_better"] = False  # a one-epoch model: the plumbing, not the verdict
    cfg = section_texts(parse_params(raw))  # what the pipeline passes: one JSON per section
    a = {
        name: _artifact(kind, tmp_path, name)
        for name, kind in [
            ("data", dsl.Dataset), ("ingest_report", dsl.Markdown), ("ingest_metrics", dsl.Metrics),
            ("splits", dsl.Dataset), ("split_report", dsl.Markdown), ("split_metrics", dsl.Metrics),
            ("model", dsl.Model), ("train_metrics", dsl.Metrics), ("evaluation", dsl.Dataset),
            ("eval_metrics", dsl.Metrics), ("confusion", dsl.ClassificationMetrics),
            ("eval_report", dsl.Markdown), ("operating_point", dsl.Dataset),
            ("thr_metrics", dsl.Metrics), ("onnx_model", dsl.Model), ("export_metrics", dsl.Metrics),
            ("registered", dsl.Artifact),
        ]
    }  # fmt: skip
    FUNCTIONS["ingest"]("demo", "demo:0:20", "", "files", "", "", cfg["coco_tasks_cfg"], cfg["demo_cfg"], cfg["ingest_cfg"], a["data"],
                        a["ingest_report"], a["ingest_metrics"])  # fmt: skip
    assert a["data"].metadata == {"source": "demo", "version": "demo:0:20"}
    assert a["ingest_metrics"].metadata["images"] > 0
    assert Path(a["ingest_report"].path).read_text().startswith("#")
    FUNCTIONS["split"](
        cfg["split_cfg"], a["data"], a["splits"], a["split_report"], a["split_metrics"]
    )
    assert (Path(a["splits"].path) / "splits.csv").is_file()
    monkeypatch.setenv("KFP_RUN_ID", "kfp-run-7")  # in a cluster: the pod's pipeline/runid label
    run_id = FUNCTIONS["train"](cfg["model_cfg"], cfg["train_cfg"], cfg["mlflow_cfg"], a["data"],
                                a["splits"], 1, "", a["model"], a["train_metrics"])  # fmt: skip
    monkeypatch.delenv("KFP_RUN_ID")
    assert (
        a["model"].metadata["mlflow_run_id"] == run_id
        and "val_accuracy" in a["train_metrics"].metadata
    )
    FUNCTIONS["evaluate"](cfg["evaluate_cfg"], a["model"], a["data"], a["splits"], a["evaluation"],
                          a["eval_metrics"], a["confusion"], a["eval_report"])  # fmt: skip
    matrix = a["confusion"].metadata["confusionMatrix"]
    assert [s["displayName"] for s in matrix["annotationSpecs"]] == ["clean", "dirty"]
    test_images = sum(sum(r["row"]) for r in matrix["rows"])
    assert test_images == a["eval_metrics"].metadata["test.images"]
    assert "| test |" in Path(a["eval_report"].path).read_text()
    FUNCTIONS["threshold"](
        cfg["threshold_cfg"], a["model"], a["evaluation"], a["operating_point"], a["thr_metrics"]
    )
    FUNCTIONS["export"](cfg["export_cfg"], a["model"], a["evaluation"], a["operating_point"], a["data"],
                        a["splits"], a["onnx_model"], a["export_metrics"])  # fmt: skip
    assert (Path(a["onnx_model"].path) / "model.onnx").is_file()
    uri = FUNCTIONS["register"](
        cfg["register_cfg"], a["model"], a["evaluation"], a["onnx_model"], "kfp-run-7",
        a["registered"],
    )  # fmt: skip
    assert uri == "models:/carinspect/1"
    assert json.loads(Path(a["registered"].path).read_text())["version"] == "1"
    mv = MlflowClient(os.environ["MLFLOW_TRACKING_URI"]).get_model_version("carinspect", "1")
    assert mv.tags["kfp.run_id"] == "kfp-run-7"
    run = MlflowClient(os.environ["MLFLOW_TRACKING_URI"]).get_run(run_id)
    assert run.data.tags["kfp.run_id"] == "kfp-run-7"  # read from the environment by train


def test_bad_section_input_names_the_key() -> None:
    with pytest.raises(ValueError, match=r"train.epochs: Input should be a valid integer"):
        params_from_inputs({"train_cfg": '{"epochs": "three"}'})
    with pytest.raises(ValueError, match="pipeline input split_cfg: not JSON"):
        params_from_inputs({"split_cfg": "train: 0.7"})
