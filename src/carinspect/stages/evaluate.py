"""evaluate: metrics, plots, calibration and per-image predictions on val and test.

Reads the best checkpoint, predicts val and test through the shared preprocessing, fits a
temperature on val (when ``evaluate.calibrate``) and reports everything with calibrated
probabilities, next to a most-frequent-class baseline. Output folder ``out``: ``metrics.json``
(``dvc metrics``), ``report.json``, ``calibration.json`` (the temperature export and serving use),
``predictions.csv``, ``figures/*.png`` and, for ``dvc plots``, ``plots/confusion.csv`` and
``plots/roc/<class>.csv`` / ``plots/pr/<class>.csv`` on test. All of it is logged to the
training run in MLflow.

A model with several tasks is evaluated per task on the images labelled for it, each with its
own temperature (``calibration.json`` holds ``temperatures``); ``metrics.json`` holds every
task's figures under ``tasks`` and, per split, their mean over tasks.
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
from carinspect.contracts.evaluation import TaskVerdict, Verdict
from carinspect.contracts.folders import EvaluateDir, IngestDir
from carinspect.contracts.preprocess import PreprocessSpec
from carinspect.contracts.tasks import MISSING, TaskSpec, task_slices, tasks_of_checkpoint
from carinspect.data.intake.manifest import read_manifest
from carinspect.data.loading.dataset import load_task_split, sample_labels
from carinspect.data.loading.streaming import eval_loader
from carinspect.data.storage.store import open_store
from carinspect.evaluation import calibration, mistakes, plots
from carinspect.evaluation.metrics import classification_report, majority_baseline
from carinspect.evaluation.verdict import judge
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
    verdict: Verdict


def _csv(header: list[str], rows: list[list[Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


@dataclass(frozen=True)
class _Assessment:
    """One task's calibrated probabilities, reports and figures' inputs on val and test."""

    temperature: float
    raw: dict[str, np.ndarray]
    probs: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    reports: dict[str, dict[str, Any]]
    baseline: dict[str, dict[str, float]]
    calibration: dict[str, Any]
    verdict: TaskVerdict

    def metrics(self) -> dict[str, Any]:
        """What metrics.json holds for the task."""
        out: dict[str, Any] = {
            s: {k: v for k, v in self.reports[s].items() if k != "per_class"} for s in SPLITS
        }
        out["baseline"] = self.baseline
        out["calibration"] = {k: v for k, v in self.calibration.items() if k != "fitted_on"}
        return out


def _assess(
    task: str,
    logits: dict[str, np.ndarray],
    labels: dict[str, np.ndarray],
    train_labels: list[int],
    classes: list[str],
    cfg: EvaluateConfig,
) -> _Assessment:
    """Fit the temperature on val, then report val and test with calibrated probabilities."""
    temperature = (
        calibration.fit_temperature(logits["val"], labels["val"]) if cfg.calibrate else 1.0
    )
    raw = {s: calibration.softmax(logits[s]) for s in SPLITS}
    probs = {s: calibration.softmax(logits[s], temperature) for s in SPLITS}
    reports = {s: classification_report(probs[s], labels[s], classes, cfg.ece_bins) for s in SPLITS}
    baseline = {s: majority_baseline(train_labels, labels[s], len(classes)) for s in SPLITS}
    calib: dict[str, Any] = {
        "temperature": temperature,
        "fitted_on": "val",
        "enabled": cfg.calibrate,
    }
    for s in SPLITS:
        calib[f"{s}_nll_before"] = calibration.nll(logits[s], labels[s])
        calib[f"{s}_nll_after"] = calibration.nll(logits[s], labels[s], temperature)
        calib[f"{s}_ece_before"] = (
            reports[s]["ece"] if temperature == 1.0 else _ece(raw[s], labels[s], cfg)
        )
        calib[f"{s}_ece_after"] = reports[s]["ece"]
    verdict = judge(task, probs["test"], labels["test"], train_labels, classes, temperature, cfg)
    return _Assessment(temperature, raw, probs, labels, reports, baseline, calib, verdict)


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
    tasks = tasks_of_checkpoint(state)
    spec = PreprocessSpec.from_dict(state["preprocess"])
    model = model_from_checkpoint(state)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    precision = Precision.choose(False, device)

    open_store(Path(ingest_dir)).verify()
    samples = {s: load_task_split(Path(splits), Path(ingest_dir), s, tasks) for s in SPLITS}
    for split, found in samples.items():
        if not found:
            raise ValueError(f"{splits}: the {split} split is empty; nothing to evaluate")
    logits, labels = {}, {}
    for split in SPLITS:
        logits[split], labels[split] = _scored(
            model, samples[split], spec, ingest_dir, cfg, device, precision
        )
    train_samples = load_task_split(Path(splits), Path(ingest_dir), "train", tasks)
    paths = {s: [str(x.path.relative_to(Path(ingest_dir))) for x in samples[s]] for s in SPLITS}
    result = _assess_tasks(tasks, logits, labels, train_samples, cfg, splits)
    metrics = (
        result[tasks[0].name].metrics()
        if len(tasks) == 1
        else _multitask_metrics({n: a.metrics() for n, a in result.items()})
    )

    out = Path(out)
    with staged_dir(out) as staged:
        tmp = EvaluateDir(staged)
        write_json_atomic(tmp.metrics, json_ready(metrics))
        report, temperatures = _report(tasks, result)
        write_json_atomic(tmp.calibration, temperatures)
        write_json_atomic(tmp.report, json_ready(report))
        verdict = Verdict(tasks=[result[t.name].verdict for t in tasks])
        write_json_atomic(tmp.verdict, verdict.model_dump(mode="json"))
        write_text_atomic(tmp.predictions, _predictions(tasks, logits, labels, result, paths))
        _plots(tmp, tasks, result, cfg)
        shown = _mistakes(tmp, tasks, result, labels["test"], paths["test"], Path(ingest_dir))
        _explained(tmp, model, spec, tasks, shown, Path(ingest_dir))
    if run_id:
        runs.append_to_run(
            settings, run_id, metrics, "eval.", out, "evaluation",
            params={"evaluate": cfg.model_dump()},
        )  # fmt: skip
    temperature = result[tasks[0].name].temperature
    return EvaluateResult(out=out, temperature=temperature, metrics=metrics, verdict=verdict)


def _scored(
    model: Any,
    samples: list[Any],
    spec: PreprocessSpec,
    ingest_dir: Path,
    cfg: EvaluateConfig,
    device: Any,
    precision: Precision,
) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels of ``samples``, in the samples' order (the loader sorts by size)."""
    loader, order = eval_loader(samples, spec, ingest_dir, cfg.batch_size, cfg.workers)
    found, truth = predict_logits(model, loader, device, precision)
    back = np.empty_like(order)
    back[order] = np.arange(len(order))
    return found[back], truth[back]


def _assess_tasks(
    tasks: list[TaskSpec],
    logits: dict[str, np.ndarray],
    labels: dict[str, np.ndarray],
    train_samples: list[Any],
    cfg: EvaluateConfig,
    splits: Path,
) -> dict[str, _Assessment]:
    """Each task assessed on the photos labelled for it (all of them for a single task)."""
    if len(tasks) == 1:
        train = sample_labels(train_samples, 0)
        return {tasks[0].name: _assess(tasks[0].name, logits, labels, train, tasks[0].classes, cfg)}
    result = {}
    for t, (task, sl) in enumerate(zip(tasks, task_slices(tasks), strict=True)):
        mask = {s: labels[s][:, t] != MISSING for s in SPLITS}
        for s in SPLITS:
            if not mask[s].any():
                raise ValueError(
                    f"{splits}: no image of the {s} split is labelled for task {task.name!r}"
                )
        train_labels = [c for c in sample_labels(train_samples, t) if c != MISSING]
        result[task.name] = _assess(
            task.name,
            {s: logits[s][mask[s], sl] for s in SPLITS},
            {s: labels[s][mask[s], t] for s in SPLITS},
            train_labels,
            task.classes,
            cfg,
        )
    return result


def _report(
    tasks: list[TaskSpec], result: dict[str, _Assessment]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """report.json (one task at the top level, several under ``tasks``) and calibration.json."""

    def entry(task: TaskSpec) -> dict[str, Any]:
        a = result[task.name]
        splits = {"splits": a.reports, "baseline": a.baseline, "calibration": a.calibration}
        return {"classes": task.classes, **splits}

    if len(tasks) == 1:
        return entry(tasks[0]), {"temperature": result[tasks[0].name].temperature}
    report = {"tasks": {task.name: entry(task) for task in tasks}}
    return report, {"temperatures": {n: a.temperature for n, a in result.items()}}


HEADLINE = ("accuracy", "balanced_accuracy", "macro_f1", "weighted_f1", "auroc_macro")


def _multitask_metrics(per_task: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """metrics.json of several tasks: each task's metrics under ``tasks``, and per split.

    The per-split figures are the mean over tasks of the headline ones; they are what the
    promotion gate compares, so ``eval.test.accuracy`` stands for every task.
    """
    out: dict[str, Any] = {"tasks": per_task}
    for s in SPLITS:
        out[s] = {}
        for key in HEADLINE:
            values = [m[s][key] for m in per_task.values() if m[s][key] is not None]
            out[s][key] = float(np.mean(values)) if values else None
    return out


def _predictions(
    tasks: list[TaskSpec],
    logits: dict[str, np.ndarray],
    labels: dict[str, np.ndarray],
    result: dict[str, _Assessment],
    paths: dict[str, list[str]],
) -> str:
    """The text of predictions.csv.

    One task: ``split,path,label,predicted,p_<class>...``. Several: the same columns per task
    after ``split,path``, each named ``<task>:<column>``; a task's probabilities are given for
    every image, its label only where it has one.
    """
    if len(tasks) == 1:
        a, classes = result[tasks[0].name], tasks[0].classes
        header = ["split", "path", "label", "predicted", *(f"p_{c}" for c in classes)]
        rows = [
            [s, path, classes[int(y)], classes[int(p.argmax())], *(f"{v:.6f}" for v in p)]
            for s in SPLITS
            for path, y, p in zip(paths[s], a.labels[s], a.probs[s], strict=True)
        ]
        return _csv(header, rows)
    header = ["split", "path"]
    for task in tasks:
        header += [f"{task.name}:label", f"{task.name}:predicted"]
        header += [f"{task.name}:p_{c}" for c in task.classes]
    rows = []
    for s in SPLITS:
        probs = [
            calibration.softmax(logits[s][:, sl], result[task.name].temperature)
            for task, sl in zip(tasks, task_slices(tasks), strict=True)
        ]
        for i, path in enumerate(paths[s]):
            row = [s, path]
            for t, task in enumerate(tasks):
                y, p = int(labels[s][i, t]), probs[t][i]
                row += [task.classes[y] if y != MISSING else "", task.classes[int(p.argmax())]]
                row += [f"{v:.6f}" for v in p]
            rows.append(row)
    return _csv(header, rows)


def _mistakes(
    out: EvaluateDir,
    tasks: list[TaskSpec],
    result: dict[str, _Assessment],
    test_labels: np.ndarray,
    test_paths: list[str],
    ingest_dir: Path,
) -> list[list[Any]]:
    """mistakes.csv and figures/mistakes.png: wrong and uncertain test photos, by source name.

    Returns the rows (task, kind, source, path, label, answer, probability, margin).
    """
    sources = {r.path: r.source for r in read_manifest(IngestDir(ingest_dir).manifest)}
    rows: list[list[Any]] = []
    for t, task in enumerate(tasks):
        a = result[task.name]
        # several tasks: a task's figures cover only the photos labelled for it
        kept = (
            np.arange(len(test_paths))
            if len(tasks) == 1
            else np.flatnonzero(test_labels[:, t] != MISSING)
        )
        for m in mistakes.pick(a.probs["test"], a.labels["test"], task.classes):
            path = test_paths[int(kept[m.index])]
            rows.append(
                [task.name, m.kind, sources.get(path, path), path, m.label, m.predicted,
                 f"{m.probability:.4f}", f"{m.margin:.4f}"]
            )  # fmt: skip
    write_text_atomic(
        out.mistakes,
        _csv(
            ["task", "kind", "source", "path", "label", "predicted", "probability", "margin"],
            rows,
        ),
    )
    shown = rows[: mistakes.SHEET_MAX]
    blobs = open_store(ingest_dir).read_many([ingest_dir / r[3] for r in shown])
    captions = [f"{Path(r[2]).name}\n{r[4]} -> {r[5]} {float(r[6]):.2f}" for r in shown]
    wrong = [r[1] == "wrong" for r in shown]
    mistakes.contact_sheet(blobs, captions, wrong, out.mistakes_sheet)
    return rows


def _explained(
    out: EvaluateDir,
    model: Any,
    spec: PreprocessSpec,
    tasks: list[TaskSpec],
    rows: list[list[Any]],
    ingest_dir: Path,
) -> None:
    """figures/mistakes_explained.png: each wrong test photo with the heatmap of its answer.

    Only for a model with class activation maps (:mod:`carinspect.modeling.explain`); the
    maps come from the checkpoint here, as the exported graph computes them.
    """
    import torch
    from PIL import Image

    from carinspect.data.loading.preprocess import preprocess
    from carinspect.evaluation.heatmap import heatmap, overlay, png
    from carinspect.modeling.explain import cam_unavailable, class_maps

    why = cam_unavailable(model, spec.img_size)
    if why is not None:
        logger.info("no %s: %s", out.mistakes_explained.name, why)
        return
    wrong = [r for r in rows if r[1] == "wrong"][: mistakes.SHEET_MAX]
    blobs = open_store(ingest_dir).read_many([ingest_dir / r[3] for r in wrong])
    offsets = dict(zip([t.name for t in tasks], task_slices(tasks), strict=True))
    pictures = []
    for row, blob in zip(wrong, blobs, strict=True):
        with Image.open(io.BytesIO(bytes(blob))) as im:
            photo = im.convert("RGB")
        x = torch.from_numpy(preprocess(photo, spec))[None].to(next(model.parameters()).device)
        with torch.no_grad():
            maps = class_maps(model.get_classifier(), model.forward_features(x))[0].cpu()
        task = next(t for t in tasks if t.name == row[0])
        cam = maps[offsets[task.name]][task.classes.index(row[5])].numpy()
        pictures.append(png(overlay(photo, heatmap(cam, photo.width, photo.height, spec))))
    captions = [f"{Path(r[2]).name}\n{r[4]} -> {r[5]} {float(r[6]):.2f}" for r in wrong]
    mistakes.contact_sheet(pictures, captions, [True] * len(wrong), out.mistakes_explained)


def _ece(probs: np.ndarray, labels: np.ndarray, cfg: EvaluateConfig) -> float:
    from carinspect.evaluation.metrics import expected_calibration_error

    return expected_calibration_error(probs, labels, cfg.ece_bins)


def _plots(
    out: EvaluateDir, tasks: list[TaskSpec], result: dict[str, _Assessment], cfg: EvaluateConfig
) -> None:
    """Figures per split and, for `dvc plots`, test-split confusion pairs and ROC/PR curves.

    Several tasks: figures are prefixed with the task; confusion classes read ``task: class``
    (one matrix, one block per task) and curves are ``<task>.<class>.csv``.
    """
    figures, folder = out.root / "figures", out.root / "plots"
    figures.mkdir(parents=True, exist_ok=True)
    multi = len(tasks) > 1
    pairs: list[list[str]] = []
    for task in tasks:
        a, classes = result[task.name], task.classes
        prefix = f"{task.name}_" if multi else ""
        shown = [f"{task.name}: {c}" for c in classes] if multi else classes
        for s in SPLITS:
            pred = a.probs[s].argmax(axis=1)
            title = f"{task.name}, {s}" if multi else s
            plots.confusion_png(
                a.labels[s], pred, classes, title, figures / f"{prefix}confusion_{s}.png"
            )
            plots.curves_png(
                a.probs[s], a.labels[s], classes, title, figures / f"{prefix}curves_{s}.png"
            )
            plots.reliability_png(
                a.raw[s],
                a.probs[s],
                a.labels[s],
                cfg.ece_bins,
                title,
                figures / f"{prefix}reliability_{s}.png",
            )
        y, p = a.labels["test"], a.probs["test"]
        pairs += [[shown[i], shown[j]] for i, j in zip(y, p.argmax(1), strict=True)]
        for k, name in enumerate(classes):
            positive = y == k
            if positive.all() or not positive.any():
                continue
            fpr, tpr, _ = skm.roc_curve(positive, p[:, k])
            precision, recall, _ = skm.precision_recall_curve(positive, p[:, k])
            stem = f"{task.name}.{name}" if multi else name
            write_text_atomic(
                folder / "roc" / f"{stem}.csv",
                _csv(
                    ["fpr", "tpr"],
                    [[f"{a:.6f}", f"{b:.6f}"] for a, b in zip(fpr, tpr, strict=True)],
                ),
            )
            write_text_atomic(
                folder / "pr" / f"{stem}.csv",
                _csv(
                    ["recall", "precision"],
                    [[f"{a:.6f}", f"{b:.6f}"] for a, b in zip(recall, precision, strict=True)],
                ),
            )
    write_text_atomic(out.confusion, _csv(["actual", "predicted"], pairs))
