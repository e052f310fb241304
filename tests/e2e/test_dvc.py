"""`dvc repro` of the real dvc.yaml in a temporary git repo, and push/pull through moto's S3."""

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import boto3
import httpx
import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.conftest import VENV_BIN, Server
from tests.e2e.project import DVC, digest, make_project, sh


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    """A copy of the project's pipeline files in a fresh git repo, with a smaller demo dataset."""
    return make_project(tmp_path)


def _served_answer(
    project: Path, registered: dict, serve: Callable[..., Server], label: str
) -> dict:
    """/predict's answer for a demo photo of ``label`` from the registered version, served."""
    server = serve(
        MODEL_URI=registered["model_uri"],
        MLFLOW_TRACKING_URI=f"sqlite:///{project / 'mlflow.db'}",
    )
    photo = next((project / "data" / "demo" / label).glob(f"{label}_000*.jpg"))
    answer = httpx.post(
        f"{server.url}/predict", files={"file": (photo.name, photo.read_bytes(), "image/jpeg")}
    )
    assert answer.status_code == 200, answer.text
    body: dict = answer.json()
    return body


def test_multiclass_repro_registers_a_model_that_serves(
    tmp_path: Path, serve: Callable[..., Server]
) -> None:
    """The main job on three classes (a severity scale), through register, then served.

    Guards the main job where most real use is: more than two classes. Every output dvc.yaml
    declares must exist (a missing one fails `dvc repro`). With the INT8 switch on: the
    registered version serves its INT8 graph, answering the demo photos as FP32 does.
    """
    project = make_project(tmp_path, _int8, classes=["clean", "dusty", "muddy"])
    first = sh(project, DVC, "repro")
    for stage in STAGES:
        assert f"Running stage '{stage}'" in first
    spec = json.loads((project / "models" / "threshold" / "threshold.json").read_text())
    assert spec["task"] == "multiclass" and spec["classes"] == ["clean", "dusty", "muddy"]
    curves = sorted(p.stem for p in (project / "models" / "threshold" / "plots").iterdir())
    assert curves and set(curves) <= {"clean", "dusty", "muddy"}
    card = json.loads((project / "models" / "export" / "model.json").read_text())
    assert card["classes"] == ["clean", "dusty", "muddy"]
    assert card["parity"]["fp32"]["decision_flips"] == 0
    registered = json.loads((project / "models" / "registered.json").read_text())
    assert "Running stage" not in sh(project, DVC, "repro")
    shown = json.loads(sh(project, DVC, "plots", "show", "--json"))["data"]
    assert {f"models/threshold/plots/{c}.csv" for c in curves} <= set(shown)

    body = _served_answer(project, registered, serve, "muddy")
    assert set(body["probabilities"]) == {"clean", "dusty", "muddy"}
    assert body["label"] in {"clean", "dusty", "muddy", "uncertain"}
    assert body["model"]["version"] == registered["version"]

    # export.quantize: int8: the version carries the INT8 graph and serves it
    assert card["int8"]["passed"] and card["files"]["int8"] == "model.int8.onnx"
    labels = {}
    for precision in ("int8", "fp32"):
        out = project / f"predictions.{precision}.json"
        env = {**os.environ, "MODEL_URI": registered["model_uri"], "MODEL_PRECISION": precision,
               "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}",
               "MODEL_CACHE_DIR": str(tmp_path / "cache")}  # fmt: skip
        done = subprocess.run([str(VENV_BIN / "carinspect"), "predict", "data/demo", "--out",
                               str(out)], cwd=project, env=env, capture_output=True, text=True,
                              timeout=300)  # fmt: skip
        assert done.returncode == 0, done.stderr
        labels[precision] = [row.get("label") for row in json.loads(out.read_text())]
    flips = sum(a != b for a, b in zip(labels["int8"], labels["fp32"], strict=True))
    # the served INT8 graph flips about as many demo photos as export measured on val photos
    assert flips / len(labels["fp32"]) <= max(2 * card["int8"]["flip_rate"], 0.1), flips
    served = serve(MODEL_URI=registered["model_uri"], MODEL_CACHE_DIR=str(tmp_path / "cache2"),
                   MLFLOW_TRACKING_URI=f"sqlite:///{project / 'mlflow.db'}",
                   MODEL_PRECISION="int8")  # fmt: skip
    assert httpx.get(f"{served.url}/model").json()["precision"] == "int8"


def _int8(params: dict) -> None:
    """The INT8 switch; the one-epoch test model's gate is loose (test_export.py tests the gate)."""
    params["export"].update({"quantize": "int8", "int8_calibration_images": 32,
                             "int8_max_flip_rate": 1.0, "int8_max_recall_drop": 1.0})  # fmt: skip


STAGES = ("demo", "ingest", "split", "train", "evaluate", "threshold", "export", "register")


def _two_tasks(params: dict) -> None:
    """The demo's tasks.csv, cleanliness and damage trained together (as docs/multitask.md shows)."""
    params["data"].update({"source": "data/demo/tasks.csv", "task": ["cleanliness", "damage"]})
    params["threshold"]["tasks"] = {"damage": {"positive_class": "intact"}}


def test_two_task_repro_registers_a_model_that_answers_both(
    tmp_path: Path, serve: Callable[..., Server]
) -> None:
    """dvc repro -> register -> serve with two heads on one backbone, some labels missing."""
    project = make_project(tmp_path, _two_tasks)
    first = sh(project, DVC, "repro")
    for stage in STAGES:
        assert f"Running stage '{stage}'" in first
    header = (project / "data" / "split" / "splits.csv").read_text().splitlines()[0]
    assert header.endswith("label:cleanliness,label:damage")
    rules = json.loads((project / "models" / "threshold" / "threshold.json").read_text())
    assert rules["tasks"]["damage"]["positive_class"] == "intact"
    card = json.loads((project / "models" / "export" / "model.json").read_text())
    assert [t["name"] for t in card["tasks"]] == ["cleanliness", "damage"]
    registered = json.loads((project / "models" / "registered.json").read_text())
    version = MlflowClient(f"sqlite:///{project / 'mlflow.db'}").get_model_version(
        registered["name"], registered["version"]
    )
    assert version.tags["tasks"] == "cleanliness,damage" and "decision.damage" in version.tags
    assert "Running stage" not in sh(project, DVC, "repro")
    shown = json.loads(sh(project, DVC, "metrics", "show", "--json"))[""]["data"]
    evaluated = shown["models/evaluate/metrics.json"]["data"]
    assert set(evaluated["tasks"]) == {"cleanliness", "damage"}

    body = _served_answer(project, registered, serve, "dirty")
    assert set(body["tasks"]) == {"cleanliness", "damage"}
    assert set(body["tasks"]["damage"]["probabilities"]) == {"damaged", "intact"}
    assert body["model"]["version"] == registered["version"]


# the lines docs/shards.md has users add to dvc.yaml's ingest outs for shards in S3
S3_SHARDS_OUT = """      - ${data.shards}:
          cache: false
          persist: true
"""


def test_sharded_repro_in_s3_registers_a_model_that_serves(
    tmp_path: Path, s3_endpoint: str, serve: Callable[..., Server]
) -> None:
    """The main job with data.format: shards and an S3 prefix: ingest uploads the shards,
    DVC tracks the index with the data and the prefix as an uncached external output, train,
    evaluate and export stream from the bucket, and the registered version serves."""
    boto3.client("s3").create_bucket(Bucket="fleet-shards")

    def sharded(params: dict) -> None:
        params["data"].update({"format": "shards", "shards": "s3://fleet-shards/demo"})
        params["ingest"]["shard_mb"] = 0.1
        params["train"]["workers"] = 1

    project = make_project(tmp_path, sharded)
    dvc_yaml = project / "dvc.yaml"
    text = dvc_yaml.read_text()
    anchor = "      - data/ingest/images\n"
    dvc_yaml.write_text(text.replace(anchor, anchor + S3_SHARDS_OUT, 1))
    first = sh(project, DVC, "repro")
    for stage in STAGES:
        assert f"Running stage '{stage}'" in first
    assert [p.name for p in (project / "data" / "ingest" / "images").iterdir()] == ["shards.json"]
    assert "path: s3://fleet-shards/demo" in (project / "dvc.lock").read_text()
    report = json.loads((project / "data" / "ingest" / "report.json").read_text())
    assert report["storage"]["location"] == "s3://fleet-shards/demo"
    assert report["storage"]["shards"] >= 3
    assert "Running stage" not in sh(project, DVC, "repro")
    registered = json.loads((project / "models" / "registered.json").read_text())
    version = MlflowClient(f"sqlite:///{project / 'mlflow.db'}").get_model_version(
        registered["name"], registered["version"]
    )
    assert version.tags["data.digest"].startswith("sha256:")
    assert version.tags["data.shards"] == "s3://fleet-shards/demo"
    body = _served_answer(project, registered, serve, "dirty")
    assert set(body["probabilities"]) == {"clean", "dirty"}


@pytest.mark.slow
def test_repro_runs_then_does_nothing(project: Path) -> None:
    first = sh(project, DVC, "repro")
    for stage in STAGES:
        assert f"Running stage '{stage}'" in first
    assert (project / "data" / "split" / "splits.csv").is_file()
    assert (project / "models" / "train" / "best.pt").is_file()
    assert (project / "models" / "evaluate" / "figures" / "confusion_test.png").is_file()
    assert (project / "models" / "threshold" / "threshold.json").is_file()
    model_json = json.loads((project / "models" / "export" / "model.json").read_text())
    assert model_json["parity"]["fp32"]["decision_flips"] == 0
    assert (project / "models" / "export" / "model.onnx").stat().st_size > 0
    registered = json.loads((project / "models" / "registered.json").read_text())
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    challenger = client.get_model_version_by_alias(registered["name"], "challenger")
    assert str(challenger.version) == registered["version"] == "1"
    run_id = json.loads((project / "models" / "train" / "run.json").read_text())["run_id"]
    run = MlflowClient(f"sqlite:///{project / 'mlflow.db'}").get_run(run_id)
    assert run.info.status == "FINISHED"
    for key in (
        "val_macro_f1",
        "eval.test.accuracy",
        "threshold.val.coverage",
        "export.parity.fp32.max_abs_diff",
    ):
        assert key in run.data.metrics, key  # every stage appended to the one training run
    for key in (
        "data.source",
        "ingest.short_side",
        "split.seed",
        "model.name",
        "train.lr",
        "evaluate.calibrate",
        "threshold.target_precision",
        "export.opset",
    ):
        assert key in run.data.params, key  # every section the model went through
    exported = {a.path for a in client.list_artifacts(run_id, "export")}
    assert {"export/model.onnx", "export/model.json"} <= exported
    assert (project / "dvc.lock").is_file()
    second = sh(project, DVC, "repro")
    assert "Running stage" not in second
    assert "Data and pipelines are up to date" in second
    shown = json.loads(sh(project, DVC, "metrics", "show", "--json"))[""]["data"]
    ingest = shown["data/ingest/metrics.json"]["data"]
    assert ingest["images"] == 2 * 16 + 1 and ingest["dropped"] == 7
    split = shown["data/split/metrics.json"]["data"]
    assert sum(split[s]["images"] for s in ("train", "val", "test")) == 33

    assert not (project / "models" / "tune").exists()  # the sweep is off the default path

    params = yaml.safe_load((project / "params.yaml").read_text())
    params["tune"].update({"trials": 2, "prune_after": 0})
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    # after the main job, nothing is pending: the opt-in sweep is no DVC pipeline of its own
    assert sh(project, DVC, "status").strip() == "Data and pipelines are up to date."
    swept = sh(project, str(VENV_BIN / "carinspect"), "tune")
    assert "train the final model with them:" in swept and "dvc exp run -S " in swept
    best = yaml.safe_load((project / "models" / "tune" / "best_params.yaml").read_text())
    assert set(best) <= {"model", "train"} and "lr" in best["train"]
    report = json.loads((project / "models" / "tune" / "report.json").read_text())
    assert report["trials"]["complete"] + report["trials"]["pruned"] == 2

    params = yaml.safe_load((project / "params.yaml").read_text())
    params["split"]["seed"] = 43
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    third = sh(project, DVC, "repro")
    assert "Running stage 'split'" in third and "Running stage 'ingest'" not in third
    assert "Running stage 'train'" in third and "Running stage 'evaluate'" in third


@pytest.mark.slow
def test_push_pull_round_trip_through_s3(project: Path, s3_endpoint: str) -> None:
    boto3.client("s3").create_bucket(Bucket="dvc-store")
    sh(project, DVC, "repro")
    before = digest(project / "data")
    sh(project, DVC, "remote", "add", "-d", "store", "s3://dvc-store/carinspect")
    sh(project, DVC, "remote", "modify", "store", "endpointurl", s3_endpoint)
    config = (project / ".dvc" / "config").read_text()
    assert "testing" not in config  # credentials come from the environment only
    sh(project, DVC, "push")
    keys = boto3.client("s3").list_objects_v2(Bucket="dvc-store", Prefix="carinspect/")
    assert keys["KeyCount"] > 0

    shutil.rmtree(project / ".dvc" / "cache")
    for out in (
        "data/demo",
        "data/ingest/images",
        "data/ingest/manifest.csv",
        "data/split/splits.csv",
    ):
        target = project / out
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    sh(project, DVC, "pull")
    assert digest(project / "data") == before
    assert "up to date" in sh(project, DVC, "status")


@pytest.mark.slow
def test_s3_prefix_as_external_dependency(project: Path, s3_endpoint: str, demo_dir: Path) -> None:
    """data.source: s3://... is one param change; DVC re-runs ingest when the objects change."""
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="fleet-photos")
    files = [p for p in sorted(demo_dir.rglob("*.jpg")) if not p.name.startswith("broken")][:30]
    for p in files:
        s3.put_object(
            Bucket="fleet-photos", Key=f"v1/{p.relative_to(demo_dir)}", Body=p.read_bytes()
        )
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["data"]["source"] = "s3://fleet-photos/v1"
    (project / "params.yaml").write_text(yaml.safe_dump(params))

    first = sh(project, DVC, "repro", "split")
    assert "Running stage 'ingest'" in first and "Running stage 'demo'" not in first
    assert "path: s3://fleet-photos/v1" in (project / "dvc.lock").read_text()
    assert "Running stage" not in sh(project, DVC, "repro", "split")

    s3.put_object(
        Bucket="fleet-photos", Key="v1/clean/late.jpg", Body=files[-1].read_bytes() + b"\0"
    )
    third = sh(project, DVC, "repro", "split")
    assert "Running stage 'ingest'" in third
