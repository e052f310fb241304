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
    assert card["outputs"] == ["logits", "probabilities", "features", "cam"]
    assert card["explain"]["output"] == "cam" and len(card["explain"]["grid"]) == 2
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


def test_an_int8_graph_is_written_beside_fp32_with_its_gate_figures(
    tmp_path: Path, upstream: dict[str, Path], prepared: Prepared
) -> None:
    # a two-epoch 32 px model on 10 val photos: one flip is 10%, so the limits are the
    # test's; what the gate finds on real photos is benchmarks/int8's
    cfg = ExportConfig(quantize="int8", int8_max_flip_rate=1.0, int8_max_recall_drop=1.0)
    run_export(cfg, upstream, prepared, tmp_path / "export")
    out = tmp_path / "export"
    card = json.loads((out / "model.json").read_text())
    gate = card["int8"]
    assert gate["passed"] and gate["file"] == "model.int8.onnx" == card["files"]["int8"]
    assert gate["images"] == sum(
        1 for r in (prepared.splits.read_text().splitlines()) if ",val," in r
    )
    assert set(gate["recall"]) == set(gate["recall_fp32"]) == {"clean", "dirty"}
    ops = {n.op_type for n in onnx.load(str(out / "model.int8.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # QDQ
    sess = session(out / "model.int8.onnx")
    probs = ort_probabilities(sess, np.zeros((3, 3, 32, 32), np.float32))
    assert probs.shape == (3, 2) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-3)


def test_an_int8_graph_that_misses_its_gate_is_not_written_and_says_why(
    tmp_path: Path, upstream: dict[str, Path], prepared: Prepared,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    from carinspect.stages import export_int8

    def certain(fp32: Path, out: Path, batches: object, symmetric: bool) -> Path:
        """A planted "quantized" graph that calls every photo dirty, certain of it (the
        two-epoch model calls every val photo clean)."""
        model = onnx.load(str(fp32))
        for node in model.graph.node:
            node.output[:] = ["planted_in" if o == "probabilities" else o for o in node.output]
        model.graph.initializer.extend([
            numpy_helper.from_array(np.zeros(2, np.float32), "planted_zero"),
            numpy_helper.from_array(np.array([0.0, 1.0], np.float32), "planted_dirty"),
        ])  # fmt: skip
        model.graph.node.extend([
            onnx.helper.make_node("Mul", ["planted_in", "planted_zero"], ["planted_none"]),
            onnx.helper.make_node("Add", ["planted_none", "planted_dirty"], ["probabilities"]),
        ])  # fmt: skip
        onnx.save(model, str(out))
        return out

    monkeypatch.setattr(export_int8, "quantize_int8", certain)
    with caplog.at_level("WARNING"):
        run_export(ExportConfig(quantize="int8"), upstream, prepared, tmp_path / "export")
    out = tmp_path / "export"
    assert not (out / "model.int8.onnx").exists() and (out / "model.onnx").is_file()
    card = json.loads((out / "model.json").read_text())
    gate = card["int8"]
    assert not gate["passed"] and gate["file"] is None and "int8" not in card["files"]
    assert gate["flip_rate"] > 0.01 and gate["max_flip_rate"] == 0.01
    said = caplog.text
    assert "INT8 graph not written, it missed its gate: " in said
    assert f"{gate['decision_flips']} of {gate['images']} val decisions differ from FP32" in said
