"""MODEL_PRECISION: which graph of a version answers (the INT8 graph export kept, or FP32)."""

import json
import shutil
from pathlib import Path

import pytest

from carinspect.config import DemoConfig, ExportConfig
from carinspect.data.decoding.images import ImageLimits
from carinspect.data.intake.demo import demo_files
from carinspect.serving.inference import answer, pixels_for
from carinspect.serving.loaded import ModelLoadError, ModelRef
from carinspect.serving.opening import open_model
from carinspect.serving.settings import ServeSettings
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


def test_auto_serves_the_int8_graph_and_fp32_the_float_one(with_int8: Path) -> None:
    int8, fp32 = _open(with_int8, "auto"), _open(with_int8, "fp32")
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
