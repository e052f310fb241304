"""onnxruntime (CPU) against torch eager on the same model, batch 1 and 32, in one run.

Uses an exported model folder (model.onnx + model.json) and the checkpoint it came from, or,
with --model, a fresh timm model exported on the spot. Prints images/s of both and the ratio
(goal: ORT >= 1.5x torch).

    python benchmarks/onnx_vs_torch.py [--checkpoint models/train/best.pt --export models/export]
    python benchmarks/onnx_vs_torch.py --model resnet18 --img-size 128
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from carinspect.config import ModelConfig
from carinspect.modeling.checkpoint import load_checkpoint, model_from_checkpoint
from carinspect.modeling.factory import build_model
from carinspect.modeling.onnx_export import export_onnx, session


def rate(fn: Callable[[], object], batch: int, seconds: float) -> float:
    for _ in range(3):
        fn()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        n += batch
    return n / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--checkpoint", type=Path, default=Path("models/train/best.pt"))
    ap.add_argument("--export", type=Path, default=Path("models/export"))
    ap.add_argument("--model", help="benchmark a fresh timm model instead of the checkpoint")
    ap.add_argument("--img-size", type=int, default=128)
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args()

    torch.set_grad_enabled(False)
    with tempfile.TemporaryDirectory() as tmp:
        if args.model:
            model = build_model(ModelConfig(name=args.model, img_size=args.img_size), 2).eval()
            size = args.img_size
            onnx_path = Path(tmp) / "model.onnx"
            export_onnx(model, 1.0, size, 18, onnx_path)
        else:
            state = load_checkpoint(args.checkpoint)
            model = model_from_checkpoint(state)
            size = int(state["preprocess"]["img_size"])
            onnx_path = args.export / "model.onnx"
        sess = session(onnx_path)
        print(
            f"model {args.model or args.checkpoint} at {size} px; torch {torch.__version__} "
            f"({torch.get_num_threads()} threads) vs onnxruntime CPU"
        )
        for batch in (1, 32):
            x = np.random.default_rng(0).standard_normal((batch, 3, size, size), dtype=np.float32)
            xt = torch.from_numpy(x)
            t = rate(lambda xt=xt: model(xt), batch, args.seconds)
            o = rate(lambda x=x: sess.run(None, {"input": x}), batch, args.seconds)
            print(
                f"batch {batch:2d}: torch eager {t:8.1f} images/s, onnxruntime {o:8.1f} images/s, "
                f"ratio {o / t:.2f}x (goal >= 1.5x)"
            )


if __name__ == "__main__":
    main()
