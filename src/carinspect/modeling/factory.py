"""The model factory: the only place that calls ``timm.create_model``."""

from __future__ import annotations

import difflib
import logging
from pathlib import Path
from typing import Any

import torch

from carinspect.config import ModelConfig
from carinspect.errors import InputError

logger = logging.getLogger(__name__)


class ModelError(InputError):
    """A model that cannot be built from params."""


def check_model_name(name: str) -> None:
    """Raise :class:`ModelError` listing close matches when ``name`` is not a timm model."""
    import timm

    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
        hint = f"; close matches: {', '.join(close)}" if close else ""
        raise ModelError(f"model.name {name!r} is not a timm model{hint}")


def build_model(cfg: ModelConfig, num_classes: int) -> torch.nn.Module:
    """Create ``cfg.name`` with a ``num_classes`` head.

    Pretrained weights come from the hub, or from ``cfg.weights`` (a local file: a timm/torchvision
    state dict or safetensors) when given; the classifier is re-initialised when its size differs.
    """
    import timm

    check_model_name(cfg.name)
    kwargs: dict[str, Any] = {"num_classes": num_classes, "drop_rate": cfg.drop_rate}
    if cfg.drop_path_rate > 0:
        kwargs["drop_path_rate"] = cfg.drop_path_rate
    if cfg.pretrained and cfg.weights:
        weights = Path(cfg.weights)
        if not weights.is_file():
            raise ModelError(f"model.weights {cfg.weights!r}: file not found")
        kwargs["pretrained_cfg_overlay"] = {"file": str(weights)}
    try:
        model = timm.create_model(cfg.name, pretrained=cfg.pretrained, **kwargs)
    except TypeError as err:
        raise ModelError(f"model.name {cfg.name!r}: {err}") from None
    except (RuntimeError, OSError) as err:
        source = cfg.weights or "the model hub"
        raise ModelError(
            f"model {cfg.name!r}: cannot load pretrained weights from {source}: {err}"
        ) from None
    n_params = sum(p.numel() for p in model.parameters())
    logger.info("model %s: %.2fM parameters, %d classes", cfg.name, n_params / 1e6, num_classes)
    return model
