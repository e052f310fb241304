"""One declaration per stage: what it reads, where it writes, what comes before it.

dvc.yaml, the KFP pipeline and the CLI are three ways to run the same stages; this is the one
place that says, for each, which params.yaml sections it reads (dvc.yaml's ``params``, the KFP
section inputs its component is given), which stages' outputs it takes, and its output folder
(the CLI's default paths; later stages find their inputs in it through its
:class:`~carinspect.contracts.folders.StageDir`). tests/test_dvc_yaml.py checks dvc.yaml
against it, tests/pipelines against the components; the pipelines wire each component's
artifact inputs from ``after`` and ``artifact`` (:func:`pipelines.signature.call`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from carinspect.contracts.folders import (
    AuditDir,
    EvaluateDir,
    ExportDir,
    IngestDir,
    SplitDir,
    StageDir,
    ThresholdDir,
    TrainDir,
)


@dataclass(frozen=True)
class StageSpec:
    """One stage of the pipeline."""

    name: str  # `carinspect <name>`, the dvc.yaml stage, the KFP component
    out: Path  # its output folder (or file), where `dvc repro` and the CLI put it
    folder: type[StageDir] | None  # the class that owns the folder's file names
    params: tuple[str, ...]  # the params.yaml keys its output depends on (dvc.yaml `params`)
    sections: tuple[str, ...]  # the sections its KFP component is given, one JSON input each
    after: tuple[str, ...] = ()  # the stages whose outputs it reads
    # its KFP output artifact: a later stage's component takes it as an input of this name
    artifact: str | None = None
    command: tuple[str, ...] = ()  # the CLI words after `carinspect` when not just (name,)

    @property
    def words(self) -> tuple[str, ...]:
        """``carinspect <words>`` runs the stage (dvc.yaml's ``cmd``)."""
        return self.command or (self.name,)

    @property
    def dir(self) -> StageDir:
        """The output folder at its default place, as its contract class."""
        if self.folder is None:
            raise TypeError(f"stage {self.name} writes one file, {self.out}, not a folder")
        return self.folder(self.out)

    @property
    def inputs(self) -> dict[str, str]:
        """KFP section input name -> params.yaml key (``data.demo`` -> ``demo_cfg``)."""
        return {section_input(s): s for s in self.sections}


def section_input(key: str) -> str:
    """The KFP pipeline input that carries params.yaml section ``key``: ``data.demo`` -> ``demo_cfg``."""
    return f"{key.rpartition('.')[2]}_cfg"


# in pipeline order; `demo` (carinspect data demo) is a data generator, not a stage of the model
STAGES: tuple[StageSpec, ...] = (
    StageSpec(
        "ingest",
        Path("data/ingest"),
        IngestDir,
        params=("data.source", "data.task", "data.coco_tasks", "data.feedback", "data.format",
                "data.shards", "ingest"),
        sections=("data.demo", "data.coco_tasks", "ingest"),
        artifact="data",
    ),
    StageSpec("split", Path("data/split"), SplitDir, params=("split",), sections=("split",),
              after=("ingest",), artifact="splits"),
    StageSpec("train", Path("models/train"), TrainDir, params=("model", "train", "mlflow"),
              sections=("model", "train", "mlflow"), after=("ingest", "split"), artifact="model"),
    # opt-in (audit.enabled); dvc repro only: no KFP section input, no component
    StageSpec("audit", Path("data/audit"), AuditDir, params=("audit",), sections=(),
              after=("ingest", "split", "train"), command=("labels", "audit")),
    StageSpec("evaluate", Path("models/evaluate"), EvaluateDir, params=("evaluate",), sections=("evaluate",),
              after=("ingest", "split", "train"), artifact="evaluation"),
    StageSpec("threshold", Path("models/threshold"), ThresholdDir, params=("threshold",),
              sections=("threshold",), after=("train", "evaluate"), artifact="operating_point"),
    StageSpec("export", Path("models/export"), ExportDir, params=("export",), sections=("export",),
              after=("ingest", "split", "train", "evaluate", "threshold"), artifact="onnx_model"),
    StageSpec("register", Path("models/registered.json"), None, params=("register",),
              sections=("register",), after=("train", "evaluate", "export")),
    StageSpec("summary", Path("models/summary.txt"), None, params=(), sections=(),
              after=("ingest", "split", "train", "evaluate", "threshold", "export", "register")),
)  # fmt: skip
SPEC = {s.name: s for s in STAGES}
