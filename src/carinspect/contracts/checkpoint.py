"""last.pt and best.pt: what a training checkpoint holds, key by key.

The file is a plain dict for ``torch.save`` (so checkpoints of older versions still load, and the
bytes of two equal trainings are equal); this TypedDict names each key once, so the stages that
read one (train's resume, evaluate, export, the resume check) are type-checked against it rather
than against string literals scattered over five files.
"""

from __future__ import annotations

from typing import Any, TypedDict

# the keys a file must have to be read as a checkpoint at all (a foreign or older file may lack
# the rest)
REQUIRED = ("model", "classes", "config", "epoch")


class Checkpoint(TypedDict, total=False):
    """One checkpoint. Tensors are typed Any: this module does not import torch."""

    model: dict[str, Any]  # the network's state dict (best.pt: the EMA weights when kept)
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    scaler: dict[str, Any] | None  # the fp16 GradScaler, None under bf16 or fp32
    ema: dict[str, Any] | None
    early_stopping: dict[str, Any]
    sampler: dict[str, Any]  # ShardedEpochSampler or ShardStream state
    rng: list[dict[str, Any]]  # torch/numpy/python(/cuda) RNG states, one per rank
    epoch: int  # the last finished epoch, 0-based
    step: int  # batches into the next epoch (0: saved at an epoch's end)
    partial: list[list[float]]  # every rank's running sums of that next epoch
    workers: int  # loader workers: a resume inside an epoch needs the same count
    history: list[dict[str, float]]  # one row per finished epoch
    classes: list[str] | None  # one task: its classes; several: None
    task: str  # the (first) task's name
    tasks: list[dict[str, Any]] | None  # several tasks: each TaskSpec, dumped
    loss: dict[str, Any]  # the loss's state (learned task weights)
    preprocess: dict[str, Any]  # PreprocessSpec.to_dict()
    config: dict[str, Any]  # the resolved model, train and mlflow sections
    data: str  # sha256 of the manifest and splits it was trained on
    mlflow_run_id: str | None
    world_size: int


def model_section(state: Checkpoint) -> dict[str, Any]:
    """The model section the checkpoint was trained with (name, drop rates, image size ...)."""
    return dict(state["config"]["model"])
