"""Classification losses with class weights and label smoothing."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from carinspect.config import TrainConfig


class FocalLoss(nn.Module):
    """Focal loss (Lin et al. 2017) on softmax outputs, with optional class weights and smoothing."""

    def __init__(
        self, gamma: float = 2.0, weight: torch.Tensor | None = None, label_smoothing: float = 0.0
    ) -> None:
        super().__init__()
        self.gamma = gamma
        self.label_smoothing = label_smoothing
        self.weight: torch.Tensor | None
        self.register_buffer("weight", weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean focal loss of a batch."""
        logp = F.log_softmax(logits.float(), dim=1)
        ce = F.nll_loss(logp, target, reduction="none")
        if self.label_smoothing > 0:
            ce = (1 - self.label_smoothing) * ce - self.label_smoothing * logp.mean(dim=1)
        pt = logp.gather(1, target[:, None]).squeeze(1).exp()
        loss = (1 - pt) ** self.gamma * ce
        if self.weight is not None:
            w = self.weight[target]
            return (loss * w).sum() / w.sum()
        return loss.mean()


def class_weight_tensor(
    spec: str | Sequence[float], labels: Sequence[int], num_classes: int
) -> torch.Tensor | None:
    """``auto``: inverse frequency normalised to mean 1; ``none``: no weights; a list: as given."""
    if spec == "none":
        return None
    if spec == "auto":
        counts = torch.bincount(torch.as_tensor(list(labels)), minlength=num_classes).float()
        w = counts.sum() / (num_classes * counts.clamp(min=1))
        return w
    if len(spec) != num_classes:
        raise ValueError(f"train.class_weights has {len(spec)} values for {num_classes} classes")
    return torch.tensor([float(x) for x in spec])


def build_loss(cfg: TrainConfig, labels: Sequence[int], num_classes: int) -> nn.Module:
    """The loss named by ``train.loss`` with ``train.class_weights`` and label smoothing."""
    weight = class_weight_tensor(cfg.class_weights, labels, num_classes)
    if cfg.loss == "focal":
        return FocalLoss(cfg.focal_gamma, weight, cfg.label_smoothing)
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing)
