"""The model factory: the only place that calls ``timm.create_model``."""

from __future__ import annotations

import difflib
import logging
from typing import Any

import torch

from carinspect.config import ModelConfig
from carinspect.errors import InputError
from carinspect.modeling.weights import load_into

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

    Pretrained weights come from the hub, or from ``cfg.weights`` when given (a file or an
    installed package, in the shapes :mod:`carinspect.modeling.weights` accepts); the classifier
    is re-initialised when its size differs.
    """
    import timm

    check_model_name(cfg.name)
    kwargs: dict[str, Any] = {"num_classes": num_classes, "drop_rate": cfg.drop_rate}
    if cfg.drop_path_rate > 0:
        kwargs["drop_path_rate"] = cfg.drop_path_rate
    weights = cfg.weights if cfg.pretrained else None
    try:
        model = timm.create_model(cfg.name, pretrained=cfg.pretrained and not weights, **kwargs)
    except TypeError as err:
        raise ModelError(f"model.name {cfg.name!r}: {err}") from None
    except (RuntimeError, OSError) as err:
        raise ModelError(
            f"model {cfg.name!r}: cannot load pretrained weights from the model hub: {err} "
            "(offline: set model.weights to a file or package:<module>)"
        ) from None
    if weights:
        load_into(model, weights, classifier_keys(model))
    n_params = sum(p.numel() for p in model.parameters())
    logger.debug("model %s: %.2fM parameters, %d classes", cfg.name, n_params / 1e6, num_classes)
    return model


def classifier_keys(model: torch.nn.Module) -> list[str]:
    """State-dict keys of the model's classifier (timm's ``get_classifier``)."""
    get = getattr(model, "get_classifier", None)
    head = get() if callable(get) else None
    name = next((n for n, m in model.named_modules() if m is head), None)
    if not name:
        return []
    return [k for k in model.state_dict() if k.startswith(f"{name}.")]
