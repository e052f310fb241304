"""export: ONNX model + model.json, exported only if it matches the checkpoint on real val images.

The parity check runs real val images through the shared preprocessing into both the PyTorch
checkpoint and the ONNX file and compares calibrated probabilities (max absolute difference) and
decisions at the chosen thresholds (flips). An fp32 export must stay within
``export.max_abs_diff`` with no flips; the optional FP16 file within ``export.fp16_max_abs_diff``
and ``export.fp16_max_flips``. Otherwise nothing is written.

Output folder ``out``: ``model.onnx`` (and ``model.fp16.onnx``; ``model.int8.onnx`` with
``export.quantize: int8`` when it passes its gate, :mod:`carinspect.stages.export_int8`),
``model.json`` (classes, preprocessing spec, temperature, decision rule, lineage, parity, the
INT8 gate's figures) and ``metrics.json``.

model.onnx gives the pooled features as an output too when the model is classifier(pooled
features), as timm's models are: drift.json holds their distribution over the training split
(with brightness, contrast, blur and size), which serving scores its answered photos against.
A model trained with dropout (``model.drop_rate`` > 0) also gets ``mc_head.onnx``, its
classifier alone: serving can then sample the dropout (``MC_SAMPLES``) for an uncertainty
figure. The head with a mask of ones must give the
model's probabilities within ``export.max_abs_diff``.

A model that ends in average pooling and one linear classifier (resnets, efficientnets) also
gives each class's activation map (output ``cam``, :mod:`carinspect.modeling.explain`): serving
turns it into a heatmap on request. The maps must average back to the graph's logits on the
parity photos; model.json's ``explain`` names the output and its grid, or why there is none.

Several tasks: the graph has one probabilities output per task (each at its task's temperature),
model.json lists the tasks, and the parity check covers every task (the largest difference, and
the flips summed over tasks).
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
from carinspect.contracts.checkpoint import Checkpoint, model_section
from carinspect.contracts.folders import ExportDir, IngestDir
from carinspect.contracts.onnx_names import CAM, FEATURES, INPUT, MASK, OUTPUTS, task_output
from carinspect.contracts.preprocess import PreprocessSpec
from carinspect.contracts.rules import parse_rule, read_rule
from carinspect.contracts.tasks import MISSING, TaskSpec, task_slices, tasks_of_checkpoint
from carinspect.data.intake.manifest import read_manifest
from carinspect.data.loading.dataset import dataset_for, load_task_split
from carinspect.drift.profile import DriftProfile, build_profile
from carinspect.errors import InputError
from carinspect.evaluation.decision import decide_from_spec
from carinspect.io import staged_dir, write_json_atomic
from carinspect.modeling.checkpoint import load_checkpoint, model_from_checkpoint
from carinspect.modeling.explain import cam_unavailable
from carinspect.modeling.onnx_export import (
    Head,
    export_dropout_head,
    export_onnx,
    file_is_self_contained,
    head_is_separable,
    ort_probabilities,
    output_names,
    pre_logits,
    session,
    to_fp16,
)
from carinspect.stages.export_int8 import int8_graph
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


@dataclass(frozen=True)
class Answer:
    """One task as export checks it: its decision rule and the graph output it reads."""

    name: str
    classes: list[str]
    outputs: slice
    temperature: float
    decision: dict[str, Any]
    output: str


def parity(
    onnx_path: Path, torch_logits: np.ndarray, batch: np.ndarray, answers: list[Answer]
) -> dict[str, Any]:
    """Compare an ONNX file's probabilities and decisions with the checkpoint's on ``batch``."""
    sess = session(onnx_path)
    worst, flips = 0.0, 0
    for a in answers:
        logits = torch.from_numpy(torch_logits[:, a.outputs])
        torch_probs = torch.softmax(logits / a.temperature, dim=1).numpy()
        ort_probs = ort_probabilities(sess, batch, a.output)
        changed = decide_from_spec(torch_probs, a.decision, a.classes) != decide_from_spec(
            ort_probs, a.decision, a.classes
        )
        worst = max(worst, float(np.abs(ort_probs - torch_probs).max()))
        flips += int(changed.sum())
    return {
        "images": len(batch),
        "max_abs_diff": worst,
        "decision_flips": flips,
        "execution_provider": sess.get_providers()[0],  # what the parity was checked on
    }


def _answers(tasks: list[TaskSpec], calibration: dict[str, Any], threshold: Path) -> list[Answer]:
    """Each task's decision rule and temperature, checked against the checkpoint's tasks."""
    if len(tasks) == 1:
        rule = read_rule(Path(threshold)).model_dump()
        if rule["classes"] != tasks[0].classes:
            raise ExportError(
                f"{threshold}: the rule is for classes {rule['classes']}, the checkpoint's are "
                f"{tasks[0].classes}"
            )
        return [
            Answer(
                tasks[0].name,
                tasks[0].classes,
                slice(None),
                float(calibration["temperature"]),
                rule,
                OUTPUTS[1],
            )
        ]
    rules = _read_json(threshold, "threshold.json (from threshold)").get("tasks", {})
    temperatures = calibration.get("temperatures", {})
    answers = []
    for task, sl in zip(tasks, task_slices(tasks), strict=True):
        if task.name not in rules or task.name not in temperatures:
            raise ExportError(
                f"task {task.name!r} has no rule in {threshold} or no temperature in "
                "calibration.json: run evaluate and threshold on this checkpoint"
            )
        rule = parse_rule(rules[task.name], f"{threshold}: tasks.{task.name}").model_dump()
        answers.append(
            Answer(
                task.name,
                task.classes,
                sl,
                float(temperatures[task.name]),
                rule,
                task_output(task.name),
            )
        )
    return answers


def _dropout_rate(state: Checkpoint, separable: bool) -> float:
    """The dropout rate MC dropout can sample at serving time (0: none)."""
    rate = float(model_section(state).get("drop_rate", 0.0))
    if rate <= 0:
        return 0.0
    if not separable:
        logger.warning(
            "model %s: its output is not classifier(pooled features), so MC dropout is not "
            "exported (serving cannot sample its dropout)",
            model_section(state)["name"],
        )
        return 0.0
    return rate


def head_parity(
    model_path: Path, head_path: Path, batch: np.ndarray, answers: list[Answer]
) -> float:
    """Max |p_head - p_model| with a mask of ones (no dropout): the head is the model's."""
    main, head = session(model_path), session(head_path)
    outputs = [a.output for a in answers]
    found = main.run([*outputs, FEATURES], {INPUT: batch.astype(np.float32)})
    features = found[-1]
    again = head.run(outputs, {FEATURES: features, MASK: np.ones_like(features)})
    return max(float(np.abs(a - b).max()) for a, b in zip(found[:-1], again, strict=True))


def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not Path(path).is_file():
        raise ExportError(f"{path}: {what} not found")
    data: dict[str, Any] = json.loads(Path(path).read_text())
    return data


DRIFT_IMAGES = 2000  # training photos the drift profile is taken from, at most (evenly spaced)


def _drift_profile(
    splits: Path,
    ingest_dir: Path,
    tasks: list[TaskSpec],
    spec: PreprocessSpec,
    model: torch.nn.Module,
    features: bool,
) -> DriftProfile:
    """The training split as serving's drift scores see photos: through the model's input.

    The photos' sizes are the manifest's (the files as sent, before ingest reduced them);
    ``features``: the graph outputs the pooled features, so the profile holds their
    distribution too.
    """
    samples = load_task_split(Path(splits), Path(ingest_dir), "train", tasks)
    samples = samples[:: max(1, len(samples) // DRIFT_IMAGES)][:DRIFT_IMAGES]
    sizes_of = {
        (Path(ingest_dir) / r.path).resolve(): (r.width, r.height)
        for r in read_manifest(IngestDir(ingest_dir).manifest)
    }
    ds = dataset_for(samples, spec, ingest_dir)
    ds.preload(workers=4)
    labels: dict[str, list[str]] = {t.name: [] for t in tasks}
    for sample in samples:
        index = [sample.label] if isinstance(sample.label, int) else list(sample.label)
        for t, i in zip(tasks, index, strict=True):
            labels[t.name].append(t.classes[i] if i != MISSING else "")
    inputs = [ds[i][0] for i in range(len(ds))]
    pooled = unseen = None
    if features:  # the embedding: train photos to fit it, val photos (never learnt) to bin it
        val = load_task_split(Path(splits), Path(ingest_dir), "val", tasks)
        val_ds = dataset_for(
            val[:: max(1, len(val) // DRIFT_IMAGES)][:DRIFT_IMAGES], spec, ingest_dir
        )
        val_ds.preload(workers=4)
        pooled = _pooled(model, inputs)
        unseen = _pooled(model, [val_ds[i][0] for i in range(len(val_ds))])
    sizes = [sizes_of[s.path.resolve()] for s in samples]
    return build_profile((t.numpy() for t in inputs), spec, labels, sizes, pooled, unseen)


def _pooled(model: torch.nn.Module, inputs: list[torch.Tensor]) -> np.ndarray:
    """The pooled features of ``inputs``, 64 at a time."""
    if not inputs:
        return np.zeros((0, 0), dtype=np.float32)
    with torch.no_grad():
        return torch.cat(
            [pre_logits(model, torch.stack(inputs[i : i + 64])) for i in range(0, len(inputs), 64)]
        ).numpy()


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
    tasks = tasks_of_checkpoint(state)
    spec = PreprocessSpec.from_dict(state["preprocess"])
    answers = _answers(
        tasks, _read_json(calibration, "calibration.json (from evaluate)"), threshold
    )
    heads = [Head(a.name, a.outputs, a.temperature) for a in answers] if len(tasks) > 1 else None
    model = model_from_checkpoint(state)
    separable = head_is_separable(model, spec.img_size)
    unexplained = cam_unavailable(model, spec.img_size)
    if unexplained:
        logger.info("model %s: no class activation maps: %s", model_section(state)["name"],
                    unexplained)  # fmt: skip
    graph = _Graph(model, answers, heads, spec.img_size, cfg.opset, separable, not unexplained)
    batch = _parity_batch(splits, ingest_dir, tasks, spec, cfg.parity_images)
    with torch.no_grad():
        torch_logits = model(torch.from_numpy(batch)).numpy()

    with staged_dir(Path(out)) as staged:
        tmp = ExportDir(staged)
        files, figures = _fp32(cfg, graph, tmp, batch, torch_logits)
        explain = (
            _explain(cfg, graph, tmp, batch) if graph.explain else {"unavailable": unexplained}
        )
        mc = _mc_head(cfg, graph, tmp, batch, _dropout_rate(state, separable))
        if mc is not None:
            files["mc_head"] = tmp.MC_HEAD
        if cfg.fp16:
            figures["fp16"] = _fp16(cfg, tmp, batch, torch_logits, answers)
            files["fp16"] = tmp.ONNX_FP16
        int8 = None
        if cfg.quantize == "int8":
            int8 = int8_graph(cfg, tmp, answers, Path(splits), Path(ingest_dir), tasks, spec)
            if int8["file"]:
                files["int8"] = int8["file"]
        card = parse_card({
            "name": model_section(state)["name"],
            **_answer_fields(answers, multi=heads is not None),
            "preprocess": spec.to_dict(),
            "input": {
                "name": INPUT,
                "shape": ["batch", 3, spec.img_size, spec.img_size],
                "dtype": "float32",
            },
            "outputs": output_names(heads) + ([FEATURES] if separable else [])
            + ([CAM] if graph.explain else []),
            "mc_dropout": mc,
            "explain": explain,
            "opset": cfg.opset,
            "files": files,
            "parity": figures,
            "int8": int8,
            "lineage": {
                **lineage_tags(Path(ingest_dir), settings),
                "mlflow.run_id": run_id or "",
                "checkpoint.epoch": int(state["epoch"]) + 1,
            },
        }, f"the model card from {checkpoint} and {threshold}")  # fmt: skip
        write_json_atomic(tmp.card, card.to_json())
        profile = _drift_profile(splits, ingest_dir, tasks, spec, model, separable)
        write_json_atomic(tmp.drift, profile.model_dump())
        write_json_atomic(tmp.metrics, {**figures, **({"mc_head": mc} if mc else {})})
    if run_id:
        # the ONNX files in the run's own artifacts too (export/), not only on the logged
        # model that register creates: a run page then links to what it produced
        runs.append_to_run(
            settings, run_id, {"parity": figures}, "export.", Path(out), RUN_COPY,
            params={"export": cfg.model_dump()},
        )  # fmt: skip
    logger.debug("exported %s: parity %s", ExportDir(out).onnx, figures)
    return ExportResult(out=Path(out), parity=figures)


@dataclass(frozen=True)
class _Graph:
    """What every exported graph is built from: the model, its answers and heads, the input."""

    model: torch.nn.Module
    answers: list[Answer]
    heads: list[Head] | None  # several tasks: one head each; None for one task
    img_size: int
    opset: int
    separable: bool  # the classifier is a function of the pooled features (features output)
    explain: bool  # the model ends in average pooling: class activation maps (cam output)


def _parity_batch(
    splits: Path, ingest_dir: Path, tasks: list[TaskSpec], spec: PreprocessSpec, most: int
) -> np.ndarray:
    """Up to ``most`` val photos through the model's preprocessing: the parity checks' inputs."""
    samples = load_task_split(Path(splits), Path(ingest_dir), "val", tasks)[:most]
    if not samples:
        raise ExportError(f"{splits}: no val images for the parity check")
    ds = dataset_for(samples, spec, ingest_dir)
    ds.preload(workers=4)
    return np.stack([ds[i][0].numpy() for i in range(len(ds))])


def _fp32(
    cfg: ExportConfig, graph: _Graph, tmp: ExportDir, batch: np.ndarray, torch_logits: np.ndarray
) -> tuple[dict[str, str], dict[str, Any]]:
    """model.onnx, refused unless self-contained and equal to the checkpoint on ``batch``."""
    export_onnx(
        graph.model, graph.answers[0].temperature, graph.img_size, graph.opset, tmp.onnx,
        graph.heads, graph.separable, graph.explain,
    )  # fmt: skip
    if not file_is_self_contained(tmp.onnx):
        raise ExportError(f"{tmp.ONNX} refers to external weight files")
    fp32 = parity(tmp.onnx, torch_logits, batch, graph.answers)
    if fp32["max_abs_diff"] > cfg.max_abs_diff or fp32["decision_flips"] > 0:
        raise ExportError(
            f"parity failed on {fp32['images']} val images: max |p_onnx - p_torch| = "
            f"{fp32['max_abs_diff']:.2e} (limit {cfg.max_abs_diff:.0e}), {fp32['decision_flips']} "
            "decision flip(s) (limit 0); the model was not exported"
        )
    return {"fp32": tmp.ONNX}, {"fp32": fp32}


def _explain(cfg: ExportConfig, graph: _Graph, tmp: ExportDir, batch: np.ndarray) -> dict[str, Any]:
    """model.json's explain entry, once the graph's maps average back to its logits on ``batch``.

    A class's map is its evidence at each position; the mean over positions plus the
    classifier's bias is the logit. If the graph's maps do not give its own logits, they do not
    explain its answers, and the model is not exported.
    """
    sess = session(tmp.onnx)
    logits, maps = sess.run([OUTPUTS[0], CAM], {INPUT: batch.astype(np.float32)})
    bias = graph.model.get_classifier().bias  # type: ignore[operator]
    offset = 0.0 if bias is None else bias.detach().numpy()
    diff = float(np.abs(maps.mean(axis=(2, 3)) + offset - logits).max())
    if diff > cfg.max_abs_diff * 10:
        raise ExportError(
            f"the class activation maps average to logits {diff:.2e} away from the graph's own "
            f"(limit {cfg.max_abs_diff * 10:.0e}); the model was not exported"
        )
    return {"output": CAM, "grid": list(maps.shape[2:])}


def _mc_head(
    cfg: ExportConfig, graph: _Graph, tmp: ExportDir, batch: np.ndarray, dropout: float
) -> dict[str, Any] | None:
    """The MC dropout head when the model has dropout before its classifier (model.json's entry)."""
    if dropout <= 0:
        return None
    export_dropout_head(
        graph.model, graph.answers[0].temperature, graph.img_size, graph.opset, tmp.mc_head,
        graph.heads,
    )  # fmt: skip
    diff = head_parity(tmp.onnx, tmp.mc_head, batch, graph.answers)
    if diff > cfg.max_abs_diff:
        raise ExportError(
            f"the MC dropout head differs from the model by {diff:.2e} with no dropout "
            f"(limit {cfg.max_abs_diff:.0e}); the model was not exported"
        )
    return {"rate": dropout, "head": tmp.MC_HEAD, "features": FEATURES, "max_abs_diff": diff}


def _fp16(
    cfg: ExportConfig,
    tmp: ExportDir,
    batch: np.ndarray,
    torch_logits: np.ndarray,
    answers: list[Answer],
) -> dict[str, Any]:
    """model_fp16.onnx beside the FP32 graph, within export.fp16_max_abs_diff and _max_flips."""
    to_fp16(tmp.onnx, tmp.onnx_fp16)
    half = parity(tmp.onnx_fp16, torch_logits, batch, answers)
    if half["max_abs_diff"] > cfg.fp16_max_abs_diff or half["decision_flips"] > cfg.fp16_max_flips:
        raise ExportError(
            f"FP16 parity failed: max diff {half['max_abs_diff']:.2e} (limit "
            f"{cfg.fp16_max_abs_diff:.0e}), {half['decision_flips']} flip(s) (limit "
            f"{cfg.fp16_max_flips}); the model was not exported"
        )
    return half


def _answer_fields(answers: list[Answer], *, multi: bool) -> dict[str, Any]:
    """The card's answer: one task's classes and rule at the top level, or a list of tasks."""
    if multi:
        return {
            "tasks": [
                {"name": a.name, "classes": a.classes, "temperature": a.temperature,
                 "decision": a.decision, "output": a.output}
                for a in answers
            ]
        }  # fmt: skip
    a = answers[0]
    return {"classes": a.classes, "temperature": a.temperature, "decision": a.decision}
