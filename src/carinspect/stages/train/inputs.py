"""What a training is given and what it gives back, and the facts about its inputs it reads."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from carinspect.config import MlflowConfig, ModelConfig, Settings, TrainConfig
from carinspect.contracts.folders import IngestDir
from carinspect.contracts.tasks import TaskSpec
from carinspect.data.loading.dataset import split_tasks
from carinspect.errors import InputError


class TrainError(InputError):
    """Training cannot start with these inputs."""


@dataclass(frozen=True)
class TrainInputs:
    """Everything a training process needs; picklable, so it can cross to spawned DDP workers."""

    model: ModelConfig
    train: TrainConfig
    mlflow: MlflowConfig
    settings: Settings
    ingest_dir: Path
    splits: Path
    out: Path
    resume: bool = False
    stop_after: int | None = None
    parent_run_id: str | None = None  # a sweep's run: this one is nested under it
    stop_after_steps: int | None = None


# called on rank 0 after each epoch with (epoch, that epoch's figures); True stops training
EpochHook = Callable[[int, dict[str, float]], bool]


@dataclass(frozen=True)
class TrainResult:
    """What the stage produced."""

    out: Path
    best: Path
    last: Path
    run_id: str
    best_epoch: int
    epochs_run: int
    metrics: dict[str, float]
    history: tuple[dict[str, float], ...] = ()
    stopped_by_hook: bool = False  # a sweep pruned it
    weights_sha256: str = ""  # of the best checkpoint's weights (rank 0's result only)


def resolved_config(model: ModelConfig, train: TrainConfig, mlflow: MlflowConfig) -> dict[str, Any]:
    """The resolved sections a checkpoint records and a resume must match."""
    return {"model": model.model_dump(), "train": train.model_dump(), "mlflow": mlflow.model_dump()}


def tasks_of(inputs: TrainInputs) -> list[TaskSpec]:
    """The tasks of splits.csv; a single task is named as ingest's report names it."""
    report = IngestDir(inputs.ingest_dir).report
    name = "label"
    if report.is_file():
        name = str(json.loads(report.read_text()).get("task") or name)
    return split_tasks(inputs.splits, name)


def sampler_task(cfg: TrainConfig, tasks: list[TaskSpec]) -> int:
    """Index of the task whose classes the sampler balances."""
    names = [t.name for t in tasks]
    if cfg.sampler_task is None:
        return 0
    if cfg.sampler_task not in names:
        raise TrainError(f"train.sampler_task {cfg.sampler_task!r} is not one of the tasks {names}")
    return names.index(cfg.sampler_task)


def describe(tasks: list[TaskSpec]) -> str:
    """``cleanliness(clean,dirty); damage(damaged,intact)``."""
    return "; ".join(f"{t.name}({','.join(t.classes)})" for t in tasks)


def ingest_short_side(ingest_dir: Path) -> int | None:
    """The short side ingest stored the images at (None for an older ingest output)."""
    report = IngestDir(ingest_dir).report
    if not report.is_file():
        return None
    value = json.loads(report.read_text()).get("short_side")
    return int(value) if value else None
