"""A two-task model after training: evaluate, threshold, export and a served answer per task."""

import csv
import json
import os
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from carinspect.config import EvaluateConfig, ExportConfig, Settings, ThresholdConfig, load_params
from carinspect.contracts.cards import read_card
from carinspect.data.decoding.images import ImageLimits
from carinspect.serving.inference import pixels_for
from carinspect.serving.loaded import ModelLoadError, ModelRef
from carinspect.serving.opening import open_model
from carinspect.serving.settings import ServeSettings
from carinspect.stages import evaluate, export, threshold, train
from carinspect.stages.threshold import ThresholdError
from tests.conftest import Prepared, start_server, stop_process, tiny_params

TASKS = ["cleanliness", "damage"]
RULES = ThresholdConfig(
    positive_class="clean",
    target_precision=0.5,
    allow_fallback=True,
    bootstrap=0,
    tasks={"damage": {"positive_class": "intact", "target_precision": 0.6}},
)


@pytest.fixture(scope="module")
def two_tasks(tmp_path_factory: pytest.TempPathFactory, prepared_tasks: Prepared) -> Path:
    """A two-task model trained, evaluated, thresholded and exported (its MLflow store inside)."""
    root = tmp_path_factory.mktemp("two-tasks")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
    try:
        p = load_params(tiny_params(root, train__epochs=2, model__drop_rate=0.2))
        t = train.run(
            p.model, p.train, p.mlflow, Settings(), prepared_tasks.ingest, prepared_tasks.splits,
            root / "train",
        )  # fmt: skip
        evaluate.run(
            EvaluateConfig(workers=0), Settings(), t.best, prepared_tasks.ingest,
            prepared_tasks.splits, root / "eval", t.run_id,
        )  # fmt: skip
        threshold.run(RULES, Settings(), root / "eval" / "predictions.csv", root / "thr", t.run_id)
        export.run(
            ExportConfig(), Settings(), t.best, root / "eval" / "calibration.json",
            root / "thr" / "threshold.json", prepared_tasks.ingest, prepared_tasks.splits,
            root / "export", t.run_id,
        )  # fmt: skip
    finally:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    return root


def test_evaluate_and_threshold_per_task(two_tasks: Path) -> None:
    metrics = json.loads((two_tasks / "eval" / "metrics.json").read_text())
    assert list(metrics["tasks"]) == TASKS
    for split in ("val", "test"):
        mean = np.mean([metrics["tasks"][t][split]["accuracy"] for t in TASKS])
        assert metrics[split]["accuracy"] == pytest.approx(mean)  # what the promotion gate reads
    temperatures = json.loads((two_tasks / "eval" / "calibration.json").read_text())
    assert list(temperatures["temperatures"]) == TASKS
    rows = list(csv.DictReader((two_tasks / "eval" / "predictions.csv").open()))
    assert {"cleanliness:p_clean", "damage:p_intact", "damage:label"} <= rows[0].keys()
    unlabelled = [r for r in rows if not r["damage:label"]]
    assert unlabelled and all(r["damage:predicted"] for r in unlabelled)  # answered, not scored
    labelled = sum(1 for r in rows if r["split"] == "test" and r["damage:label"])
    assert metrics["tasks"]["damage"]["test"]["images"] == labelled
    figures = {p.name for p in (two_tasks / "eval" / "figures").iterdir()}
    assert {"cleanliness_confusion_test.png", "damage_reliability_val.png"} <= figures
    confusion = (two_tasks / "eval" / "plots" / "confusion.csv").read_text()
    assert "damage: intact" in confusion and "cleanliness: dirty" in confusion

    rules = json.loads((two_tasks / "thr" / "threshold.json").read_text())["tasks"]
    assert rules["cleanliness"]["positive_class"] == "clean"
    assert rules["damage"]["positive_class"] == "intact"  # threshold.tasks.damage applied
    assert rules["damage"]["target_precision"] == 0.6
    plots = {p.name for p in (two_tasks / "thr" / "plots").iterdir()}
    assert plots == {"cleanliness.clean.csv", "damage.intact.csv"}
    with pytest.raises(ThresholdError, match=r"threshold.tasks names \['weather'\]"):
        threshold.run(
            ThresholdConfig(tasks={"weather": {}}), Settings(),
            two_tasks / "eval" / "predictions.csv", two_tasks / "bad",
        )  # fmt: skip


def test_export_has_one_output_per_task_and_serving_answers_each(two_tasks: Path) -> None:
    folder = two_tasks / "export"
    card = read_card(folder / "model.json")
    assert card.multitask and [t.name for t in card.task_cards] == TASKS
    assert card.classes is None and card.decision is None
    sess = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    assert names == ["logits", "probabilities_cleanliness", "probabilities_damage", "features",
                     "cam"]  # fmt: skip
    assert card.parity["fp32"].decision_flips == 0 and card.parity["fp32"].max_abs_diff < 1e-4

    server = start_server(two_tasks, {"MODEL_URI": str(folder)})
    try:
        photo = next((two_tasks.parent).glob("*/ingest/images/*/*.png"), None)
        data = photo.read_bytes() if photo else b""
        assert data
        r = httpx.post(server.url + "/predict", files={"file": ("car.png", data, "image/png")})
        assert r.status_code == 200, r.text
        body = r.json()
        assert list(body["tasks"]) == TASKS and "label" not in body  # every task, keyed by name
        damage = body["tasks"]["damage"]
        assert "uncertainty" not in damage  # MC dropout is off by default
        assert damage["label"] in ("damaged", "intact", "uncertain")
        assert damage["thresholds"]["positive_class"] == "intact"
        assert sum(damage["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
        model = open_model(ModelRef.parse(str(folder)), None, folder, ServeSettings())
        offline = model.probabilities(pixels_for(data, model, ImageLimits())[None])[0]
        served = [body["tasks"][t.name]["probabilities"][c] for t in model.tasks for c in t.classes]
        assert served == pytest.approx(offline.tolist(), abs=1e-5)

        # explained: each task's answer with the heatmap of its own label
        explained = httpx.post(server.url + "/predict?explain=true",
                               files={"file": ("car.png", data, "image/png")}).json()  # fmt: skip
        for task in TASKS:
            got = explained["tasks"][task]
            assert got["explanation"]["label"] in body["tasks"][task]["probabilities"]
            assert got["explanation"]["heatmap_png"]

        files = [("files", (f"{i}.png", data, "image/png")) for i in range(2)]
        batch = httpx.post(server.url + "/predict/batch", files=files).json()
        assert [list(p["tasks"]) for p in batch["predictions"]] == [TASKS, TASKS]
        info = httpx.get(server.url + "/model").json()
        assert info["tasks"] == {"cleanliness": ["clean", "dirty"], "damage": ["damaged", "intact"]}
        assert info["thresholds"]["damage"]["positive_class"] == "intact"
        schema = httpx.get(server.url + "/openapi.json").json()["components"]["schemas"]
        assert {"Prediction", "MultiTaskPrediction", "TaskAnswer"} <= schema.keys()
    finally:
        stop_process(server.proc)


def test_kfp_confusion_and_report_of_two_tasks(two_tasks: Path) -> None:
    from components import glue

    names, matrix = glue.confusion(two_tasks / "eval" / "predictions.csv", "test")
    assert names == [
        "cleanliness: clean",
        "cleanliness: dirty",
        "damage: damaged",
        "damage: intact",
    ]
    assert all(matrix[i][j] == 0 for i in (0, 1) for j in (2, 3))  # no cross-task cells
    metrics = json.loads((two_tasks / "eval" / "metrics.json").read_text())
    assert sum(map(sum, matrix[2:])) == metrics["tasks"]["damage"]["test"]["images"]
    text = glue.evaluation_markdown(two_tasks / "eval" / "metrics.json")
    assert "| damage, test |" in text and "means over the tasks" in text


def test_mc_dropout_samples_the_head_and_reports_the_spread(
    two_tasks: Path, upstream: dict[str, Path]
) -> None:
    folder = two_tasks / "export"
    card = read_card(folder / "model.json")
    assert card.mc_dropout is not None and card.mc_dropout.rate == pytest.approx(0.2)
    assert card.mc_dropout.max_abs_diff < 1e-5 and (folder / "mc_head.onnx").is_file()
    photo = next(two_tasks.parent.glob("*/ingest/images/*/*.png"))
    ref = ModelRef.parse(str(folder))
    plain = open_model(ref, None, folder, ServeSettings())
    # DRIFT_WINDOW=0: the rows are the MC layout alone (drift adds an embedding column)
    sampled = open_model(
        ref, None, folder, ServeSettings(MC_SAMPLES=200, MC_SEED=0, DRIFT_WINDOW=0)
    )
    pixels = np.stack([pixels_for(photo.read_bytes(), plain, ImageLimits())] * 2)
    scores = sampled.infer(pixels)
    width = plain.probabilities(pixels).shape[1]
    assert scores.mc_mean is not None and scores.mc_std is not None and scores.distance is None
    assert scores.probs.shape == scores.mc_mean.shape == scores.mc_std.shape == (2, width)
    np.testing.assert_allclose(scores.probs, plain.probabilities(pixels), atol=1e-6)
    mean, std = scores.mc_mean[0], scores.mc_std[0]
    assert (std > 0).all() and (std < 0.5).all()  # dropout moves the probabilities, a little
    assert np.allclose(scores.mc_mean[0], scores.mc_mean[1]) is False  # fresh masks per image
    assert np.abs(mean - scores.probs[0]).max() < 0.25
    again = open_model(ref, None, folder, ServeSettings(MC_SAMPLES=200, MC_SEED=0))
    drifting = again.infer(pixels)  # the default window: the embedding distance too
    assert drifting.distance is not None and drifting.distance.shape == (2,)
    assert (drifting.distance >= 0).all()
    assert drifting.mc_mean is not None and drifting.mc_std is not None
    for got, want in ((drifting.probs, scores.probs), (drifting.mc_mean, scores.mc_mean),
                      (drifting.mc_std, scores.mc_std)):  # fmt: skip
        np.testing.assert_array_equal(got, want)  # MC_SEED makes it reproducible

    server = start_server(two_tasks, {"MODEL_URI": str(folder), "MC_SAMPLES": "30"})
    try:
        data = photo.read_bytes()
        body = httpx.post(
            server.url + "/predict", files={"file": ("car.png", data, "image/png")}
        ).json()
        for task in TASKS:
            spread = body["tasks"][task]["uncertainty"]
            assert spread["samples"] == 30
            assert set(spread["std"]) == set(body["tasks"][task]["probabilities"])
        assert httpx.get(server.url + "/model").json()["mc_samples"] == 30
    finally:
        stop_process(server.proc)

    single = upstream["export"]  # trained with model.drop_rate 0: nothing to sample
    with pytest.raises(ModelLoadError, match=r"MC_SAMPLES=5, but model .* without an MC dropout"):
        open_model(ModelRef.parse(str(single)), None, single, ServeSettings(MC_SAMPLES=5))


def test_batch_predict_writes_a_column_group_per_task(two_tasks: Path, tmp_path: Path) -> None:
    from carinspect.serving.batch_predict import list_inputs, predict_inputs, write_predictions

    folder = two_tasks / "export"
    model = open_model(ModelRef.parse(str(folder)), None, folder, ServeSettings())
    images = tmp_path / "photos"
    images.mkdir()
    for i, photo in enumerate(sorted(two_tasks.parent.glob("*/ingest/images/*/*.png"))[:3]):
        (images / f"{i}.png").write_bytes(photo.read_bytes())
    (images / "broken.jpg").write_bytes(b"not an image")
    rows = predict_inputs(model, list_inputs(str(images)), ImageLimits(), 8)
    write_predictions(rows, tmp_path / "out.csv", model)
    table = list(csv.DictReader((tmp_path / "out.csv").open()))
    assert len(table) == 4 and table[0]["damage:label"] in ("damaged", "intact", "uncertain")
    assert float(table[0]["cleanliness:p_clean"]) + float(table[0]["cleanliness:p_dirty"]) == (
        pytest.approx(1.0, abs=1e-5)
    )
    broken = next(r for r in table if r["path"].endswith("broken.jpg"))
    assert broken["error"] == "not_an_image" and broken["damage:label"] == ""


def test_a_multiclass_task_beside_a_binary_one(tmp_path: Path, sqlite_tracking: str) -> None:
    """A three-level severity scale and damage: a multiclass rule and a binary rule, served."""
    from carinspect.config import DataConfig, DemoConfig, IngestConfig, SplitConfig
    from carinspect.data.intake.demo import TASKS_CSV, write_demo
    from carinspect.serving.inference import answer
    from carinspect.stages import ingest, split

    write_demo(DemoConfig(per_class=16, classes=["clean", "dusty", "muddy"]), tmp_path / "demo")
    data = DataConfig(source=str(tmp_path / "demo" / TASKS_CSV), task=TASKS)
    ingest.run(data, IngestConfig(short_side=40), tmp_path / "ingest")
    splits = split.run(
        SplitConfig(train=0.6, val=0.2, test=0.2), tmp_path / "ingest" / "manifest.csv",
        tmp_path / "split",
    ).splits  # fmt: skip
    p = load_params(tiny_params(tmp_path, train__epochs=1))
    t = train.run(
        p.model, p.train, p.mlflow, Settings(), tmp_path / "ingest", splits, tmp_path / "t"
    )
    evaluate.run(
        EvaluateConfig(workers=0), Settings(), t.best, tmp_path / "ingest", splits, tmp_path / "e"
    )
    threshold.run(RULES, Settings(), tmp_path / "e" / "predictions.csv", tmp_path / "r")
    rules = json.loads((tmp_path / "r" / "threshold.json").read_text())["tasks"]
    assert rules["cleanliness"]["task"] == "multiclass"
    assert rules["cleanliness"]["classes"] == ["clean", "dusty", "muddy"]
    assert rules["damage"]["task"] == "binary"
    export.run(
        ExportConfig(), Settings(), t.best, tmp_path / "e" / "calibration.json",
        tmp_path / "r" / "threshold.json", tmp_path / "ingest", splits, tmp_path / "x",
    )  # fmt: skip
    folder = tmp_path / "x"
    model = open_model(ModelRef.parse(str(folder)), None, folder, ServeSettings())
    photo = next((tmp_path / "demo" / "muddy").glob("*.jpg")).read_bytes()
    got = answer(model, model.infer(pixels_for(photo, model, ImageLimits())[None])[0]).body
    assert set(got["tasks"]["cleanliness"]["probabilities"]) == {"clean", "dusty", "muddy"}
    assert got["tasks"]["cleanliness"]["label"] in ("clean", "dusty", "muddy", "uncertain")
    assert set(got["tasks"]["damage"]["probabilities"]) == {"damaged", "intact"}


def test_triton_entry_of_two_tasks_answers_each_task(
    two_tasks: Path, prepared_tasks: Prepared, tmp_path: Path
) -> None:
    """One probabilities output per task in config.pbtxt; the client answers as the server."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from carinspect.config import TritonConfig
    from carinspect.serving.inference import answer
    from carinspect.serving.triton import write_repository
    from carinspect.serving.triton_client import open_triton_model

    folder = two_tasks / "export"
    entry = write_repository(folder, read_card(folder / "model.json"), TritonConfig(), tmp_path)
    assert not (entry / "labels.txt").exists()  # class names per task live in model.json
    cfg = text_format.Parse((entry / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    outputs = {o.name: list(o.dims) for o in cfg.output}
    assert outputs["probabilities_cleanliness"] == [2] and outputs["probabilities_damage"] == [2]
    assert "features" in outputs and all(not o.label_filename for o in cfg.output)

    via_triton = open_triton_model(tmp_path, None, ServeSettings())
    served = open_model(ModelRef.parse(str(folder)), None, folder, ServeSettings())
    limits = ImageLimits()
    paths = sorted((prepared_tasks.ingest / "images").rglob("*.png"))[:12]
    batch = np.stack([pixels_for(p.read_bytes(), served, limits) for p in paths])
    for a, b in zip(via_triton.infer(batch), served.infer(batch), strict=True):
        mine, theirs = answer(via_triton, a).body, answer(served, b).body
        assert {t: x["label"] for t, x in mine["tasks"].items()} == {
            t: x["label"] for t, x in theirs["tasks"].items()
        }
    with pytest.raises(ModelLoadError, match="MC head"):
        open_triton_model(tmp_path, None, ServeSettings(MC_SAMPLES=4))
