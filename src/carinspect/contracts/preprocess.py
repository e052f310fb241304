"""How an RGB image becomes the network's input: the spec model.json and checkpoints store.

The function that applies it is :func:`carinspect.data.loading.preprocess.preprocess`; the spec lives
here, with the contracts, so that a stage which only reads or writes model cards (threshold,
register) does not depend on image code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from carinspect.config import ModelConfig


@dataclass(frozen=True)
class PreprocessSpec:
    """How an RGB image becomes the network's input tensor."""

    img_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize: Literal["squash", "crop"] = "squash"
    crop_pct: float = 0.875
    # ingest.short_side of the training data: images larger than that are first reduced as
    # ingest reduced them (a no-op on the ingest cache, the same pixels for a served upload)
    source_short_side: int | None = None

    @classmethod
    def from_model(cls, cfg: ModelConfig, source_short_side: int | None = None) -> PreprocessSpec:
        """Build the spec from the ``model`` section of params (and ingest's short side).

        ``img_size``, ``mean`` or ``std`` left null come from timm's pretrained config of the
        model (what its weights were trained with).
        """
        img_size, mean, std = cfg.img_size, cfg.mean, cfg.std
        if img_size is None or mean is None or std is None:
            own_size, own_mean, own_std = _pretrained_input(cfg.name)
            img_size = own_size if img_size is None else img_size
            mean = own_mean if mean is None else mean
            std = own_std if std is None else std
        return cls(
            img_size=img_size,
            mean=(mean[0], mean[1], mean[2]),
            std=(std[0], std[1], std[2]),
            resize=cfg.resize,
            crop_pct=cfg.crop_pct,
            source_short_side=source_short_side,
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessSpec:
        """Inverse of :meth:`to_dict` (model.json, checkpoints)."""
        return cls(
            img_size=int(d["img_size"]),
            mean=tuple(float(x) for x in d["mean"]),  # type: ignore[arg-type]
            std=tuple(float(x) for x in d["std"]),  # type: ignore[arg-type]
            resize=d.get("resize", "squash"),
            crop_pct=float(d.get("crop_pct", 0.875)),
            source_short_side=d.get("source_short_side"),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d


def _pretrained_input(name: str) -> tuple[int, list[float], list[float]]:
    """Input side, mean and std of timm's pretrained config for ``name`` (ImageNet's without)."""
    import timm

    pretrained = timm.get_pretrained_cfg(name)
    size = int(pretrained.input_size[-1]) if pretrained is not None else 224
    mean = list(pretrained.mean) if pretrained is not None else [0.485, 0.456, 0.406]
    std = list(pretrained.std) if pretrained is not None else [0.229, 0.224, 0.225]
    return size, mean, std
