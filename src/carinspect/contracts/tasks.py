"""Tasks: the questions one model answers about a photo (cleanliness, damage, ...).

A single-task project has one task, named after its label column (``label`` for folders, S3,
COCO and the demo). A multi-task project trains one backbone with one classification head per
task. The heads are stored as consecutive blocks of one linear classifier, so a multi-task model
is an ordinary timm model with ``sum(len(classes))`` outputs, and every part that handles a
timm model (checkpoints, EMA, DDP, ``torch.compile``, ONNX export) handles it unchanged;
:func:`task_slices` says which outputs belong to which task.

A missing label (a photo not labelled for a task) is :data:`MISSING` in the target tensors and
is ignored by that task's loss and metrics.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import Field, field_validator

from carinspect.contracts.base import Contract

MISSING = -1  # class index of a photo that is not labelled for a task
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")


class TaskSpec(Contract):
    """One task: its name and its classes, in the order of the head's outputs."""

    name: str
    classes: list[str] = Field(min_length=2)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(
                f"task name {value!r} must start with a letter and hold only letters, digits, "
                "'_', '.' or '-' (it names ONNX outputs, metrics and MLflow keys)"
            )
        return value

    @field_validator("classes")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value) or any(not c for c in value):
            raise ValueError(f"classes must be distinct and non-empty, got {value}")
        return value


def task_slices(tasks: Sequence[TaskSpec]) -> list[slice]:
    """The block of model outputs (logits) that belongs to each task, in order."""
    out, start = [], 0
    for task in tasks:
        out.append(slice(start, start + len(task.classes)))
        start += len(task.classes)
    return out


def num_outputs(tasks: Sequence[TaskSpec]) -> int:
    """Width of the classifier that holds every task's head."""
    return sum(len(t.classes) for t in tasks)


def tasks_of_checkpoint(state: Mapping[str, Any]) -> list[TaskSpec]:
    """The tasks a training checkpoint was trained for.

    Checkpoints of a single task (and those written before tasks existed) hold ``classes`` only;
    their one task is named by ``task`` when present, else ``label``.
    """
    if state.get("tasks"):
        return [TaskSpec.model_validate(t) for t in state["tasks"]]
    return [TaskSpec(name=str(state.get("task") or "label"), classes=list(state["classes"]))]
