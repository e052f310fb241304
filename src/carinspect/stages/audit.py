"""audit (`carinspect labels audit`): train and val photos whose given label looks wrong.

Every train and val photo is described by a backbone's pooled features, scored out of sample
(its nearest other photos' labels, or a logistic regression fitted on the other folds), and
cleanlab's confident learning names the photos whose given label those probabilities doubt
(:mod:`carinspect.evaluation.label_audit`).
Nothing is dropped or relabelled: the output is a table, a page with the most doubtful photos,
and, on request, review tasks (`--push`, :mod:`carinspect.review.suspects`). ``audit.enabled`` switches the `dvc repro` stage on.
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from carinspect.config import AuditConfig, ModelConfig
from carinspect.contracts.checkpoint import model_section
from carinspect.contracts.folders import AuditDir, IngestDir
from carinspect.contracts.preprocess import PreprocessSpec
from carinspect.contracts.tasks import MISSING, TaskSpec, num_outputs, tasks_of_checkpoint
from carinspect.data.intake.manifest import read_manifest
from carinspect.data.loading.dataset import Sample, dataset_for, load_task_split
from carinspect.data.storage.store import open_store
from carinspect.errors import InputError
from carinspect.evaluation import label_audit, mistakes
from carinspect.io import staged_dir, write_json_atomic, write_text_atomic
from carinspect.modeling.checkpoint import load_checkpoint, model_from_checkpoint
from carinspect.modeling.onnx_export import pre_logits

logger = logging.getLogger(__name__)

SPLITS = ("train", "val")
COLUMNS = ["task", "split", "source", "path", "given", "suggested", "quality"]


class AuditError(InputError):
    """An audit that cannot run as configured."""


@dataclass(frozen=True)
class Doubt:
    """One suspect photo, by its ingest path and original name."""

    task: str
    split: str
    source: str
    path: str
    given: str
    suggested: str
    quality: float
    sha256: str  # of the source's bytes, as the manifest records it


@dataclass(frozen=True)
class AuditResult:
    """What the audit found."""

    out: Path
    photos: int
    suspects: list[Doubt]
    features: str  # which backbone described the photos
    classes: dict[str, list[str]]  # each task's classes
    enabled: bool = True


def run(
    cfg: AuditConfig,
    checkpoint: Path,
    ingest_dir: Path,
    splits: Path,
    out: Path,
    only_if_enabled: bool = False,
) -> AuditResult:
    """Audit the labels of the train and val photos; write ``out``."""
    out, ingest_dir = Path(out), Path(ingest_dir)
    if only_if_enabled and not cfg.enabled:  # the dvc stage with audit.enabled: false
        with staged_dir(out) as staged:
            tmp = AuditDir(staged)
            write_json_atomic(tmp.metrics, {"enabled": False})
            write_text_atomic(tmp.report_md, "# Label audit\n\nOff (`audit.enabled: false`).\n")
            write_text_atomic(tmp.suspects, ",".join(COLUMNS) + "\n")
            _off_sheet(tmp.sheet)
        return AuditResult(out, 0, [], "", {}, enabled=False)
    state = load_checkpoint(Path(checkpoint))
    tasks = tasks_of_checkpoint(state)
    spec = PreprocessSpec.from_dict(state["preprocess"])
    model, features = _backbone(cfg, state, tasks)
    samples = [(s, split) for split in SPLITS
               for s in load_task_split(Path(splits), ingest_dir, split, tasks)]  # fmt: skip
    described = features_of(model, [s for s, _ in samples], spec, ingest_dir)
    rows = {r.path: r for r in read_manifest(IngestDir(ingest_dir).manifest)}
    found: list[Doubt] = []
    for t, task in enumerate(tasks):
        labels = np.array([_label(s, t) for s, _ in samples])
        kept = np.flatnonzero(labels != MISSING)
        probs = _probabilities(cfg, described[kept], labels[kept])
        for doubt in label_audit.suspects(labels[kept], probs):
            sample, split = samples[int(kept[doubt.index])]
            path = sample.path.relative_to(ingest_dir).as_posix()
            row = rows.get(path)
            if row is None:
                raise AuditError(f"{splits}: {path} is not in {IngestDir(ingest_dir).manifest}: "
                                 "the splits are not of this ingest (run `dvc repro`)")  # fmt: skip
            found.append(Doubt(task.name, split, row.source, path, task.classes[doubt.given],
                               task.classes[doubt.suggested], doubt.quality, row.sha256))  # fmt: skip
    found.sort(key=lambda d: d.quality)
    classes = {t.name: list(t.classes) for t in tasks}
    result = AuditResult(out, len(samples), found, features, classes)
    _write(result, cfg, ingest_dir)
    return result


def _probabilities(cfg: AuditConfig, features: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Out-of-sample class probabilities by the configured scheme."""
    if cfg.method == "neighbours":
        return label_audit.neighbour_votes(features, labels, cfg.neighbours)
    return label_audit.out_of_sample(features, labels, cfg.folds, cfg.seed)


def _off_sheet(path: Path) -> None:
    """The sheet's place when the audit is off (dvc.yaml's output exists either way)."""
    from PIL import Image, ImageDraw

    sheet = Image.new("RGB", (360, 40), "white")
    ImageDraw.Draw(sheet).text((8, 12), "label audit off (audit.enabled: false)", fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, format="PNG")


def _label(sample: Sample, task: int) -> int:
    return sample.label if isinstance(sample.label, int) else sample.label[task]


def _backbone(cfg: AuditConfig, state: Any, tasks: list[TaskSpec]) -> tuple[torch.nn.Module, str]:
    """The network whose pooled features describe the photos, and what it is, in words."""
    from carinspect.modeling.factory import build_model

    section = ModelConfig.model_validate(model_section(state))
    pretrained = cfg.features == "pretrained" or (cfg.features == "auto" and section.pretrained)
    if not pretrained:
        return model_from_checkpoint(state), "the trained checkpoint's backbone"
    if not section.pretrained:
        raise AuditError(
            "audit.features: pretrained, but the checkpoint was trained with model.pretrained "
            "false: there are no pretrained weights to describe the photos with (use "
            "audit.features: checkpoint, or train from pretrained weights)"
        )
    model = build_model(section, num_outputs(tasks)).eval()
    return model, f"pretrained {section.name} ({section.weights or 'hub weights'})"


def features_of(
    model: torch.nn.Module, samples: list[Sample], spec: PreprocessSpec, ingest_dir: Path
) -> np.ndarray:
    """Pooled features of every photo, 64 at a time, through the model's preprocessing."""
    ds = dataset_for(samples, spec, ingest_dir)
    ds.preload(workers=4)
    out = []
    with torch.no_grad():
        for i in range(0, len(ds), 64):
            batch = torch.stack([ds[j][0] for j in range(i, min(i + 64, len(ds)))])
            out.append(pre_logits(model, batch).float().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def _write(result: AuditResult, cfg: AuditConfig, ingest_dir: Path) -> None:
    """suspects.csv, metrics.json, the page and its contact sheet, as one staged folder."""
    rows = [[d.task, d.split, d.source, d.path, d.given, d.suggested, f"{d.quality:.4f}"]
            for d in result.suspects]  # fmt: skip
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows([COLUMNS, *rows])
    with staged_dir(result.out) as staged:
        tmp = AuditDir(staged)
        write_text_atomic(tmp.suspects, text.getvalue())
        write_json_atomic(tmp.metrics, {
            "enabled": True, "photos": result.photos, "suspects": len(result.suspects),
            "suspect_rate": round(len(result.suspects) / max(result.photos, 1), 4),
            "method": cfg.method, "features": result.features,
        })  # fmt: skip
        shown = result.suspects[: min(cfg.shown, mistakes.SHEET_MAX)]
        blobs = open_store(ingest_dir).read_many([ingest_dir / d.path for d in shown])
        captions = [f"{Path(d.source).name}\n{d.given} -> {d.suggested}?" for d in shown]
        mistakes.contact_sheet(blobs, captions, [True] * len(shown), tmp.sheet)
        write_text_atomic(tmp.report_md, _page(result, cfg))


def _scheme(cfg: AuditConfig) -> str:
    if cfg.method == "neighbours":
        return f"the labels of its {cfg.neighbours} nearest other photos"
    return f"a logistic regression fitted on the other {cfg.folds - 1} of {cfg.folds} folds"


def _page(result: AuditResult, cfg: AuditConfig) -> str:
    """report.md: how the audit was made, the sheet of the most doubtful, and the table."""
    lines = [
        "# Label audit",
        "",
        f"**{len(result.suspects)} of {result.photos} train and val photos** have a label the "
        f"out-of-sample model doubts. Each photo was described by {result.features}, scored by "
        f"{_scheme(cfg)}, and "
        "cleanlab's confident learning named the doubtful ones (quality: the probability the "
        "model gave the given label; low is doubtful). Nothing was dropped: review them "
        "(`carinspect labels audit --push`) and fix the source labels.",
        "",
        "![the most doubtful photos](figures/suspects.png)",
        "",
        "| task | split | photo | given | suggested | quality |",
        "|---|---|---|---|---|---|",
    ]
    lines += [f"| {d.task} | {d.split} | `{d.source}` | {d.given} | {d.suggested} | {d.quality:.3f} |"
              for d in result.suspects[: cfg.shown]]  # fmt: skip
    if len(result.suspects) > cfg.shown:
        lines += ["", f"{len(result.suspects) - cfg.shown} more in suspects.csv."]
    return "\n".join(lines) + "\n"
