"""What evaluate hands on: verdict.json and predictions.csv.

verdict.json is evaluate's judgement of the model against the most-frequent-class baseline;
register reads it and refuses a model that did not pass (unless ``register.require_better:
false``), and the run summary prints it. One entry per task.

predictions.csv holds every val and test image: ``split,path`` then, per task, its label (empty
where the image has none), the answer and one probability column per class. One task's columns
are ``label,predicted,p_<class>...``; several tasks' are prefixed ``<task>:``. threshold reads it,
and the KFP evaluate task draws its confusion matrix from it.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from pydantic import Field, ValidationError

from carinspect.contracts.base import Contract, ContractError, explain, read_json


class TaskVerdict(Contract):
    """One task's figures on the test split and what is wrong with them (``problems``)."""

    task: str
    metric: str
    images: int = Field(ge=0)
    model: float
    model_interval: tuple[float, float]
    baseline: float
    baseline_class: str
    difference: float
    difference_interval: tuple[float, float]  # paired bootstrap: model - baseline, same photos
    temperature: float
    problems: list[str] = Field(default_factory=list)  # any one of them: not registered
    warnings: list[str] = Field(default_factory=list)  # said loudly, registered anyway

    @property
    def passed(self) -> bool:
        """No problem found."""
        return not self.problems


class Verdict(Contract):
    """Every task's verdict; the model passes when each of them does."""

    level: float = 0.95  # of the intervals
    tasks: list[TaskVerdict] = Field(min_length=1)

    @property
    def passed(self) -> bool:
        """Every task passed."""
        return all(t.passed for t in self.tasks)

    def problems(self) -> list[str]:
        """Each task's problems, prefixed with the task when there are several."""
        multi = len(self.tasks) > 1
        return [f"{t.task}: {p}" if multi else p for t in self.tasks for p in t.problems]

    def warnings(self) -> list[str]:
        """Each task's warnings, prefixed as :meth:`problems`."""
        multi = len(self.tasks) > 1
        return [f"{t.task}: {w}" if multi else w for t in self.tasks for w in t.warnings]


def read_verdict(path: Path) -> Verdict:
    """The verdict in ``path``, validated."""
    try:
        return Verdict.model_validate(read_json(path, "evaluate's verdict"))
    except ValidationError as err:
        raise ContractError(f"{path} {explain(err)}") from None


SPLITS = ("val", "test")


def column(task: str, name: str) -> str:
    """A predictions.csv column of ``task`` (``""`` for the only one): ``damage:p_intact``."""
    return f"{task}:{name}" if task else name


def prediction_tasks(path: Path) -> list[str]:
    """The tasks of a multi-task predictions.csv (``<task>:label`` columns); [] for one task."""
    if not Path(path).is_file():
        raise ContractError(f"{path}: predictions file not found (run evaluate first)")
    with Path(path).open(newline="") as fh:
        header = next(csv.reader(fh), [])
    return [c.split(":", 1)[0] for c in header if c.endswith(":label")]


def read_predictions(
    path: Path, task: str = ""
) -> tuple[list[str], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Classes and, per split, (probabilities, label indices) of ``task`` in predictions.csv.

    Only the images labelled for the task; ``task`` empty for a one-task file.
    """
    if not Path(path).is_file():
        raise ContractError(f"{path}: predictions file not found (run evaluate first)")
    start = column(task, "p_")
    with Path(path).open(newline="") as fh:
        reader = csv.DictReader(fh)
        classes = [c[len(start) :] for c in reader.fieldnames or [] if c.startswith(start)]
        rows = [r for r in reader if r[column(task, "label")]]
    if len(classes) < 2 or not rows:
        raise ContractError(f"{path}: expected {start}<class> columns and at least one row")
    out = {}
    for split in SPLITS:
        mine = [r for r in rows if r["split"] == split]
        probs = np.array(
            [[float(r[f"{start}{c}"]) for c in classes] for r in mine], dtype=np.float64
        )
        labels = np.array([classes.index(r[column(task, "label")]) for r in mine], dtype=np.int64)
        out[split] = (probs.reshape(len(mine), len(classes)), labels)
    return classes, out
