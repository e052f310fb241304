"""Classification losses with class weights and label smoothing, and their multi-task sum."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from carinspect.config import TrainConfig
from carinspect.contracts.tasks import MISSING, TaskSpec, task_slices
from carinspect.errors import InputError


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


class MultiTaskLoss(nn.Module):
    """The weighted sum of one loss per task head, over the images labelled for that task.

    ``logits`` are the model's outputs, each task's head a block of them (:func:`task_slices`);
    ``target`` is ``[batch, tasks]`` with :data:`MISSING` for unlabelled. ``uncertainty``
    weighting learns one log-variance ``s`` per task and adds ``exp(-s) * L + s`` (Kendall,
    Gal and Cipolla 2018): a task whose loss stays high (noisy labels) gets a smaller weight,
    and ``+ s`` stops every weight from going to zero. A task with no labelled image in a batch
    adds zero, but stays in the graph so that DDP sees a gradient for every parameter.
    """

    def __init__(
        self,
        tasks: Sequence[TaskSpec],
        losses: Sequence[nn.Module],
        weights: Sequence[float],
        uncertainty: bool = False,
    ) -> None:
        super().__init__()
        self.names = [t.name for t in tasks]
        self.slices = task_slices(tasks)
        self.losses = nn.ModuleList(losses)
        self.weights: torch.Tensor
        self.register_buffer("weights", torch.tensor([float(w) for w in weights]))
        self.log_vars = nn.Parameter(torch.zeros(len(tasks))) if uncertainty else None

    def per_task(self, logits: torch.Tensor, target: torch.Tensor) -> list[torch.Tensor]:
        """Each task's mean loss over its labelled images (zero, in the graph, when none)."""
        out = []
        for t, sl in enumerate(self.slices):
            labelled = target[:, t] != MISSING
            if bool(labelled.any()):
                out.append(self.losses[t](logits[labelled, sl], target[labelled, t]))
            else:
                out.append(logits[:, sl].sum() * 0.0)
        return out

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The weighted sum over tasks."""
        parts = torch.stack(self.per_task(logits, target))
        if self.log_vars is None:
            return (self.weights * parts).sum()
        return (self.weights * (torch.exp(-self.log_vars) * parts + self.log_vars)).sum()

    def task_weights(self) -> dict[str, float]:
        """The weight each task's loss gets now (learned ones included), for the run's metrics."""
        w = self.weights.detach().cpu()
        if self.log_vars is not None:
            w = w * torch.exp(-self.log_vars.detach().cpu())
        return {n: float(v) for n, v in zip(self.names, w, strict=True)}


def build_task_loss(
    cfg: TrainConfig, tasks: Sequence[TaskSpec], labels: Sequence[Sequence[int]]
) -> nn.Module:
    """One task: :func:`build_loss`. Several: :class:`MultiTaskLoss` of one loss per task.

    ``labels``: each task's class indexes over the training images (MISSING left out of the
    class weights).
    """
    if len(tasks) == 1:
        return build_loss(cfg, labels[0], len(tasks[0].classes))
    if isinstance(cfg.class_weights, list):
        raise InputError(
            "train.class_weights as a list fits one task; with several tasks use auto or none"
        )
    unknown = sorted(set(cfg.task_weights) - {t.name for t in tasks})
    if unknown:
        raise InputError(
            f"train.task_weights names {unknown}, which are not tasks of {[t.name for t in tasks]}"
        )
    losses = [
        build_loss(cfg, [c for c in task_labels if c != MISSING], len(task.classes))
        for task, task_labels in zip(tasks, labels, strict=True)
    ]
    weights = [cfg.task_weights.get(t.name, 1.0) for t in tasks]
    return MultiTaskLoss(tasks, losses, weights, uncertainty=cfg.task_weighting == "uncertainty")
