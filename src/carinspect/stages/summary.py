"""summary: the run in a dozen lines, the last thing `dvc repro` and scripts/main.sh print.

Reads what the stages wrote (each folder through its contract) and says, per stage, the
figures a person looks at first: how many photos in which classes, the best epoch, test
against the baseline with the verdict, per-class F1, the decision rule, export parity and the
registered version. A stage whose output is missing is left out, so the summary of a pipeline
that stopped early says how far it got.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from carinspect.contracts.evaluation import read_verdict
from carinspect.contracts.folders import (
    EvaluateDir,
    ExportDir,
    IngestDir,
    SplitDir,
    ThresholdDir,
    TrainDir,
)
from carinspect.evaluation.verdict import describe
from carinspect.io import write_text_atomic
from carinspect.stages.spec import SPEC


@dataclass(frozen=True)
class Folders:
    """Where each stage wrote (their default places, from the spec)."""

    ingest: Path = SPEC["ingest"].out
    split: Path = SPEC["split"].out
    train: Path = SPEC["train"].out
    evaluate: Path = SPEC["evaluate"].out
    threshold: Path = SPEC["threshold"].out
    export: Path = SPEC["export"].out
    registered: Path = SPEC["register"].out


def _load(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def _f(value: Any, digits: int = 3) -> str:
    return "n/a" if value is None else f"{float(value):.{digits}f}"


def describe_rule(rule: dict[str, Any]) -> str:
    """A decision rule in words (binary band or multiclass confidence), with its val figures."""
    val = rule.get("splits", {}).get("val", {})
    if rule["task"] == "binary":
        pos, neg = rule["positive_class"], rule["negative_class"]
        words = f"p({pos}) >= {rule['t_high']:.3f}: {pos}; "
        if rule["t_low"] < rule["t_high"]:
            words += f"below {rule['t_low']:.3f}: {neg}; in between: uncertain"
        else:
            words += f"below: {neg}"
        if rule.get("fallback"):
            words += f" (precision target {rule['target_precision']:g} out of reach)"
        return (
            f"{words}. val precision {_f(val.get('precision'))}, recall "
            f"{_f(val.get('recall'))}, coverage {_f(val.get('coverage'))}"
        )
    per_class = ", ".join(f"{c} >= {t:g}" for c, t in rule.get("per_class", {}).items())
    if rule.get("min_confidence", 0) > 0 or per_class:
        floor = f" when its probability >= {rule['min_confidence']:g}"
        words = f"the most probable class{floor}{f' ({per_class})' if per_class else ''}, "
        words += "else uncertain"
    else:
        words = "the most probable class, always"
    return (
        f"{words}. val coverage {_f(val.get('coverage'))}, accuracy {_f(val.get('accuracy'))}, "
        f"macro-F1 {_f(val.get('macro_f1'))}"
    )


def describe_parity(parity: dict[str, Any]) -> str:
    """Export's parity figures per graph (fp32, fp16, the MC dropout head), rounded."""
    said = []
    for graph, v in parity.items():
        line = f"{graph}: max |p_onnx - p_torch| {v['max_abs_diff']:.1e}"
        if "decision_flips" in v:  # a whole graph; the MC head has no decisions of its own
            line += f", {v['decision_flips']} decision flips on {v['images']} val photos"
        said.append(line)
    return "; ".join(said)


def _per_class(report: dict[str, Any]) -> str:
    rows = report["splits"]["test"]["per_class"]
    return ", ".join(f"{c} {_f(r['f1'], 2)} ({r['support']})" for c, r in rows.items())


def lines(folders: Folders) -> list[str]:
    """The summary, one line per figure group; stages with no output are left out."""
    out: list[str] = []
    ingest = _load(IngestDir(folders.ingest).metrics)
    if ingest:
        counts = ingest.get("class_counts", {})
        named = ", ".join(f"{c} {n}" for c, n in counts.items())
        out.append(
            f"data      {ingest['images']} photos in {ingest['classes']} classes ({named}); "
            f"{ingest['dropped']} unusable"
        )
    split = _load(SplitDir(folders.split).metrics)
    if split:
        out.append(
            "split     " + ", ".join(f"{s} {split[s]['images']}" for s in ("train", "val", "test"))
        )
    train = _load(TrainDir(folders.train).metrics)
    if train:
        run = _load(TrainDir(folders.train).run_ref) or {}
        out.append(
            f"train     best epoch {train['best_epoch']}/{train['epochs_run']}: val accuracy "
            f"{_f(train.get('val_accuracy'))}, macro-F1 {_f(train.get('val_macro_f1'))}"
            + (f" (MLflow run {run['run_id'][:12]})" if run.get("run_id") else "")
        )
    evaluation = EvaluateDir(folders.evaluate)
    report = _load(evaluation.report)
    if report:
        per_task = report.get("tasks") or {"": report}
        verdicts = (
            {v.task: v for v in read_verdict(evaluation.verdict).tasks}
            if evaluation.verdict.is_file()
            else {}
        )
        for i, (task, r) in enumerate(per_task.items()):
            t = r["splits"]["test"]
            named = f"{task}: " if task else ""
            out.append(
                f"test      {named}accuracy {_f(t['accuracy'])}, macro-F1 {_f(t['macro_f1'])}, "
                f"ECE {_f(t['ece'])} on {t['images']} photos; baseline accuracy "
                f"{_f(r['baseline']['test']['accuracy'])}"
            )
            out.append(f"per class {named}F1 {_per_class(r)}")
            verdict = verdicts.get(task) or (list(verdicts.values())[i] if verdicts else None)
            if verdict is not None:
                out.append(f"verdict   {named}{describe(verdict)}")
    rule = _load(ThresholdDir(folders.threshold).rule)
    if rule:
        for task, spec in (rule.get("tasks") or {"": rule}).items():
            out.append(f"rule      {f'{task}: ' if task else ''}{describe_rule(spec)}")
    parity = _load(ExportDir(folders.export).metrics)
    if parity:
        out.append(f"export    {describe_parity(parity)}")
    registered = _load(folders.registered)
    if registered:
        out.append(
            f"version   {registered['name']} {registered['version']} (alias "
            f"{registered['alias']}); next: carinspect promote"
        )
    return out


def run(folders: Folders, out: Path | None = None) -> list[str]:
    """The summary's lines; also written to ``out`` when given."""
    text = lines(folders)
    if out is not None:
        write_text_atomic(Path(out), "\n".join(text) + "\n")
    return text
