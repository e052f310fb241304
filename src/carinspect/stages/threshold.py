"""threshold: choose the operating point on val, report it on val and test with bootstrap CIs.

Binary task: the threshold on ``positive_class`` (its calibrated probability) that reaches
``target_precision`` on val with the highest recall, and an uncertainty band [T_LOW, T_HIGH):
at or above T_HIGH the decision is the positive class, below T_LOW the other class, in between
"uncertain". More than two classes: a minimum confidence (and optional per-class minimums) below
which the label is "uncertain".

Input: evaluate's ``predictions.csv`` (calibrated probabilities). Output folder ``out``:
``threshold.json`` (what export and serving apply), ``metrics.json``, ``figures/threshold.png``
and, for ``dvc plots``, ``plots/<class>.csv``: precision, recall and coverage on val of answering
that class above each threshold (binary: the positive class; multiclass: every predicted class,
under the argmax rule, which is what ``per_class`` tunes).

Several tasks: one rule per task, each from this section with ``threshold.tasks.<task>``
applied over it, chosen on the val images labelled for that task. threshold.json is then
``{"tasks": {<task>: <rule>}}``, ``metrics.json`` is keyed by task, and plots and figures are
prefixed with the task.
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from carinspect.config import Settings, ThresholdConfig
from carinspect.contracts.base import ContractError
from carinspect.contracts.evaluation import prediction_tasks
from carinspect.contracts.evaluation import read_predictions as read_prediction_file
from carinspect.contracts.folders import ThresholdDir
from carinspect.contracts.rules import parse_rule
from carinspect.errors import InputError
from carinspect.evaluation import plots
from carinspect.evaluation import threshold as th
from carinspect.io import json_ready, staged_dir, write_json_atomic, write_text_atomic
from carinspect.tracking import runs

logger = logging.getLogger(__name__)


class ThresholdError(InputError):
    """The operating point asked for cannot be reached, or the inputs do not fit."""


@dataclass(frozen=True)
class ThresholdResult:
    """threshold.json's content and where it is."""

    out: Path
    spec: dict[str, Any]


def read_predictions(
    path: Path, task: str | None = None
) -> tuple[list[str], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Classes and per split (probabilities, labels) of ``task``; val must have rows."""
    try:
        classes, out = read_prediction_file(path, task or "")
    except ContractError as err:
        raise ThresholdError(str(err)) from None
    if len(out["val"][1]) == 0:
        raise ThresholdError(f"{path}: no val rows; the threshold is chosen on val")
    return classes, out


def _binary_at(
    s: np.ndarray, pos: np.ndarray, t_low: float, t_high: float, i: np.ndarray
) -> dict[str, float]:
    return th.binary_summary(s[i], pos[i], t_low, t_high)


def _multiclass_at(
    p: np.ndarray, y: np.ndarray, min_conf: float, per_class: np.ndarray, i: np.ndarray
) -> dict[str, float]:
    return th.multiclass_summary(p[i], y[i], min_conf, per_class)


def check_rule(cfg: ThresholdConfig, classes: list[str], where: str = "threshold") -> None:
    """Refuse a two-class rule that names a class the data does not have.

    Called by the stage and, before any training, by ``carinspect split`` once ingest knows the
    classes: the demo's ``positive_class: clean`` is wrong for everyone else's photos, and
    finding out after the minutes of training costs those minutes.
    """
    if len(classes) != 2 or cfg.positive_class is None or cfg.positive_class in classes:
        return
    raise ThresholdError(
        f"{where}.positive_class {cfg.positive_class!r} is not one of {classes} (the data's "
        f"classes): set it to the class whose precision matters, or to null for {classes[1]!r}"
    )


def _binary(
    cfg: ThresholdConfig, classes: list[str], data: dict[str, tuple[np.ndarray, np.ndarray]]
) -> dict[str, Any]:
    check_rule(cfg, classes)
    positive = cfg.positive_class or classes[1]
    k = classes.index(positive)
    scores, labels = data["val"][0][:, k], data["val"][1] == k
    choice = th.precision_threshold(scores, labels, cfg.target_precision)
    fallback = False
    if not choice.reached:
        if not cfg.allow_fallback:
            raise ThresholdError(
                f"precision {cfg.target_precision:g} for {positive!r} is out of reach on val: the best "
                f"achievable is {choice.best_precision:.4f} (threshold {choice.threshold:.4f}); lower "
                "threshold.target_precision or set threshold.allow_fallback: true"
            )
        fallback = True
        logger.warning(
            "threshold.target_precision %.3f for %r is out of reach on val: using the most "
            "precise threshold %.4f, precision %.4f (threshold.allow_fallback: false stops here)",
            cfg.target_precision, positive, choice.threshold, choice.precision,
        )  # fmt: skip
    t_high = cfg.band_high if cfg.band_high is not None else choice.threshold
    t_low = (
        cfg.band_low
        if cfg.band_low is not None
        else th.band_from_coverage(scores, t_high, cfg.target_coverage)
    )
    t_low = min(t_low, t_high)
    report: dict[str, Any] = {}
    for split, (probs, y) in data.items():
        if len(y) == 0:
            continue
        s, pos = probs[:, k], y == k
        report[split] = {
            **th.binary_summary(s, pos, t_low, t_high),
            "ci95": th.bootstrap_ci(
                partial(_binary_at, s, pos, t_low, t_high),
                len(s),
                cfg.bootstrap,
                cfg.seed,
            ),
        }
    return {
        "task": "binary",
        "positive_class": positive,
        "negative_class": next(c for c in classes if c != positive),
        "target_precision": cfg.target_precision,
        "threshold": choice.threshold,
        "t_low": t_low,
        "t_high": t_high,
        "fallback": fallback,
        "val_precision_at_threshold": choice.precision,
        "val_recall_at_threshold": choice.recall,
        "splits": report,
    }


def _multiclass(
    cfg: ThresholdConfig, classes: list[str], data: dict[str, tuple[np.ndarray, np.ndarray]]
) -> dict[str, Any]:
    unknown = sorted(set(cfg.per_class) - set(classes))
    if unknown:
        raise ThresholdError(
            f"threshold.per_class names unknown classes {unknown}; classes are {classes}"
        )
    per_class = np.array([cfg.per_class.get(c, 0.0) for c in classes])
    report: dict[str, Any] = {}
    for split, (probs, y) in data.items():
        if len(y) == 0:
            continue
        report[split] = {
            **th.multiclass_summary(probs, y, cfg.min_confidence, per_class),
            "ci95": th.bootstrap_ci(
                partial(_multiclass_at, probs, y, cfg.min_confidence, per_class),
                len(y),
                cfg.bootstrap,
                cfg.seed,
            ),
        }
    return {
        "task": "multiclass",
        "min_confidence": cfg.min_confidence,
        "per_class": dict(cfg.per_class),
        "splits": report,
    }


def _curves(
    classes: list[str], spec: dict[str, Any], data: dict[str, tuple[np.ndarray, np.ndarray]]
) -> dict[str, th.LabelCurve]:
    """Val curves of each answer the rule can give.

    Binary: the positive class. Multiclass: every class that is ever the most probable one.
    """
    probs, y = data["val"]
    if spec["task"] == "binary":
        k = classes.index(spec["positive_class"])
        return {classes[k]: th.label_curve(probs, y, k, top_only=False)}
    curves = {c: th.label_curve(probs, y, k, top_only=True) for k, c in enumerate(classes)}
    return {c: curve for c, curve in curves.items() if len(curve.threshold)}


def _curve_csv(curve: th.LabelCurve) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["threshold", "precision", "recall", "coverage"])
    w.writerows(
        [f"{t:.6f}", f"{p:.6f}", f"{r:.6f}", f"{c:.6f}"]
        for t, p, r, c in zip(
            curve.threshold, curve.precision, curve.recall, curve.coverage, strict=True
        )
    )
    return buf.getvalue()


@dataclass(frozen=True)
class _TaskRule:
    """One task's rule with what it was chosen from."""

    classes: list[str]
    data: dict[str, tuple[np.ndarray, np.ndarray]]
    spec: dict[str, Any]

    @property
    def metrics(self) -> dict[str, Any]:
        """Per-split figures without their confidence intervals."""
        return {
            split: {k: v for k, v in figs.items() if k != "ci95"}
            for split, figs in self.spec["splits"].items()
        }


def _choose(cfg: ThresholdConfig, predictions: Path, task: str | None) -> _TaskRule:
    classes, data = read_predictions(predictions, task)
    spec = _binary(cfg, classes, data) if len(classes) == 2 else _multiclass(cfg, classes, data)
    spec = json_ready({"classes": classes, **spec})
    where = f" for task {task!r}" if task else ""
    parse_rule(spec, f"the decision rule threshold chose{where}")  # what export will read
    return _TaskRule(classes, data, spec)


def _write_plots(staged: Path, rule: _TaskRule, prefix: str) -> None:
    curves = _curves(rule.classes, rule.spec, rule.data)
    for name, curve in curves.items():
        write_text_atomic(staged / "plots" / f"{prefix}{name}.csv", _curve_csv(curve))
    (staged / "figures").mkdir(exist_ok=True)
    figure = staged / "figures" / f"{prefix}threshold.png"
    spec = rule.spec
    if spec["task"] == "binary":
        plots.binary_threshold_png(
            curves[spec["positive_class"]], spec["positive_class"], spec, figure
        )
    else:
        plots.multiclass_threshold_png(*rule.data["val"], curves, spec["min_confidence"], figure)


def _band(spec: dict[str, Any]) -> dict[str, float]:
    return {"t_low": spec["t_low"], "t_high": spec["t_high"]} if spec["task"] == "binary" else {}


def run(
    cfg: ThresholdConfig,
    settings: Settings,
    predictions: Path,
    out: Path,
    run_id: str | None = None,
) -> ThresholdResult:
    """Choose the operating point from ``predictions`` and write ``out``."""
    try:
        tasks = prediction_tasks(Path(predictions))
    except ContractError as err:
        raise ThresholdError(str(err)) from None
    unknown = sorted(set(cfg.tasks) - set(tasks))
    if unknown:
        raise ThresholdError(
            f"threshold.tasks names {unknown}, which are not tasks of {predictions} "
            f"({tasks or 'a single-task model'})"
        )
    if not tasks:
        rule = _choose(cfg, Path(predictions), None)
        spec, metrics = rule.spec, rule.metrics
        logged: dict[str, Any] = {**metrics, **_band(spec)}
        rules = {"": rule}
    else:
        rules = {t: _choose(cfg.for_task(t), Path(predictions), t) for t in tasks}
        spec = {"tasks": {t: r.spec for t, r in rules.items()}}
        metrics = {t: r.metrics for t, r in rules.items()}
        logged = {t: {**r.metrics, **_band(r.spec)} for t, r in rules.items()}
    with staged_dir(Path(out)) as staged:
        tmp = ThresholdDir(staged)
        write_json_atomic(tmp.rule, spec)
        write_json_atomic(tmp.metrics, metrics)
        for name, rule in rules.items():
            _write_plots(staged, rule, f"{name}." if name else "")
    if run_id:
        runs.append_to_run(
            settings, run_id, logged, "threshold.", Path(out), "threshold",
            params={"threshold": cfg.model_dump()},
        )  # fmt: skip
    return ThresholdResult(out=Path(out), spec=spec)
