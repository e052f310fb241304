"""checkpoint.pt: written atomically, read back with a clear error."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from carinspect.contracts.checkpoint import REQUIRED, Checkpoint
from carinspect.errors import InputError
from carinspect.io import default_mode


class CheckpointError(InputError):
    """A checkpoint that is missing or unreadable."""


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """``torch.save`` to a temporary file, then rename: never a half-written checkpoint.

    torch.save is given the open file, not its name: given a name, it records the (random)
    temporary name inside the zip, so equal states would give different bytes.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as stream:
            default_mode(Path(tmp))
            torch.save(state, stream)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def weights_digest(weights: dict[str, torch.Tensor]) -> str:
    """sha256 over a state dict's names, dtypes, shapes and bytes, in order.

    Two trainings that end with the same weights have the same digest, though their checkpoint
    files differ (the MLflow run id and the measured epoch times are in them).
    """
    digest = hashlib.sha256()
    for name, tensor in weights.items():
        t = tensor.detach().cpu()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def model_from_checkpoint(state: Checkpoint) -> torch.nn.Module:
    """Rebuild the network a checkpoint was trained with and load its weights (eval mode)."""
    from carinspect.config import ModelConfig
    from carinspect.contracts.tasks import num_outputs, tasks_of_checkpoint
    from carinspect.modeling.factory import build_model

    cfg = ModelConfig.model_validate({**state["config"]["model"], "pretrained": False})
    model = build_model(cfg, num_outputs(tasks_of_checkpoint(state)))
    model.load_state_dict(state["model"])
    return model.eval()


def load_checkpoint(path: Path) -> Checkpoint:
    """Load a checkpoint written by :func:`save_checkpoint` onto the CPU."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        state: Checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise CheckpointError(f"{path}: not a readable checkpoint: {err}") from None
    for key in REQUIRED:
        if key not in state:
            raise CheckpointError(f"{path}: checkpoint lacks {key!r}")
    return state
