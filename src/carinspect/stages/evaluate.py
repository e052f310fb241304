"""evaluate: metrics, plots, calibration and per-image predictions on val and test.

Reads the best checkpoint, predicts val and test through the shared preprocessing, fits a
temperature on val (when ``evaluate.calibrate``) and reports everything with calibrated
probabilities, next to a most-frequent-class baseline. Output folder ``out``: ``metrics.json``
(``dvc metrics``), ``report.json``, ``calibration.json`` (the temperature export and serving use),
``predictions.csv``, ``figures/*.png`` and, for ``dvc plots``, ``plots/confusion.csv`` and
``plots/roc/<class>.csv`` / ``plots/pr/<class>.csv`` on test. All of it is logged to the
training run in MLflow.
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn import metrics as skm

from carinspect.config import EvaluateConfig, Settings
from carinspect.contracts.folders import EvaluateDir
from carinspect.contracts.preprocess import PreprocessSpec
from carinspect.data.dataset import ImageDataset, load_split, loader_for
from carinspect.evaluation import calibration, plots
from carinspect.evaluation.metrics import classification_report, majority_baseline
from carinspect.io import json_ready, staged_dir, write_json_atomic, write_text_atomic
from carinspect.modeling.checkpoint import load_checkpoint, model_from_checkpoint
from carinspect.tracking import runs
from carinspect.training.loop import Precision, predict_logits

logger = logging.getLogger(__name__)
SPLITS = ("val", "test")


@dataclass(frozen=True)
class EvaluateResult:
    """Headline figures and where the outputs are."""

    out: Path
    temperature: float
    metrics: dict[str, Any]


def _csv(header: list[str], rows: list[list[Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def run(
    cfg: EvaluateConfig,
    settings: Settings,
    checkpoint: Path,
    ingest_dir: Path,
    splits: Path,
    out: Path,
    run_id: str | None = None,
) -> EvaluateResult:
    """Evaluate ``checkpoint`` on val and test; append to MLflow run ``run_id`` when given."""
    import torch

    state = load_checkpoint(Path(checkpoint))
    classes: list[str] = state["classes"]
    spec = PreprocessSpec.from_dict(state["preprocess"])
    model = model_from_checkpoint(state)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    precision = Precision.choose(False, device)

    logits: dict[str, np.ndarray] = {}
    labels: dict[str, np.ndarray] = {}
    samples = {}
    for split in SPLITS:
        samples[split] = load_split(Path(splits), Path(ingest_dir), split, classes)
        if not samples[split]:
            raise ValueError(f"{splits}: the {split} split is empty; nothing to evaluate")
        ds = ImageDataset(samples[split], spec)
        loader = loader_for(ds, cfg.batch_size, list(range(len(ds))), cfg.workers, drop_last=False)
        logits[split], labels[split] = predict_logits(model, loader, device, precision)

    temperature = (
        calibration.fit_temperature(logits["val"], labels["val"]) if cfg.calibrate else 1.0
    )
    raw = {s: calibration.softmax(logits[s]) for s in SPLITS}
    probs = {s: calibration.softmax(logits[s], temperature) for s in SPLITS}
    reports = {s: classification_report(probs[s], labels[s], classes, cfg.ece_bins) for s in SPLITS}
    train_labels = [
        x.label
        for x in load_split(Path(splits), Path(ingest_dir), "train", classes)
        if isinstance(x.label, int)
    ]
    baseline = {s: majority_baseline(train_labels, labels[s], len(classes)) for s in SPLITS}
    calib = {"temperature": temperature, "fitted_on": "val", "enabled": cfg.calibrate}
    for s in SPLITS:
        calib[f"{s}_nll_before"] = calibration.nll(logits[s], labels[s])
        calib[f"{s}_nll_after"] = calibration.nll(logits[s], labels[s], temperature)
        calib[f"{s}_ece_before"] = (
            reports[s]["ece"] if temperature == 1.0 else _ece(raw[s], labels[s], cfg)
        )
        calib[f"{s}_ece_after"] = reports[s]["ece"]

    metrics = {s: {k: v for k, v in reports[s].items() if k != "per_class"} for s in SPLITS}
    metrics["baseline"] = baseline
    metrics["calibration"] = {k: v for k, v in calib.items() if k != "fitted_on"}
    out = Path(out)
    with staged_dir(out) as staged:
        tmp = EvaluateDir(staged)
        write_json_atomic(tmp.metrics, json_ready(metrics))
        write_json_atomic(
            tmp.report,
            json_ready(
                {"classes": classes, "splits": reports, "baseline": baseline, "calibration": calib}
            ),
        )
        write_json_atomic(tmp.calibration, {"temperature": temperature})
        rows = [
            [
                s,
                str(smp.path.relative_to(Path(ingest_dir))),
                classes[int(y)],
                classes[int(p.argmax())],
                *(f"{v:.6f}" for v in p),
            ]
            for s in SPLITS
            for smp, y, p in zip(samples[s], labels[s], probs[s], strict=True)
        ]
        write_text_atomic(
            tmp.predictions,
            _csv(["split", "path", "label", "predicted", *(f"p_{c}" for c in classes)], rows),
        )
        _plots(tmp, probs, raw, labels, classes, cfg)
    if run_id:
        runs.append_to_run(
            settings, run_id, metrics, "eval.", out, "evaluation",
            params={"evaluate": cfg.model_dump()},
        )  # fmt: skip
    t = metrics["test"]
    logger.info(
        "test: accuracy %.3f, macro-F1 %.3f, AUROC %s, ECE %.3f (T=%.3f); baseline accuracy %.3f",
        t["accuracy"],
        t["macro_f1"],
        t["auroc_macro"],
        t["ece"],
        temperature,
        baseline["test"]["accuracy"],
    )
    return EvaluateResult(out=out, temperature=temperature, metrics=metrics)


def _ece(probs: np.ndarray, labels: np.ndarray, cfg: EvaluateConfig) -> float:
    from carinspect.evaluation.metrics import expected_calibration_error

    return expected_calibration_error(probs, labels, cfg.ece_bins)


def _plots(
    out: EvaluateDir,
    probs: dict[str, np.ndarray],
    raw: dict[str, np.ndarray],
    labels: dict[str, np.ndarray],
    classes: list[str],
    cfg: EvaluateConfig,
) -> None:
    figures, folder = out.root / "figures", out.root / "plots"
    figures.mkdir(parents=True, exist_ok=True)
    for s in SPLITS:
        pred = probs[s].argmax(axis=1)
        plots.confusion_png(labels[s], pred, classes, s, figures / f"confusion_{s}.png")
        plots.curves_png(probs[s], labels[s], classes, s, figures / f"curves_{s}.png")
        plots.reliability_png(
            raw[s], probs[s], labels[s], cfg.ece_bins, s, figures / f"reliability_{s}.png"
        )
    y, p = labels["test"], probs["test"]
    write_text_atomic(
        out.confusion,
        _csv(
            ["actual", "predicted"],
            [[classes[a], classes[b]] for a, b in zip(y, p.argmax(1), strict=True)],
        ),
    )
    for k, name in enumerate(classes):
        positive = y == k
        if positive.all() or not positive.any():
            continue
        fpr, tpr, _ = skm.roc_curve(positive, p[:, k])
        precision, recall, _ = skm.precision_recall_curve(positive, p[:, k])
        write_text_atomic(
            folder / "roc" / f"{name}.csv",
            _csv(["fpr", "tpr"], [[f"{a:.6f}", f"{b:.6f}"] for a, b in zip(fpr, tpr, strict=True)]),
        )
        write_text_atomic(
            folder / "pr" / f"{name}.csv",
            _csv(
                ["recall", "precision"],
                [[f"{a:.6f}", f"{b:.6f}"] for a, b in zip(recall, precision, strict=True)],
            ),
        )
