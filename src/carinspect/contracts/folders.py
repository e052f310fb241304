"""Each stage's output folder as a small class that owns its file names.

Stages write through these, and later stages, the CLI, the KFP components and the lineage code
find what they need through them, so a file name is spelled once. ``require`` turns a missing
input into an error that names the file and the stage that makes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from carinspect.errors import InputError


class MissingStageOutput(InputError):
    """A stage's input is not there: the stage that writes it has not run (or ran elsewhere)."""


class _File:
    """One file of a stage folder: ``IngestDir(root).manifest`` is ``root / "manifest.csv"``."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, folder: StageDir, owner: type[StageDir] | None = None) -> Path:
        return folder.root / self.name


@dataclass(frozen=True)
class StageDir:
    """The output folder of one stage."""

    root: Path
    stage: ClassVar[str] = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    metrics = _File("metrics.json")  # flat figures DVC and KFP show (every stage writes one)

    def require(self, *files: Path) -> None:
        """Raise :class:`MissingStageOutput` naming the first of ``files`` that is missing."""
        for f in files:
            if not f.exists():
                raise MissingStageOutput(
                    f"{f} not found: it is written by the {self.stage} stage (run it first, "
                    f"for example `dvc repro {self.stage}`)"
                )


@dataclass(frozen=True)
class _DataStageDir(StageDir):
    """A data stage's folder: its report, as JSON for code and Markdown for people."""

    report = _File("report.json")  # ends with the params that made the folder
    report_md = _File("report.md")


@dataclass(frozen=True)
class IngestDir(_DataStageDir):
    """ingest: the decoded images, their manifest and the data report."""

    stage: ClassVar[str] = "ingest"

    manifest = _File("manifest.csv")


@dataclass(frozen=True)
class SplitDir(_DataStageDir):
    """split: which image is in train, val and test."""

    stage: ClassVar[str] = "split"

    splits = _File("splits.csv")


@dataclass(frozen=True)
class TrainDir(StageDir):
    """train: checkpoints, per-epoch history and the reference to its MLflow run."""

    stage: ClassVar[str] = "train"

    best = _File("best.pt")
    last = _File("last.pt")
    history = _File("history.csv")
    run_ref = _File("run.json")  # the MLflow run the later stages add to


@dataclass(frozen=True)
class EvaluateDir(StageDir):
    """evaluate: per-image predictions, the calibration temperature and the figures."""

    stage: ClassVar[str] = "evaluate"

    predictions = _File("predictions.csv")
    calibration = _File("calibration.json")
    report = _File("report.json")
    verdict = _File("verdict.json")  # the model against the baseline: register reads it
    mistakes = _File("mistakes.csv")  # wrong and least certain test photos, by original name
    mistakes_sheet = _File("figures/mistakes.png")  # their contact sheet
    # the wrong ones with the heatmap of the answer on each (models with class activation maps)
    mistakes_explained = _File("figures/mistakes_explained.png")
    confusion = _File("plots/confusion.csv")  # test-split pairs, for `dvc plots`


@dataclass(frozen=True)
class AuditDir(StageDir):
    """audit: train and val photos whose given label the out-of-sample model doubts."""

    stage: ClassVar[str] = "audit"

    suspects = _File("suspects.csv")  # task, split, source, path, given, suggested, quality
    report_md = _File("report.md")  # the page: figures, the method, the sheet and the table
    sheet = _File("figures/suspects.png")  # the most doubtful photos with both labels


@dataclass(frozen=True)
class ThresholdDir(StageDir):
    """threshold: the decision rule (the operating point) and its curves."""

    stage: ClassVar[str] = "threshold"

    rule = _File("threshold.json")  # the decision rule with its per-split report


@dataclass(frozen=True)
class ExportDir(StageDir):
    """export: the ONNX graph(s) and the model card, what register logs and serving loads."""

    stage: ClassVar[str] = "export"
    ONNX: ClassVar[str] = "model.onnx"
    ONNX_FP16: ClassVar[str] = "model.fp16.onnx"
    ONNX_INT8: ClassVar[str] = "model.int8.onnx"  # written only when it passes its gate
    CARD: ClassVar[str] = "model.json"
    MC_HEAD: ClassVar[str] = "mc_head.onnx"  # the classifier alone, for MC dropout sampling
    DRIFT: ClassVar[str] = "drift.json"  # the training photos' profile, for drift scores
    # where an MLflow model logged with extra_files=[model.json, ...] keeps them
    LOGGED_CARD: ClassVar[str] = "extra_files/model.json"
    LOGGED_MC_HEAD: ClassVar[str] = "extra_files/mc_head.onnx"
    LOGGED_DRIFT: ClassVar[str] = "extra_files/drift.json"

    onnx = _File(ONNX)
    onnx_fp16 = _File(ONNX_FP16)
    onnx_int8 = _File(ONNX_INT8)
    card = _File(CARD)
    mc_head = _File(MC_HEAD)
    drift = _File(DRIFT)
