import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from carinspect.config import ExportConfig, Settings
from carinspect.contracts.base import ContractError
from carinspect.modeling.onnx_export import file_is_self_contained, ort_probabilities, session
from carinspect.stages import export
from carinspect.stages.export import Answer, ExportError, parity
from tests.conftest import Prepared


def run_export(
    cfg: ExportConfig, upstream: dict[str, Path], prepared: Prepared, out: Path
) -> export.ExportResult:
    return export.run(
        cfg,
        Settings(),
        upstream["best"],
        upstream["calibration"],
        upstream["threshold"],
        prepared.ingest,
        prepared.splits,
        out,
    )


def test_export_passes_parity_and_writes_model_json(
    tmp_path: Path, upstream: dict[str, Path], prepared: Prepared
) -> None:
    result = run_export(ExportConfig(fp16=True), upstream, prepared, tmp_path / "export")
    out = tmp_path / "export"
    assert sorted(p.name for p in out.iterdir()) == [
        "drift.json",
        "metrics.json",
        "model.fp16.onnx",
        "model.json",
        "model.onnx",
    ]
    assert file_is_self_contained(out / "model.onnx")
    fp32 = result.parity["fp32"]
    assert fp32["max_abs_diff"] <= 1e-4 and fp32["decision_flips"] == 0 and fp32["images"] > 0
    assert "fp16" in result.parity and result.parity["fp16"]["max_abs_diff"] <= 5e-3
    meta = json.loads((out / "model.json").read_text())
    assert meta["preprocess"]["source_short_side"] == 40  # ingest.short_side of `prepared`
    assert meta["classes"] == ["clean", "dirty"]
    assert meta["preprocess"]["img_size"] == 32
    assert meta["temperature"] == json.loads(upstream["calibration"].read_text())["temperature"]
    assert meta["decision"]["positive_class"] == "clean" and "splits" not in meta["decision"]
    assert meta["lineage"]["data.digest"].startswith("sha256:")
    model = onnx.load(str(out / "model.onnx"))
    assert model.opset_import[0].version == 18
    batch_dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.dim_value  # dynamic batch axis
    sess = session(out / "model.onnx")
    for n in (1, 5):
        probs = ort_probabilities(sess, np.zeros((n, 3, 32, 32), dtype=np.float32))
        assert probs.shape == (n, 2) and np.allclose(probs.sum(1), 1, atol=1e-5)


def test_parity_catches_a_perturbed_graph(
    tmp_path: Path, upstream: dict[str, Path], prepared: Prepared
) -> None:
    run_export(ExportConfig(), upstream, prepared, tmp_path / "export")
    path = tmp_path / "export" / "model.onnx"
    model = onnx.load(str(path))
    # the classifier's weight matrix (classes x features): negate it
    weights = next(t for t in model.graph.initializer if len(t.dims) == 2 and t.dims[0] == 2)
    arr = -numpy_helper.to_array(weights)
    weights.CopyFrom(numpy_helper.from_array(arr, weights.name))
    bad = tmp_path / "bad.onnx"
    onnx.save(model, str(bad))
    good = parity(path, *_reference(tmp_path / "export", upstream, prepared))
    broken = parity(bad, *_reference(tmp_path / "export", upstream, prepared))
    assert good["max_abs_diff"] <= 1e-4
    assert broken["max_abs_diff"] > 1e-3


def _reference(
    out: Path, upstream: dict[str, Path], prepared: Prepared
) -> tuple[np.ndarray, np.ndarray, list[Answer]]:
    import torch

    from carinspect.contracts.preprocess import PreprocessSpec
    from carinspect.data.loading.dataset import ImageDataset, load_split
    from carinspect.modeling.checkpoint import load_checkpoint, model_from_checkpoint

    state = load_checkpoint(upstream["best"])
    meta = json.loads((out / "model.json").read_text())
    ds = ImageDataset(
        load_split(prepared.splits, prepared.ingest, "val", state["classes"]),
        PreprocessSpec.from_dict(meta["preprocess"]),
    )
    batch = np.stack([ds[i][0].numpy() for i in range(len(ds))])
    with torch.no_grad():
        logits = model_from_checkpoint(state)(torch.from_numpy(batch)).numpy()
    answer = Answer(
        "label", state["classes"], slice(None), meta["temperature"], meta["decision"],
        "probabilities",
    )  # fmt: skip
    return logits, batch, [answer]


def test_failed_parity_exports_nothing(
    tmp_path: Path, upstream: dict[str, Path], prepared: Prepared
) -> None:
    with pytest.raises(ExportError, match=r"FP16 parity failed: .* \(limit 1e-09\)"):
        run_export(
            ExportConfig(fp16=True, fp16_max_abs_diff=1e-9), upstream, prepared, tmp_path / "export"
        )
    assert not (tmp_path / "export").exists()


def test_missing_inputs(tmp_path: Path, upstream: dict[str, Path], prepared: Prepared) -> None:
    with pytest.raises(ContractError, match=r"none\.json: not found \(the decision rule thresh"):
        export.run(
            ExportConfig(),
            Settings(),
            upstream["best"],
            upstream["calibration"],
            tmp_path / "none.json",
            prepared.ingest,
            prepared.splits,
            tmp_path / "o",
        )


def test_a_single_task_model_with_dropout_gets_an_mc_head_that_serves(
    tmp_path: Path, upstream: dict[str, Path], prepared: Prepared
) -> None:
    """model.drop_rate > 0: the features output and mc_head.onnx, and the answer keeps its shape.

    Dropout changes no weight, so the upstream checkpoint with drop_rate 0.2 in its config is
    the model that training with dropout would have written.
    """
    import httpx

    from carinspect.data.decoding.images import ImageLimits
    from carinspect.modeling.checkpoint import load_checkpoint, save_checkpoint
    from carinspect.serving.inference import answer, pixels_for
    from carinspect.serving.loaded import ModelRef
    from carinspect.serving.opening import open_model
    from carinspect.serving.settings import ServeSettings
    from tests.conftest import start_server, stop_process

    state = load_checkpoint(upstream["best"])
    state["config"]["model"]["drop_rate"] = 0.2
    save_checkpoint(state, tmp_path / "dropout.pt")
    export.run(
        ExportConfig(), Settings(), tmp_path / "dropout.pt", upstream["calibration"],
        upstream["threshold"], prepared.ingest, prepared.splits, tmp_path / "export",
    )  # fmt: skip
    out = tmp_path / "export"
    card = json.loads((out / "model.json").read_text())
    assert card["outputs"] == ["logits", "probabilities", "features"]
    assert card["mc_dropout"]["head"] == "mc_head.onnx" and (out / "mc_head.onnx").is_file()
    assert card["classes"] == ["clean", "dirty"]
    photo = next(prepared.ingest.glob("images/*/*.png")).read_bytes()
    ref = ModelRef.parse(str(out))
    plain = open_model(ref, None, out, ServeSettings())
    sampled = open_model(ref, None, out, ServeSettings(MC_SAMPLES=50, MC_SEED=1))
    pixels = pixels_for(photo, plain, ImageLimits())[None]
    got = answer(sampled, sampled.infer(pixels)[0]).body
    assert got["probabilities"] == answer(plain, plain.infer(pixels)[0]).body["probabilities"]
    assert (
        set(got["uncertainty"]["std"]) == {"clean", "dirty"} and got["uncertainty"]["samples"] == 50
    )

    server = start_server(tmp_path, {"MODEL_URI": str(out), "MC_SAMPLES": "8"})
    try:
        body = httpx.post(
            server.url + "/predict", files={"file": ("car.png", photo, "image/png")}
        ).json()
        assert body["label"] in ("clean", "dirty", "uncertain")  # the single-task shape
        assert body["uncertainty"]["samples"] == 8 and "tasks" not in body
    finally:
        stop_process(server.proc)
