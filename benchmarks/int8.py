"""INT8 against FP32 in process: images/s at batch 32 and the decisions that differ.

The model's FP32 graph (an export folder: model.onnx + model.json) is quantized as
`export.quantize: int8` does it (onnxruntime static QDQ, per-channel weights, the head in FP32),
calibrated on half of the photos through the served preprocessing, twice: symmetric (the default,
what TensorRT takes) and with asymmetric activations (``export.int8_symmetric: false``). The
graphs then answer the other half, batch 32, in turns (``--rounds``) with the server's session
settings, and their decisions are compared with FP32's under the model's own rule. Prints
images/s of each, the ratios (goal >= 2x) and the share of decisions that differ from FP32 (goal
<= 1%), with the CPU's name and flags.

    python benchmarks/int8.py [--model models/export] [--images DIR] [--count 256]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_throughput import ROOT, _images

from carinspect.data.decoding.images import ImageLimits
from carinspect.modeling.quantize import quantize_int8
from carinspect.serving.inference import answer, pixels_for
from carinspect.serving.loaded import LoadedModel, ModelRef
from carinspect.serving.opening import open_model
from carinspect.serving.settings import ServeSettings


def _cpu() -> str:
    name = platform.processor() or "unknown CPU"
    try:
        lines = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        name = next(
            x.split(":", 1)[1].strip() for x in lines.splitlines() if x.startswith("Model name")
        )
        flags = next(x for x in lines.splitlines() if x.startswith("Flags")).split()
        wanted = ("avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16")
        name += " (" + ", ".join(f for f in wanted if f in flags) + ")"
    except (OSError, subprocess.CalledProcessError, StopIteration):
        pass
    return name


def _rate(model: LoadedModel, batch: np.ndarray, seconds: float) -> float:
    model.infer(batch)
    start, n = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        model.infer(batch)
        n += 1
    return n * len(batch) / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=ROOT / "models" / "export")
    ap.add_argument(
        "--images", type=Path, default=ROOT.parent / "shared" / "data" / "car-integrity-indrive"
    )
    ap.add_argument("--count", type=int, default=256)
    ap.add_argument("--seconds", type=float, default=5.0, help="per graph and round")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if not (args.model / "model.onnx").is_file():
        sys.exit(f"{args.model}: no model.onnx (run scripts/main.sh, or pass --model)")
    settings = ServeSettings(MODEL_URI=str(args.model), MODEL_PRECISION="fp32")
    fp32 = open_model(ModelRef.parse(str(args.model)), None, args.model, settings)
    photos = [pixels_for(d, fp32, ImageLimits()) for d in _images(args.images, args.count)]
    half = len(photos) // 2
    calibration, held = np.stack(photos[:half]), np.stack(photos[half:])
    with tempfile.TemporaryDirectory() as tmp:
        models = {"fp32": fp32}
        for name, symmetric in (("int8", True), ("int8 asymmetric", False)):
            folder = Path(tmp) / name.replace(" ", "_")
            folder.mkdir()
            for f in args.model.iterdir():
                if f.is_file():
                    (folder / f.name).write_bytes(f.read_bytes())
            quantize_int8(args.model / "model.onnx", folder / "model.onnx",
                          (calibration[i : i + 32] for i in range(0, half, 32)), symmetric)  # fmt: skip
            models[name] = open_model(ModelRef.parse(str(folder)), None, folder, settings)
        batch = held[:32]
        rates: dict[str, list[float]] = {name: [] for name in models}
        for _ in range(args.rounds):
            for name, model in models.items():
                rates[name].append(_rate(model, batch, args.seconds))
        decided = {}
        for name, model in models.items():
            scores = [model.infer(held[i : i + 32]) for i in range(0, len(held), 32)]
            decided[name] = [answer(model, s).labels for group in scores for s in group]
    f = statistics.median(rates["fp32"])
    print(f"{_cpu()}; model {args.model} ({fp32.meta['name']}, {fp32.spec.img_size} px)")
    print(f"batch 32, median of {args.rounds} rounds: FP32 {f:.1f} images/s")
    for name in ("int8", "int8 asymmetric"):
        q = statistics.median(rates[name])
        differ = sum(a != b for a, b in zip(decided["fp32"], decided[name], strict=True))
        print(f"{name}: {q:.1f} images/s, {q / f:.2f}x FP32 (goal >= 2x); decisions that differ: "
              f"{differ} of {len(held)} ({differ / len(held):.2%}, goal <= 1%)")  # fmt: skip


if __name__ == "__main__":
    main()
