"""export: ONNX model + model.json, exported only if it matches the checkpoint on real val images.

The parity check runs real val images through the shared preprocessing into both the PyTorch
checkpoint and the ONNX file and compares calibrated probabilities (max absolute difference) and
decisions at the chosen thresholds (flips). An fp32 export must stay within
``export.max_abs_diff`` with no flips; the optional FP16 file within ``export.fp16_max_abs_diff``
and ``export.fp16_max_flips``. Otherwise nothing is written.

Output folder ``out``: ``model.onnx`` (and ``model.fp16.onnx``), ``model.json`` (classes,
preprocessing spec, temperature, decision rule, lineage, parity) and ``metrics.json``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from carinspect.config import ExportConfig, Settings
from carinspect.contracts.cards import parse_card
from carinspect.contracts.folders import ExportDir
from carinspect.contracts.preprocess import PreprocessSpec
from carinspect.contracts.rules import read_rule
from carinspect.data.dataset import ImageDataset, load_split
from carinspect.errors import InputError
from carinspect.evaluation.decision import decide_from_spec
from carinspect.io import staged_dir, write_json_atomic
from carinspect.modeling.checkpoint import load_checkpoint, model_from_checkpoint
from carinspect.modeling.onnx_export import (
    export_onnx,
    file_is_self_contained,
    ort_probabilities,
    session,
    to_fp16,
)
from carinspect.modeling.onnx_names import INPUT, OUTPUTS
from carinspect.tracking import runs
from carinspect.tracking.lineage import lineage_tags
from carinspect.tracking.registry import RUN_COPY

logger = logging.getLogger(__name__)


class ExportError(InputError):
    """The export does not behave like the checkpoint, or its inputs are missing."""


@dataclass(frozen=True)
class ExportResult:
    """Where the files are and how close they came to the checkpoint."""

    out: Path
    parity: dict[str, Any]


def parity(
    onnx_path: Path,
    torch_probs: np.ndarray,
    batch: np.ndarray,
    decision: dict[str, Any],
    classes: list[str],
) -> dict[str, Any]:
    """Compare an ONNX file's probabilities and decisions with the checkpoint's on ``batch``."""
    sess = session(onnx_path)
    ort_probs = ort_probabilities(sess, batch)
    flips = decide_from_spec(torch_probs, decision, classes) != decide_from_spec(
        ort_probs, decision, classes
    )
    return {
        "images": len(batch),
        "max_abs_diff": float(np.abs(ort_probs - torch_probs).max()),
        "decision_flips": int(flips.sum()),
        "execution_provider": sess.get_providers()[0],  # what the parity was checked on
    }


def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not Path(path).is_file():
        raise ExportError(f"{path}: {what} not found")
    data: dict[str, Any] = json.loads(Path(path).read_text())
    return data


def run(
    cfg: ExportConfig,
    settings: Settings,
    checkpoint: Path,
    calibration: Path,
    threshold: Path,
    ingest_dir: Path,
    splits: Path,
    out: Path,
    run_id: str | None = None,
) -> ExportResult:
    """Export ``checkpoint`` to ``out`` after the parity check."""
    state = load_checkpoint(Path(checkpoint))
    classes: list[str] = state["classes"]
    spec = PreprocessSpec.from_dict(state["preprocess"])
    temperature = float(_read_json(calibration, "calibration.json (from evaluate)")["temperature"])
    decision = read_rule(Path(threshold)).model_dump()
    model = model_from_checkpoint(state)

    samples = load_split(Path(splits), Path(ingest_dir), "val", classes)[: cfg.parity_images]
    if not samples:
        raise ExportError(f"{splits}: no val images for the parity check")
    ds = ImageDataset(samples, spec)
    batch = np.stack([ds[i][0].numpy() for i in range(len(ds))])
    with torch.no_grad():
        torch_probs = torch.softmax(model(torch.from_numpy(batch)) / temperature, dim=1).numpy()

    figures: dict[str, Any] = {}
    with staged_dir(Path(out)) as staged:
        tmp = ExportDir(staged)
        export_onnx(model, temperature, spec.img_size, cfg.opset, tmp.onnx)
        if not file_is_self_contained(tmp.onnx):
            raise ExportError(f"{tmp.ONNX} refers to external weight files")
        figures["fp32"] = parity(tmp.onnx, torch_probs, batch, decision, classes)
        fp32 = figures["fp32"]
        if fp32["max_abs_diff"] > cfg.max_abs_diff or fp32["decision_flips"] > 0:
            raise ExportError(
                f"parity failed on {fp32['images']} val images: max |p_onnx - p_torch| = "
                f"{fp32['max_abs_diff']:.2e} (limit {cfg.max_abs_diff:.0e}), {fp32['decision_flips']} "
                "decision flip(s) (limit 0); the model was not exported"
            )
        files = {"fp32": tmp.ONNX}
        if cfg.fp16:
            to_fp16(tmp.onnx, tmp.onnx_fp16)
            figures["fp16"] = half = parity(tmp.onnx_fp16, torch_probs, batch, decision, classes)
            if (
                half["max_abs_diff"] > cfg.fp16_max_abs_diff
                or half["decision_flips"] > cfg.fp16_max_flips
            ):
                raise ExportError(
                    f"FP16 parity failed: max diff {half['max_abs_diff']:.2e} (limit "
                    f"{cfg.fp16_max_abs_diff:.0e}), {half['decision_flips']} flip(s) (limit "
                    f"{cfg.fp16_max_flips}); the model was not exported"
                )
            files["fp16"] = tmp.ONNX_FP16
        card = parse_card({
            "name": state["config"]["model"]["name"],
            "classes": classes,
            "preprocess": spec.to_dict(),
            "temperature": temperature,
            "decision": decision,
            "input": {
                "name": INPUT,
                "shape": ["batch", 3, spec.img_size, spec.img_size],
                "dtype": "float32",
            },
            "outputs": list(OUTPUTS),
            "opset": cfg.opset,
            "files": files,
            "parity": figures,
            "lineage": {
                **lineage_tags(Path(ingest_dir), settings),
                "mlflow.run_id": run_id or "",
                "checkpoint.epoch": int(state["epoch"]) + 1,
            },
        }, f"the model card from {checkpoint} and {threshold}")  # fmt: skip
        write_json_atomic(tmp.card, card.to_json())
        write_json_atomic(tmp.metrics, figures)
    if run_id:
        # the ONNX files in the run's own artifacts too (export/), not only on the logged
        # model that register creates: a run page then links to what it produced
        runs.append_to_run(
            settings, run_id, {"parity": figures}, "export.", Path(out), RUN_COPY,
            params={"export": cfg.model_dump()},
        )  # fmt: skip
    logger.info("exported %s: parity %s", ExportDir(out).onnx, figures)
    return ExportResult(out=Path(out), parity=figures)
