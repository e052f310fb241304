"""MODEL_PRECISION: which graph of a version answers (the INT8 graph export kept, or FP32)."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from carinspect.config import DemoConfig, ExportConfig, TritonConfig
from carinspect.contracts.cards import read_card
from carinspect.contracts.onnx_names import CAM, INPUT
from carinspect.data.decoding.images import ImageLimits
from carinspect.data.intake.demo import demo_files
from carinspect.modeling.quantize import tensorrt_refuses
from carinspect.serving.inference import answer, pixels_for
from carinspect.serving.loaded import ModelLoadError, ModelRef
from carinspect.serving.opening import (
    INT8_WORTH,
    _seconds,
    open_model,
    provider_options,
    read_meta,
)
from carinspect.serving.settings import ServeSettings
from carinspect.serving.triton import TritonError, write_repository
from tests.conftest import Prepared
from tests.stages.test_export import run_export


@pytest.fixture(scope="module")
def with_int8(tmp_path_factory: pytest.TempPathFactory, upstream: dict[str, Path],
              prepared: Prepared) -> Path:  # fmt: skip
    out = tmp_path_factory.mktemp("int8") / "export"
    # a two-epoch model on 10 val photos: the test's limits (the gate is test_export.py's)
    cfg = ExportConfig(quantize="int8", int8_max_flip_rate=1.0, int8_max_recall_drop=1.0)
    run_export(cfg, upstream, prepared, out)
    return out


def _open(folder: Path, precision: str):  # type: ignore[no-untyped-def]
    settings = ServeSettings(MODEL_URI=str(folder), MODEL_PRECISION=precision)
    return open_model(ModelRef.parse(str(folder)), None, folder, settings)


def test_int8_serves_the_int8_graph_and_fp32_the_float_one(with_int8: Path) -> None:
    int8, fp32 = _open(with_int8, "int8"), _open(with_int8, "fp32")
    assert (int8.precision, fp32.precision) == ("int8", "fp32")
    gate = json.loads((with_int8 / "model.json").read_text())["int8"]
    photos = [f.make() for f in demo_files(DemoConfig(per_class=10, seed=3, broken=False))]
    flips = 0
    for data in photos:
        labels = [answer(m, m.infer(pixels_for(data, m, ImageLimits())[None])[0]).labels
                  for m in (int8, fp32)]  # fmt: skip
        flips += labels[0] != labels[1]
    # the served INT8 graph answers as export measured it against FP32 (same decisions, give or
    # take what the gate allowed on val photos)
    assert flips / len(photos) <= max(gate["flip_rate"] * 2, 0.1), (flips, gate)


def test_int8_is_refused_for_a_version_without_one_naming_why(
    with_int8: Path, tmp_path: Path
) -> None:
    plain = tmp_path / "plain"
    shutil.copytree(with_int8, plain)
    (plain / "model.int8.onnx").unlink()
    card = json.loads((plain / "model.json").read_text())
    card["files"].pop("int8")
    card["int8"] = None
    (plain / "model.json").write_text(json.dumps(card))
    with pytest.raises(ModelLoadError, match="MODEL_PRECISION=int8, but it was exported without"):
        _open(plain, "int8")
    assert _open(plain, "auto").precision == "fp32"
    card["int8"] = {**json.loads((with_int8 / "model.json").read_text())["int8"],
                    "passed": False, "file": None}  # fmt: skip
    (plain / "model.json").write_text(json.dumps(card))
    with pytest.raises(ModelLoadError, match="its INT8 graph missed the gate at export"):
        _open(plain, "int8")


def test_auto_takes_int8_on_a_cpu_only_where_it_is_faster_there(
    with_int8: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("INFO", logger="carinspect.serving.opening"):
        chosen = _open(with_int8, "auto").precision
    line = next(r.getMessage() for r in caplog.records if "MODEL_PRECISION=auto" in r.getMessage())
    speedup = float(re.search(r"runs a batch of \d+ ([\d.]+)x as fast", line).group(1))  # type: ignore[union-attr]
    assert chosen == ("int8" if speedup >= INT8_WORTH else "fp32"), line


def test_timing_tells_a_heavy_graph_from_a_light_one(tmp_path: Path) -> None:
    import onnxruntime as ort

    def chain(path: Path, matmuls: int) -> object:
        weight = numpy_helper.from_array(np.eye(256, dtype=np.float32) * 0.5, "w")
        nodes = [helper.make_node("MatMul", [f"x{i}" if i else INPUT, "w"], [f"x{i + 1}"])
                 for i in range(matmuls)]  # fmt: skip
        nodes.append(helper.make_node("Identity", [f"x{matmuls}"], ["probabilities"]))
        graph = helper.make_graph(
            nodes, "chain", [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, [None, 256])],
            [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 256])],
            [weight],
        )  # fmt: skip
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
        onnx.save(model, str(path))
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    feeds = {INPUT: np.ones((64, 256), np.float32)}
    light, heavy = chain(tmp_path / "light.onnx", 1), chain(tmp_path / "heavy.onnx", 60)
    assert _seconds(heavy, feeds, ["probabilities"]) > 5 * _seconds(light, feeds, ["probabilities"])


def test_auto_takes_int8_only_where_the_provider_runs_it_in_int8(with_int8: Path) -> None:
    chosen = {p: read_meta(with_int8, "auto", p)[0].name for p in
              ("CPUExecutionProvider", "TensorrtExecutionProvider", "CUDAExecutionProvider")}  # fmt: skip
    # CUDA's provider dequantizes a Q/DQ graph: the FP32 graph is faster there
    assert chosen == {"CPUExecutionProvider": "model.int8.onnx",
                      "TensorrtExecutionProvider": "model.int8.onnx",
                      "CUDAExecutionProvider": "model.onnx"}  # fmt: skip
    assert read_meta(with_int8, "int8", "CUDAExecutionProvider")[0].name == "model.int8.onnx"
    wanted = ["TensorrtExecutionProvider", "CPUExecutionProvider"]
    settings = ServeSettings(MODEL_CACHE_DIR=with_int8.parent / "cache")
    assert provider_options(wanted, settings, int8=True)[0][1]["trt_int8_enable"] is True
    assert provider_options(wanted, settings)[0][1]["trt_int8_enable"] is False


def test_the_int8_graph_keeps_the_maps_and_triton_carries_it(
    with_int8: Path, tmp_path: Path
) -> None:
    import onnxruntime as ort
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    session = ort.InferenceSession(str(with_int8 / "model.int8.onnx"))
    assert CAM in {o.name for o in session.get_outputs()}  # explanations from INT8 too
    card = read_card(with_int8 / "model.json")
    entry = write_repository(with_int8, card, TritonConfig(precision="int8"), tmp_path / "repo")
    served = (entry / "1" / "model.onnx").read_bytes()
    assert served == (with_int8 / "model.int8.onnx").read_bytes()
    config = text_format.Parse((entry / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    (trt,) = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert trt.parameters["precision_mode"] == "INT8"
    assert CAM in {o.name for o in config.output}
    plain = tmp_path / "plain"
    shutil.copytree(with_int8, plain)
    card = json.loads((plain / "model.json").read_text())
    card["files"].pop("int8")
    card["int8"] = None
    (plain / "model.json").write_text(json.dumps(card))
    with pytest.raises(TritonError, match=r"exported without one \(export.quantize: int8\)"):
        write_repository(plain, read_card(plain / "model.json"),
                         TritonConfig(precision="int8"), tmp_path / "repo2")  # fmt: skip


@pytest.fixture(scope="module")
def asymmetric(tmp_path_factory: pytest.TempPathFactory, upstream: dict[str, Path],
               prepared: Prepared) -> Path:  # fmt: skip
    out = tmp_path_factory.mktemp("int8-asymmetric") / "export"
    cfg = ExportConfig(quantize="int8", int8_symmetric=False, int8_max_flip_rate=1.0,
                       int8_max_recall_drop=1.0)  # fmt: skip
    run_export(cfg, upstream, prepared, out)
    return out


def test_an_asymmetric_int8_graph_is_kept_off_tensorrt_naming_why(
    with_int8: Path, asymmetric: Path, tmp_path: Path
) -> None:
    # the default graph: every zero point 0, as TensorRT takes it
    assert read_card(with_int8 / "model.json").int8.tensorrt is None  # type: ignore[union-attr]
    assert tensorrt_refuses(with_int8 / "model.int8.onnx") is None
    card = read_card(asymmetric / "model.json")
    why = card.int8.tensorrt  # type: ignore[union-attr]
    assert why is not None and "zero point other than 0" in why and "int8_symmetric" in why
    assert _open(asymmetric, "int8").precision == "int8"  # the CPU runs it
    trt = ServeSettings(MODEL_URI=str(asymmetric), MODEL_PRECISION="int8",
                        ORT_PROVIDERS="TensorrtExecutionProvider,CPUExecutionProvider",
                        MODEL_CACHE_DIR=tmp_path)  # fmt: skip
    with pytest.raises(ModelLoadError, match=r"on TensorRT: model\.int8\.onnx: .* zero point"):
        open_model(ModelRef.parse(str(asymmetric)), None, asymmetric, trt)
    with pytest.raises(TritonError, match="TensorRT takes symmetric INT8 only"):
        write_repository(asymmetric, card, TritonConfig(precision="int8"), tmp_path / "repo")
    cpu = TritonConfig(precision="int8", instance_kind="KIND_CPU")  # no TensorRT there
    assert (
        write_repository(asymmetric, card, cpu, tmp_path / "repo") / "1" / "model.onnx"
    ).is_file()
