"""export's INT8 graph (``export.quantize: int8``): calibrated on train photos, gated on val.

The activation ranges come from up to ``export.int8_calibration_images`` train photos through the
shared preprocessing. The gate compares the INT8 graph with the FP32 one on every val photo:
decisions that differ (the share of photos on which any task's decision differs, at most
``export.int8_max_flip_rate``), each class's recall (none may fall more than
``export.int8_max_recall_drop`` below FP32's) and the calibration error of each, for the record.
A graph that misses the gate is deleted, and the figures are logged and kept in model.json.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from carinspect.config import ExportConfig
from carinspect.contracts.folders import ExportDir
from carinspect.contracts.preprocess import PreprocessSpec
from carinspect.contracts.tasks import MISSING, TaskSpec
from carinspect.data.loading.dataset import Sample, dataset_for, load_task_split
from carinspect.evaluation.decision import decide_from_spec
from carinspect.evaluation.metrics import expected_calibration_error
from carinspect.modeling.onnx_export import ort_probabilities, session
from carinspect.modeling.quantize import quantize_int8, tensorrt_refuses

logger = logging.getLogger(__name__)

_BATCH = 32


class Answered(Protocol):
    """What the gate needs of one task's answer (export's Answer)."""

    @property
    def name(self) -> str: ...  # noqa: D102
    @property
    def classes(self) -> list[str]: ...  # noqa: D102
    @property
    def decision(self) -> dict[str, Any]: ...  # noqa: D102
    @property
    def output(self) -> str: ...  # noqa: D102


def int8_graph(
    cfg: ExportConfig,
    tmp: ExportDir,
    answers: Sequence[Answered],
    splits: Path,
    ingest_dir: Path,
    tasks: list[TaskSpec],
    spec: PreprocessSpec,
) -> dict[str, Any]:
    """model.int8.onnx beside tmp's FP32 graph if it passes the gate; the card's figures."""
    train = load_task_split(splits, ingest_dir, "train", tasks)[: cfg.int8_calibration_images]
    quantize_int8(tmp.onnx, tmp.onnx_int8, _batches(train, spec, ingest_dir), cfg.int8_symmetric)
    val = load_task_split(splits, ingest_dir, "val", tasks)
    figures = gate(cfg, tmp.onnx, tmp.onnx_int8, answers, val, spec, ingest_dir)
    if figures["passed"]:
        logger.info("INT8 graph kept: %s", describe(figures))
        return {**figures, "file": tmp.ONNX_INT8, "tensorrt": tensorrt_refuses(tmp.onnx_int8)}
    tmp.onnx_int8.unlink()
    logger.warning("INT8 graph not written, it missed its gate: %s", describe(figures))
    return {**figures, "file": None}


def gate(
    cfg: ExportConfig,
    fp32: Path,
    int8: Path,
    answers: Sequence[Answered],
    val: list[Sample],
    spec: PreprocessSpec,
    ingest_dir: Path,
) -> dict[str, Any]:
    """The INT8 graph's figures against FP32's on ``val`` (see the module docstring)."""
    batches = list(_batches(val, spec, ingest_dir))
    labels = np.array([s.label if isinstance(s.label, tuple) else (s.label,) for s in val])
    flipped = np.zeros(len(val), dtype=bool)
    recall_fp32: dict[str, float] = {}
    recall: dict[str, float] = {}
    ece: dict[str, list[float]] = {"fp32": [], "int8": []}
    sessions = {"fp32": session(fp32), "int8": session(int8)}
    for t, a in enumerate(answers):
        probs = {k: np.concatenate([ort_probabilities(s, b, a.output) for b in batches])
                 for k, s in sessions.items()}  # fmt: skip
        decided = {k: decide_from_spec(p, a.decision, a.classes) for k, p in probs.items()}
        flipped |= decided["fp32"] != decided["int8"]
        known = labels[:, t] != MISSING
        truth = labels[known, t]
        for c, name in enumerate(a.classes):
            key = name if len(answers) == 1 else f"{a.name}/{name}"
            mine = truth == c
            if mine.any():
                recall_fp32[key] = float((decided["fp32"][known][mine] == c).mean())
                recall[key] = float((decided["int8"][known][mine] == c).mean())
        for k, p in probs.items():
            ece[k].append(expected_calibration_error(p[known], truth) if known.any() else 0.0)
    drops = [recall_fp32[k] - recall[k] for k in recall]
    flip_rate = round(float(flipped.mean()), 6) if len(val) else 0.0
    worst = round(max(drops, default=0.0), 6)
    figures: dict[str, Any] = {
        "images": len(val), "decision_flips": int(flipped.sum()),
        "flip_rate": flip_rate, "recall_fp32": recall_fp32,
        "recall": recall, "worst_recall_drop": worst,
        "ece_fp32": round(float(np.mean(ece["fp32"])), 6),
        "ece": round(float(np.mean(ece["int8"])), 6),
        "max_flip_rate": cfg.int8_max_flip_rate, "max_recall_drop": cfg.int8_max_recall_drop,
    }  # fmt: skip
    figures["passed"] = flip_rate <= cfg.int8_max_flip_rate and worst <= cfg.int8_max_recall_drop
    return figures


def describe(figures: dict[str, Any]) -> str:
    """The gate in one line: flips, the worst recall drop, calibration, against the limits."""
    return (
        f"{figures['decision_flips']} of {figures['images']} val decisions differ from FP32 "
        f"({figures['flip_rate']:.2%}, limit {figures['max_flip_rate']:.2%}), worst class recall "
        f"drop {figures['worst_recall_drop']:+.3f} (limit {figures['max_recall_drop']:.3f}), "
        f"ECE {figures['ece']:.3f} vs FP32 {figures['ece_fp32']:.3f}"
    )


def _batches(samples: list[Sample], spec: PreprocessSpec, ingest_dir: Path) -> Iterator[np.ndarray]:
    """``samples`` through the model's preprocessing, ``_BATCH`` at a time."""
    ds = dataset_for(samples, spec, ingest_dir)
    for i in range(0, len(ds), _BATCH):
        yield np.stack([ds[j][0].numpy() for j in range(i, min(i + _BATCH, len(ds)))])
