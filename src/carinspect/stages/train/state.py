"""TrainState: the objects a training changes, and the checkpoint that records and restores them.

As timm's CheckpointSaver does for its train script, one object owns what goes into last.pt and
best.pt and how a resume puts it back: the weights, optimizer, scheduler, scaler, EMA, early
stopping, sampler, every rank's RNG state and where inside an epoch it stopped. The file's keys
are :class:`carinspect.contracts.checkpoint.Checkpoint`'s.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from carinspect.contracts.checkpoint import Checkpoint
from carinspect.contracts.preprocess import PreprocessSpec
from carinspect.contracts.tasks import TaskSpec, tasks_of_checkpoint
from carinspect.data.loading.samplers import ShardedEpochSampler
from carinspect.data.loading.streaming import ShardStream
from carinspect.modeling.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from carinspect.stages.train.inputs import describe
from carinspect.training.loop import EarlyStopping, Precision

logger = logging.getLogger(__package__)


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside DDP and torch.compile's wrappers (whose state dict a checkpoint keeps)."""
    inner = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    return getattr(inner, "_orig_mod", inner)


@dataclass(frozen=True)
class Resumed:
    """Where a restored training continues."""

    epoch: int = 0  # the first epoch to run, 0-based
    step: int = 0  # batches of that epoch already done (0: from its start)
    partial: list[float] | None = None  # that epoch's running sums on this rank


@dataclass
class TrainState:
    """Everything a checkpoint records; ``history`` and ``run_id`` change as training goes."""

    model: nn.Module  # as trained (DDP and compile wrappers included)
    ema: Any  # timm's ModelEmaV3, or None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    precision: Precision
    stopper: EarlyStopping
    sampler: ShardedEpochSampler | ShardStream
    loss: nn.Module
    tasks: list[TaskSpec]
    spec: PreprocessSpec
    config: dict[str, Any]  # the resolved model, train and mlflow sections
    trained_on: str  # the data digest an automatic resume checks
    workers: int
    world_size: int
    history: list[dict[str, float]] = field(default_factory=list)
    run_id: str | None = None

    @property
    def eval_model(self) -> nn.Module:
        """What is evaluated and kept as best: the EMA weights when kept."""
        return self.ema.module if self.ema is not None else self.model

    def snapshot(
        self, done_epoch: int, step: int, rngs: list[Any], partial: list[Any]
    ) -> Checkpoint:
        """last.pt's content: after epoch ``done_epoch``, and ``step`` batches into the next."""
        multi = len(self.tasks) > 1
        scaler = self.precision.scaler
        return {
            "model": unwrap(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "early_stopping": self.stopper.state_dict(),
            "sampler": self.sampler.state_dict(),
            "rng": rngs,
            "epoch": done_epoch,
            "step": step,
            "partial": partial,
            "workers": self.workers,
            "history": self.history,
            "classes": None if multi else self.tasks[0].classes,
            "task": self.tasks[0].name,
            "tasks": [t.model_dump() for t in self.tasks] if multi else None,
            "loss": self.loss.state_dict(),
            "preprocess": self.spec.to_dict(),
            "config": self.config,
            "data": self.trained_on,
            "mlflow_run_id": self.run_id,
            "world_size": self.world_size,
        }

    def save(
        self, last: Path, done_epoch: int, step: int, rngs: list[Any], partial: list[Any]
    ) -> Checkpoint:
        """Write last.pt (atomically) and return what it holds."""
        state = self.snapshot(done_epoch, step, rngs, partial)
        save_checkpoint(dict(state), last)
        return state

    def save_best(self, best: Path, state: Checkpoint) -> None:
        """best.pt: ``state`` with the evaluated weights (the EMA's when kept)."""
        save_checkpoint({**state, "model": unwrap(self.eval_model).state_dict()}, best)

    def restore(self, last: Path, rank: int) -> Resumed:
        """Put last.pt back into every object; this rank's RNG state too."""
        state = load_checkpoint(last)
        if tasks_of_checkpoint(state) != self.tasks:
            raise CheckpointError(
                f"{last}: trained for {describe(tasks_of_checkpoint(state))}, "
                f"the data now has {describe(self.tasks)}"
            )
        unwrap(self.model).load_state_dict(state["model"])
        if state.get("loss"):
            self.loss.load_state_dict(state["loss"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        scaler = state.get("scaler")
        if self.precision.scaler is not None and scaler:
            self.precision.scaler.load_state_dict(scaler)
        if self.ema is not None and state.get("ema"):
            self.ema.load_state_dict(state["ema"])
        self.stopper.load_state_dict(state["early_stopping"])
        self.sampler.load_state_dict(state["sampler"])
        set_rng_state(state["rng"][min(rank, len(state["rng"]) - 1)])
        self.history, self.run_id = state["history"], state["mlflow_run_id"]
        step = self._resume_step(state)
        return Resumed(state["epoch"] + 1, step, list(state["partial"][rank]) if step else None)

    def _resume_step(self, state: Checkpoint) -> int:
        """Where inside its epoch a checkpoint resumes: its step, when the stream can be rebuilt.

        The stream of an epoch depends on the world size and the worker count; with others the
        epoch starts over (from its first step, with the weights of the checkpoint).
        """
        step = int(state.get("step") or 0)
        world, workers = self.world_size, self.workers
        if step and (state.get("world_size") != world or state.get("workers") != workers):
            logger.warning(
                "%d processes x %d workers now, %s x %s at the checkpoint: epoch %d starts over",
                world, workers, state.get("world_size"), state.get("workers"), state["epoch"] + 2,
            )  # fmt: skip
            return 0
        return step


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed Python, NumPy and torch; deterministic kernels where asked."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def rng_state() -> dict[str, Any]:
    """The RNG states of this process, as a checkpoint records them per rank."""
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` recorded."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
