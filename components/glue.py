"""What the KFP components share: params from the pipeline inputs, and KFP's artifact types.

The components in components/ run inside the project image and import only carinspect; they
turn KFP inputs into a stage's ``run(...)`` call and its files into KFP outputs (metrics,
markdown reports, a confusion matrix) through these helpers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from carinspect.config import Params, parse_params, set_dotted
from carinspect.contracts.evaluation import prediction_tasks, read_predictions
from carinspect.contracts.folders import TrainDir
from carinspect.errors import InputError
from carinspect.stages.spec import STAGES, section_input
from carinspect.tracking.runs import numeric_leaves, read_run_id

# pipeline input -> the params.yaml section it carries (as one line of JSON), from each stage's
# spec. A component takes only the sections it reads, so a change to export.opset is not in
# ingest's KFP cache key.
SECTION_INPUTS: dict[str, str] = {name: key for s in STAGES for name, key in s.inputs.items()}
# the sweep pipeline's extra section input
SWEEP_INPUTS: dict[str, str] = {section_input("tune"): "tune"}


def section_texts(params: Params, sweep: bool = False) -> dict[str, str]:
    """Each pipeline section input's value: its section of ``params``, sorted one-line JSON.

    One line: KFP copies default values into a comment at the top of the compiled file, and a
    multi-line default would break that file's YAML. Sorted: the same params, the same cache key.
    """
    raw = params.model_dump(mode="json", by_alias=True)
    texts = {}
    for name, key in {**SECTION_INPUTS, **(SWEEP_INPUTS if sweep else {})}.items():
        node: Any = raw
        for part in key.split("."):
            node = node[part]
        texts[name] = json.dumps(node, sort_keys=True, separators=(",", ":"))
    return texts


def sections_of(inputs: dict[str, str]) -> tuple[str, ...]:
    """The params.yaml keys of a component's section inputs (``train_cfg`` -> ``train``)."""
    return tuple({**SECTION_INPUTS, **SWEEP_INPUTS}[name] for name in inputs)


def params_from_inputs(inputs: dict[str, str], overrides: dict[str, Any] | None = None) -> Params:
    """Params from a component's section inputs (``{"train_cfg": '{"epochs": 3, ...}'}``).

    Sections a component is not given keep their defaults: it does not read them.
    """
    raw: dict[str, Any] = {}
    for name, text in inputs.items():
        try:
            value = json.loads(text)
        except ValueError as err:
            raise InputError(f"pipeline input {name}: not JSON: {err}") from None
        set_dotted(raw, {**SECTION_INPUTS, **SWEEP_INPUTS}[name], value)
    for key, value in (overrides or {}).items():
        set_dotted(raw, key, value)
    return parse_params(raw, "pipeline inputs")


def task_input(text: str) -> str | list[str] | None:
    """The ``data_task`` pipeline input as data.task: empty is unset, ``a,b`` trains both."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        return None
    return names[0] if len(names) == 1 else names


def task_text(task: str | list[str] | None) -> str:
    """data.task as the ``data_task`` pipeline input (inverse of :func:`task_input`)."""
    return ",".join([task] if isinstance(task, str) else task or [])


def set_run_env(kfp_run_id: str) -> None:
    """Make the pipeline run id visible to Settings (it becomes the kfp.run_id lineage tag).

    Only the register task takes the run id as an input (its caching is off). In a cluster the
    train task reads it from its pod's ``pipeline/runid`` label through the downward API, so
    the id is not part of a cached task's key.
    """
    if kfp_run_id:
        os.environ["KFP_RUN_ID"] = kfp_run_id


def run_id_of(train_dir: Path) -> str:
    """The MLflow run id train recorded in its output."""
    run_ref = TrainDir(train_dir).run_ref
    run_id = read_run_id(run_ref)
    if run_id is None:
        raise InputError(f"{run_ref} not found (the train task's output is incomplete)")
    return run_id


def log_metrics(artifact: Any, metrics_json: Path, prefix: str = "") -> None:
    """Every numeric leaf of a stage's metrics.json on a KFP Metrics artifact."""
    data = json.loads(Path(metrics_json).read_text())
    for key, value in numeric_leaves(data, prefix).items():
        artifact.log_metric(key, value)


def write_markdown(artifact: Any, text: str) -> None:
    """Fill a KFP Markdown artifact."""
    Path(artifact.path).parent.mkdir(parents=True, exist_ok=True)
    Path(artifact.path).write_text(text)


def evaluation_markdown(metrics_json: Path) -> str:
    """A short evaluation report: headline metrics per split against the baseline."""
    m = json.loads(Path(metrics_json).read_text())
    keys = ("accuracy", "balanced_accuracy", "macro_f1", "auroc_macro", "ece")
    lines = [
        "# Evaluation",
        "",
        "| split | " + " | ".join(keys) + " |",
        "|---" * (len(keys) + 1) + "|",
    ]
    for split in ("val", "test"):
        row = [f"{m.get(split, {}).get(k, float('nan')):.4f}" for k in keys]
        lines.append(f"| {split} | " + " | ".join(row) + " |")
    for task, figures in m.get("tasks", {}).items():
        for split in ("val", "test"):
            row = [f"{figures[split].get(k) or float('nan'):.4f}" for k in keys]
            lines.append(f"| {task}, {split} | " + " | ".join(row) + " |")
    base = m.get("baseline", {}).get("test", {}).get("accuracy")
    if base is not None:
        lines += ["", f"Majority-class baseline, test accuracy: {base:.4f}"]
    if m.get("tasks"):
        lines += ["", "The val and test rows are means over the tasks."]
    return "\n".join(lines) + "\n"


def confusion(predictions_csv: Path, split: str = "test") -> tuple[list[str], list[list[int]]]:
    """Classes and the confusion matrix (rows: true, columns: predicted) of one split.

    Several tasks: one matrix with a block per task, classes named ``task: class``; a task's
    unlabelled images are answered but not scored.
    """
    tasks = prediction_tasks(predictions_csv) or [""]
    names: list[str] = []
    matrix: list[list[int]] = []
    for task in tasks:
        classes, splits = read_predictions(predictions_csv, task)
        probs, labels = splits[split]
        start = len(names)
        names += [f"{task}: {c}" if task else c for c in classes]
        for row in matrix:
            row.extend([0] * len(classes))
        matrix += [[0] * len(names) for _ in classes]
        for y, p in zip(labels, probs.argmax(axis=1), strict=True):
            matrix[start + int(y)][start + int(p)] += 1
    return names, matrix
