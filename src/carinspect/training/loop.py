"""One training epoch, one evaluation pass, the LR schedule and early stopping."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from carinspect.config import EarlyStoppingConfig, TrainConfig
from carinspect.contracts.tasks import MISSING, TaskSpec, task_slices
from carinspect.training.cpu import bf16_in_hardware
from carinspect.training.distributed import DistInfo, all_sum, average_gradients, gather_lists


def cosine_with_warmup(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int, min_ratio: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up to the base LR, then cosine decay to ``min_ratio`` of it (per step)."""

    def factor(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@dataclass
class Precision:
    """Autocast settings: bf16 where the device computes it natively, else fp16 or fp32.

    fp16 with a scaler on GPUs without bf16; fp32 on a CPU without AVX-512 BF16 or AMX (where
    bf16 is emulated and slower) and with ``train.amp: false``.
    """

    dtype: torch.dtype | None
    scaler: torch.amp.GradScaler | None

    @classmethod
    def choose(
        cls, enabled: bool, device: torch.device, flags: frozenset[str] | None = None
    ) -> Precision:
        """Pick the precision for ``device`` (``flags``: the CPU's, read from it when not given)."""
        if not enabled:
            return cls(None, None)
        if device.type == "cpu":
            return cls(torch.bfloat16, None) if bf16_in_hardware(flags) else cls(None, None)
        if device.type != "cuda":
            return cls(None, None)
        if torch.cuda.is_bf16_supported():
            return cls(torch.bfloat16, None)
        return cls(torch.float16, torch.amp.GradScaler("cuda"))

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager[Any]:
        """Context for the forward pass."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.dtype)

    @property
    def name(self) -> str:
        """fp32, bf16 or fp16."""
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]


@dataclass
class EarlyStopping:
    """Tracks the best value of the monitored metric and how long since it improved."""

    cfg: EarlyStoppingConfig
    best: float | None = None
    best_epoch: int = -1
    bad_epochs: int = 0

    @property
    def maximise(self) -> bool:
        """Loss is minimised, everything else maximised."""
        return not self.cfg.monitor.endswith("loss")

    def update(self, value: float, epoch: int) -> bool:
        """Record ``value``; True when it is a new best."""
        delta = self.cfg.min_delta
        better = self.best is None or (
            value > self.best + delta if self.maximise else value < self.best - delta
        )
        if better:
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
        else:
            self.bad_epochs += 1
        return better

    @property
    def should_stop(self) -> bool:
        """Patience exhausted."""
        return self.bad_epochs >= self.cfg.patience

    def state_dict(self) -> dict[str, Any]:
        """For the checkpoint."""
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.best, self.best_epoch, self.bad_epochs = (
            state["best"],
            state["best_epoch"],
            state["bad_epochs"],
        )


@dataclass
class StepContext:
    """What one epoch of training needs besides the model and data."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    loss_fn: nn.Module
    precision: Precision
    device: torch.device
    cfg: TrainConfig
    info: DistInfo
    ema: Any = None
    channels_last: bool = False
    # after each optimizer step, with the batches this epoch has done; True stops the epoch
    # there (a checkpoint inside an epoch, a preempted job's time box)
    on_step: Callable[[int], bool] | None = None
    # this rank's running sums of the epoch so far (loss, right answers, images, answers):
    # carried across a resume inside an epoch, so its figures cover the whole epoch
    partial: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0, 0.0])
    slices: list[slice] | None = None  # several tasks: each task's block of the outputs


def correct_answers(
    logits: torch.Tensor, y: torch.Tensor, slices: list[slice] | None
) -> tuple[float, float]:
    """(right answers, answers) of a batch; several tasks count every labelled (image, task)."""
    if slices is None or y.dim() == 1:
        return float((logits.argmax(1) == y).sum()), float(y.numel())
    right = seen = 0.0
    for t, sl in enumerate(slices):
        labelled = y[:, t] != MISSING
        right += float((logits[labelled, sl].argmax(1) == y[labelled, t]).sum())
        seen += float(labelled.sum())
    return right, seen


def _to_device(
    x: torch.Tensor, y: torch.Tensor, ctx: StepContext
) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.to(ctx.device, non_blocking=True)
    if ctx.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.to(ctx.device, non_blocking=True)


def _step(model: nn.Module, ctx: StepContext) -> None:
    """One optimizer step on the accumulated gradients: unscale, clip, step, schedule, EMA."""
    average_gradients(list(ctx.loss_fn.parameters()))  # learned task weights: not in DDP
    if ctx.precision.scaler is not None:
        ctx.precision.scaler.unscale_(ctx.optimizer)
    if ctx.cfg.clip_grad is not None:
        nn.utils.clip_grad_norm_(model.parameters(), ctx.cfg.clip_grad)
    if ctx.precision.scaler is not None:
        ctx.precision.scaler.step(ctx.optimizer)
        ctx.precision.scaler.update()
    else:
        ctx.optimizer.step()
    ctx.optimizer.zero_grad(set_to_none=True)
    ctx.scheduler.step()
    if ctx.ema is not None:
        ctx.ema.update(model)


def train_one_epoch(
    model: nn.Module, loader: Any, ctx: StepContext, epoch: int, start_step: int = 0
) -> dict[str, float]:
    """Train for one epoch; returns loss, accuracy and images/s summed over every rank.

    ``start_step``: the loader begins there (a resume inside the epoch), and ``ctx.partial``
    holds the sums of the batches before it.
    """
    model.train()
    accumulate = ctx.cfg.accumulate
    total_loss, correct, seen, answered = ctx.partial if start_step else [0.0, 0.0, 0.0, 0.0]
    start = time.perf_counter()
    timed = 0.0  # images of this call, for images/s
    ctx.optimizer.zero_grad(set_to_none=True)
    n_batches = len(loader)
    bar = tqdm(
        total=n_batches,
        initial=start_step,
        desc=f"epoch {epoch + 1}",
        unit="batch",
        leave=False,
        disable=None if ctx.info.primary else True,
    )
    for i, (x, y) in enumerate(loader, start=start_step):
        x, y = _to_device(x, y, ctx)
        last_of_group = (i + 1) % accumulate == 0 or i + 1 == n_batches
        sync: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
        if not last_of_group and isinstance(model, nn.parallel.DistributedDataParallel):
            sync = model.no_sync()
        with sync:
            with ctx.precision.autocast(ctx.device):
                logits = model(x)
                loss = ctx.loss_fn(logits, y)
            scaled = loss / accumulate
            if ctx.precision.scaler is not None:
                ctx.precision.scaler.scale(scaled).backward()
            else:
                scaled.backward()
        if last_of_group:
            _step(model, ctx)
        n = x.shape[0]
        total_loss += float(loss.detach()) * n
        right, answers = correct_answers(logits.detach(), y, ctx.slices)
        correct += right
        answered += answers
        seen += n
        timed += n
        elapsed = time.perf_counter() - start
        bar.update()
        bar.set_postfix(
            loss=f"{total_loss / seen:.4f}",
            acc=f"{correct / max(answered, 1):.3f}",
            lr=f"{ctx.optimizer.param_groups[0]['lr']:.2e}",
            img_s=f"{timed * ctx.info.world_size / max(elapsed, 1e-9):.0f}",
        )
        ctx.partial = [total_loss, correct, seen, answered]
        if last_of_group and ctx.on_step is not None and ctx.on_step(i + 1):
            break
    bar.close()
    seconds = time.perf_counter() - start
    total_loss, correct, seen, timed, answered = all_sum(
        [total_loss, correct, seen, timed, answered], ctx.device
    )
    return {
        "train_loss": total_loss / max(seen, 1),
        "train_accuracy": correct / max(answered, 1),
        "images_per_s": timed / max(seconds, 1e-9),
        "epoch_seconds": seconds,
    }


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    loader: Any,
    device: torch.device,
    precision: Precision,
    channels_last: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Logits (float32) and labels of every batch of ``loader`` on this rank."""
    model.eval()
    logits, labels = [], []
    for x, y in loader:
        x = x.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with precision.autocast(device):
            out = model(x)
        logits.append(out.float().cpu().numpy())
        labels.append(y.numpy())
    if not logits:
        return np.zeros((0, 0), dtype=np.float32), np.zeros(0, dtype=np.int64)
    return np.concatenate(logits), np.concatenate(labels)


def classification_metrics(
    probs: np.ndarray, labels: np.ndarray, num_classes: int
) -> dict[str, float]:
    """Loss, accuracy and macro-F1 (scikit-learn) of gathered predictions."""
    from sklearn.metrics import accuracy_score, f1_score, log_loss

    probs = probs.astype(np.float64)
    probs = probs / probs.sum(axis=1, keepdims=True)  # float32 softmax sums miss 1 by ~1e-7
    pred = probs.argmax(1)
    all_labels = list(range(num_classes))
    return {
        "val_loss": float(log_loss(labels, probs, labels=all_labels)),
        "val_accuracy": float(accuracy_score(labels, pred)),
        "val_macro_f1": float(
            f1_score(labels, pred, labels=all_labels, average="macro", zero_division=0)
        ),
    }


def task_metrics(logits: np.ndarray, labels: np.ndarray, tasks: list[TaskSpec]) -> dict[str, float]:
    """Per-task and headline validation metrics of a multi-task model.

    Each task's ``val_<task>_loss/accuracy/macro_f1`` come from its labelled images; the
    headline ``val_loss`` is their sum, ``val_accuracy`` and ``val_macro_f1`` their means.
    """
    out: dict[str, float] = {}
    for t, (task, sl) in enumerate(zip(tasks, task_slices(tasks), strict=True)):
        labelled = labels[:, t] != MISSING
        probs = F.softmax(torch.from_numpy(logits[labelled, sl]).double(), dim=1).numpy()
        metrics = classification_metrics(probs, labels[labelled, t], len(task.classes))
        out.update({f"val_{task.name}_{k[4:]}": v for k, v in metrics.items()})
    for key in ("loss", "accuracy", "macro_f1"):
        values = [out[f"val_{t.name}_{key}"] for t in tasks]
        out[f"val_{key}"] = float(np.sum(values) if key == "loss" else np.mean(values))
    return out


def precision_flips(
    model: nn.Module,
    loader: Any,
    device: torch.device,
    precision: Precision,
    tasks: list[TaskSpec],
    channels_last: bool = False,
) -> tuple[int, int]:
    """Val answers (top class per task) that differ between the training precision and fp32.

    The best epoch is picked on val figures computed at the training precision, while the
    exported graph runs the same weights in fp32. Where the two arithmetics answer many photos
    differently, those figures do not describe the model that is deployed. Returns (differing,
    answers), summed over ranks.
    """
    low, _ = predict_logits(model, loader, device, precision, channels_last)
    full, _ = predict_logits(model, loader, device, Precision(None, None), channels_last)
    differ = sum(
        int((low[:, s].argmax(1) != full[:, s].argmax(1)).sum()) for s in task_slices(tasks)
    )
    counts = gather_lists([(differ, len(low) * len(tasks))])
    return sum(d for d, _ in counts), sum(n for _, n in counts)


def evaluate(
    model: nn.Module, loader: Any, ctx: StepContext, tasks: list[TaskSpec]
) -> dict[str, float]:
    """Metrics over the whole validation set: each rank predicts its shard, then all gather."""
    logits, labels = predict_logits(model, loader, ctx.device, ctx.precision, ctx.channels_last)
    rows = gather_lists(list(zip(logits.tolist(), labels.tolist(), strict=True)))
    all_logits = np.array([r[0] for r in rows], dtype=np.float64)
    all_labels = np.array([r[1] for r in rows], dtype=np.int64)
    if len(tasks) > 1:
        return task_metrics(all_logits, all_labels, tasks)
    probs = F.softmax(torch.from_numpy(all_logits), dim=1).numpy()
    return classification_metrics(probs, all_labels, len(tasks[0].classes))
