"""One two-head model against two single-task models answering the same two questions per photo.

The reason multi-task models exist: one backbone run per photo instead of one per question. All
measured in one run on the same photos, with models of the same architecture and input size:
- in-process: decode + preprocess + batched onnxruntime per photo, for (a) the two-head model,
  (b) two single-task models sharing one decode (the best a two-model service can do), and
  (c) two single-task services, each decoding the photo itself;
- HTTP: one `carinspect serve` with the two-head model driven by wrk at concurrency 32, against
  two `carinspect serve` processes (one per single-task model) driven at 16 each at the same
  time on the same machine; a photo is answered when both have answered it, so the two-service
  rate is the slower of the two. Rounds alternate between the set-ups (medians printed);
- Monte Carlo dropout: in-process cost per photo of MC_SAMPLES = 0, 10, 30, 100 on the
  two-head model.

The models are built here (the architecture and size of the demo's: ``--model``, ``--img-size``)
with random weights and exported through carinspect's ONNX export: throughput does not depend
on the weights.

    python benchmarks/multitask_throughput.py [--images DIR] [--phone] [--seconds 6] [--rounds 3]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_throughput import (
    _free_port,
    _images,
    _start,
    _stop,
    drive,
    phone_photos,
    wrk_script,
)

from carinspect.contracts.cards import parse_card
from carinspect.contracts.onnx_names import FEATURES, INPUT, task_output
from carinspect.contracts.preprocess import PreprocessSpec
from carinspect.data.decoding.images import ImageLimits
from carinspect.io import write_json_atomic
from carinspect.serving.inference import answer, pixels_for
from carinspect.serving.loaded import LoadedModel, ModelRef
from carinspect.serving.opening import open_model
from carinspect.serving.settings import ServeSettings

TASKS = {"cleanliness": ["clean", "dirty"], "damage": ["damaged", "intact"]}


def _rule(classes: list[str]) -> dict[str, object]:
    return {
        "task": "binary", "classes": classes, "positive_class": classes[0],
        "negative_class": classes[1], "threshold": 0.5, "t_low": 0.4, "t_high": 0.6,
    }  # fmt: skip


def build(out: Path, name: str, img_size: int, tasks: dict[str, list[str]]) -> Path:
    """Export a random-weight ``name`` with one head per task (one task: today's layout)."""
    import torch

    from carinspect.config import ModelConfig
    from carinspect.modeling.factory import build_model
    from carinspect.modeling.onnx_export import Head, export_dropout_head, export_onnx

    torch.manual_seed(0)
    width = sum(len(c) for c in tasks.values())
    cfg = ModelConfig(name=name, img_size=img_size, drop_rate=0.2)
    model = build_model(cfg, width).eval()
    spec = PreprocessSpec.from_model(cfg, source_short_side=128)
    multi = len(tasks) > 1
    heads, start = [], 0
    for task, classes in tasks.items():
        heads.append(Head(task, slice(start, start + len(classes)), 1.0))
        start += len(classes)
    out.mkdir(parents=True)
    export_onnx(model, 1.0, img_size, 18, out / "model.onnx", heads if multi else None, True)
    export_dropout_head(model, 1.0, img_size, 18, out / "mc_head.onnx", heads if multi else None)
    if multi:
        answer_part: dict[str, object] = {
            "tasks": [
                {"name": t, "classes": c, "decision": _rule(c), "output": task_output(t)}
                for t, c in tasks.items()
            ]
        }
        outputs = ["logits", *(task_output(t) for t in tasks), FEATURES]
    else:
        classes = next(iter(tasks.values()))
        answer_part = {"classes": classes, "decision": _rule(classes)}
        outputs = ["logits", "probabilities", FEATURES]
    card = parse_card({
        "name": name, **answer_part, "preprocess": spec.to_dict(),
        "input": {"name": INPUT, "shape": ["batch", 3, img_size, img_size]},
        "outputs": outputs,
        "mc_dropout": {"rate": 0.2, "head": "mc_head.onnx", "features": FEATURES},
    }, f"the benchmark's {name} card")  # fmt: skip
    write_json_atomic(out / "model.json", card.to_json())
    return out


def _open(folder: Path, mc: int = 0) -> LoadedModel:
    settings = ServeSettings(MC_SAMPLES=mc, MC_SEED=0)
    return open_model(ModelRef.parse(str(folder)), None, folder, settings)


def _photos_per_s(work: Callable[[list[bytes]], None], images: list[bytes], rounds: int) -> float:
    start = time.perf_counter()
    for _ in range(rounds):
        for i in range(0, len(images), 32):
            work(images[i : i + 32])
    return rounds * len(images) / (time.perf_counter() - start)


def in_process(two_head: Path, singles: list[Path], images: list[bytes], rounds: int) -> None:
    """Photos/s answered for both tasks, in one process, the three ways."""
    multi, first, second = _open(two_head), _open(singles[0]), _open(singles[1])
    limits = ImageLimits()

    def one_model(chunk: list[bytes]) -> None:
        rows = multi.infer(np.stack([pixels_for(d, multi, limits) for d in chunk]))
        for row in rows:
            answer(multi, row)

    def two_models_one_decode(chunk: list[bytes]) -> None:
        batch = np.stack([pixels_for(d, first, limits) for d in chunk])
        for m in (first, second):
            for row in m.infer(batch):
                answer(m, row)

    def two_services(chunk: list[bytes]) -> None:
        for m in (first, second):
            for row in m.infer(np.stack([pixels_for(d, m, limits) for d in chunk])):
                answer(m, row)

    ways = {
        "one two-head model": one_model,
        "two models, one decode": two_models_one_decode,
        "two services (each decodes)": two_services,
    }
    found: dict[str, list[float]] = {k: [] for k in ways}
    for _ in range(rounds):  # alternate, so the machine's drift hits all alike
        for name, work in ways.items():
            found[name].append(_photos_per_s(work, images, 1))
    base = float(np.median(found["one two-head model"]))
    print(f"\n{'in-process, both tasks per photo':34} {'photos/s':>9} {'two-head x':>11}")
    for name, values in found.items():
        rate = float(np.median(values))
        print(f"{name:34} {rate:9.1f} {base / rate:10.2f}x")


def mc_cost(two_head: Path, images: list[bytes], rounds: int) -> None:
    """In-process ms per photo (decode + preprocess + inference) per MC_SAMPLES."""
    limits = ImageLimits()
    print(f"\n{'MC_SAMPLES':>10} {'ms/photo':>9} {'x off':>6}")
    base = None
    for k in (0, 10, 30, 100):
        model = _open(two_head, k)

        def work(chunk: list[bytes], model: LoadedModel = model) -> None:
            model.infer(np.stack([pixels_for(d, model, limits) for d in chunk]))

        ms = 1000 / _photos_per_s(work, images, rounds)
        base = base or ms
        print(f"{k:10d} {ms:9.2f} {ms / base:5.2f}x")


def over_http(
    two_head: Path, singles: list[Path], images: list[bytes], seconds: int, rounds: int
) -> None:
    """One two-head server at c32 against two single-task servers at c16 each, side by side."""
    script = wrk_script(images, Path(tempfile.mkdtemp()))
    venv = Path(sys.executable).parent
    ports = {str(p): _free_port() for p in (two_head, *singles)}
    procs = []
    try:
        for folder, port in ports.items():
            cmd = [str(venv / "carinspect"), "serve", "--port", str(port)]
            procs.append(_start(cmd, {"MODEL_URI": folder}, port))
            drive(port, script, 8, 2)  # warm-up
        one, two = [], []
        for _ in range(rounds):
            one.append(drive(ports[str(two_head)], script, 32, seconds)["rps"])
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(2) as pool:
                both = list(
                    pool.map(
                        lambda folder: drive(ports[str(folder)], script, 16, seconds)["rps"],
                        singles,
                    )
                )
            two.append(min(both))  # a photo is answered when both services answered it
    finally:
        for proc in procs:
            _stop(proc)
    a, b = float(np.median(one)), float(np.median(two))
    print(f"\n{'over HTTP, both tasks per photo':34} {'photos/s':>9}")
    print(f"{'one carinspect serve, two heads':34} {a:9.1f}")
    print(f"{'two carinspect serve, one head':34} {b:9.1f}")
    print(f"two-head / two services: {a / b:.2f}x")


def main() -> None:
    """Build the models, then print the in-process, MC dropout and HTTP comparisons."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_images = Path(__file__).resolve().parents[2] / "shared" / "data" / "car-glass-indrive"
    parser.add_argument("--images", type=Path, default=default_images)
    parser.add_argument("--count", type=int, default=64, help="distinct photos")
    parser.add_argument("--model", default="resnet10t", help="timm architecture")
    parser.add_argument("--img-size", type=int, default=96)
    parser.add_argument("--phone", action="store_true", help="re-encode at 2000x1500 first")
    parser.add_argument("--seconds", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-http", action="store_true", help="in-process figures only")
    args = parser.parse_args()
    if not args.no_http and shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install wrk (or pass --no-http)")
    images = _images(args.images, args.count)
    if args.phone:
        images = phone_photos(images, (2000, 1500))
    size = sum(map(len, images)) / len(images) / 1024
    print(f"{len(images)} photos, {size:.0f} KiB on average; {args.model} at {args.img_size} px")
    root = Path(tempfile.mkdtemp())
    two_head = build(root / "two-head", args.model, args.img_size, TASKS)
    singles = [
        build(root / task, args.model, args.img_size, {task: classes})
        for task, classes in TASKS.items()
    ]
    in_process(two_head, singles, images, args.rounds)
    mc_cost(two_head, images, args.rounds)
    if not args.no_http:
        over_http(two_head, singles, images, args.seconds, args.rounds)


if __name__ == "__main__":
    main()
