"""One training process: build the model and what trains it, then the epochs, then the outputs.

The order in which things are built is part of the result: the model's initial weights come from
the seeded RNG after the loaders are made, so builders run in the same order on every rank and in
every run (the determinism and bit-exact resume tests hold this).
"""

from __future__ import annotations

import logging
from dataclasses import replace

import torch
from torch import nn

from carinspect.config import TrainConfig
from carinspect.contracts.folders import TrainDir
from carinspect.contracts.preprocess import PreprocessSpec
from carinspect.contracts.tasks import MISSING, TaskSpec, num_outputs, task_slices
from carinspect.data.loading.dataset import Sample, load_task_split, sample_labels
from carinspect.modeling.checkpoint import load_checkpoint
from carinspect.modeling.factory import build_model
from carinspect.modeling.losses import MultiTaskLoss, build_task_loss
from carinspect.stages.train.inputs import (
    EpochHook,
    TrainError,
    TrainInputs,
    TrainResult,
    ingest_short_side,
    resolved_config,
    sampler_task,
    tasks_of,
)
from carinspect.stages.train.loaders import Loaders
from carinspect.stages.train.outputs import open_run, write_outputs
from carinspect.stages.train.state import Resumed, TrainState, rng_state, seed_everything, unwrap
from carinspect.tracking import runs
from carinspect.training import distributed as dist_utils
from carinspect.training.loop import (
    EarlyStopping,
    Precision,
    StepContext,
    cosine_with_warmup,
    evaluate,
    precision_flips,
    train_one_epoch,
)
from carinspect.training.resume import data_digest

logger = logging.getLogger(__package__)


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer (timm's factory); with ``layer_decay``, earlier layers learn slower.

    timm marks each layer group with ``lr_scale`` for its own schedulers; our scheduler scales
    every group's starting lr, so the scale is applied to that here.
    """
    from timm.optim import create_optimizer_v2  # type: ignore[attr-defined]  # public, re-exported

    optimizer = create_optimizer_v2(
        model,
        opt=cfg.optimizer,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        momentum=cfg.momentum,
        layer_decay=cfg.layer_decay,
    )
    for group in optimizer.param_groups:
        group["lr"] = cfg.lr * group.get("lr_scale", 1.0)
    return optimizer


def fit(
    inputs: TrainInputs,
    info: dist_utils.DistInfo,
    device: torch.device,
    on_epoch: EpochHook | None = None,
) -> TrainResult:
    """Train in this process (one rank of DDP, or alone) and write the outputs on rank 0."""
    cfg = inputs.train
    seed_everything(cfg.seed, cfg.deterministic)
    tasks = tasks_of(inputs)
    spec = PreprocessSpec.from_model(inputs.model, ingest_short_side(inputs.ingest_dir))
    train_samples = load_task_split(inputs.splits, inputs.ingest_dir, "train", tasks)
    by = sampler_task(cfg, tasks)  # images unlabelled for that task: one more group
    strata = [
        c if c != MISSING else len(tasks[by].classes) for c in sample_labels(train_samples, by)
    ]
    data = Loaders.build(inputs, info, spec, train_samples, strata, tasks)
    state, ctx = _build(inputs, info, device, tasks, spec, train_samples, data)
    start = Resumed()
    if inputs.resume:
        start = state.restore(TrainDir(inputs.out).last, info.rank)
        if start.partial is not None:
            ctx.partial = start.partial
        logger.info(
            "resuming from epoch %d of %d%s", start.epoch + 1, cfg.epochs,
            f", step {start.step}" if start.step else "",
        )  # fmt: skip
    if info.primary:
        state.run_id = open_run(inputs, state.config, tasks, ctx.precision, info, state.run_id)
    state.run_id = dist_utils.broadcast_object(state.run_id)
    epochs = _Epochs(inputs, info, state, ctx, data, on_epoch)
    epochs.run(start)
    return epochs.result()


def _build(
    inputs: TrainInputs,
    info: dist_utils.DistInfo,
    device: torch.device,
    tasks: list[TaskSpec],
    spec: PreprocessSpec,
    train_samples: list[Sample],
    data: Loaders,
) -> tuple[TrainState, StepContext]:
    """The model (EMA, DDP, compile), loss, optimizer, schedule and precision, in that order."""
    cfg = inputs.train
    model: nn.Module = build_model(inputs.model, num_outputs(tasks)).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    ema = None
    if cfg.ema:
        from timm.utils.model_ema import ModelEmaV3

        ema = ModelEmaV3(model, decay=cfg.ema_decay, device=device)
    if info.distributed:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if cfg.compile:
        model = torch.compile(model)  # type: ignore[assignment]
    labels = [sample_labels(train_samples, t) for t in range(len(tasks))]
    loss_fn = build_task_loss(cfg, tasks, labels).to(device)
    optimizer = build_optimizer(unwrap(model), cfg)
    if list(loss_fn.parameters()):  # learned task weights: no weight decay pulls them to 0
        optimizer.add_param_group({"params": list(loss_fn.parameters()), "weight_decay": 0.0})
    steps_per_epoch = -(-len(data.train) // cfg.accumulate)
    scheduler = cosine_with_warmup(
        optimizer,
        cfg.epochs * steps_per_epoch,
        round(cfg.warmup_epochs * steps_per_epoch),
        cfg.min_lr / cfg.lr,
    )
    precision = Precision.choose(cfg.amp, device)
    stopper = EarlyStopping(cfg.early_stopping)
    ctx = StepContext(
        optimizer, scheduler, loss_fn, precision, device, cfg, info, ema, cfg.channels_last
    )
    ctx.slices = task_slices(tasks) if len(tasks) > 1 else None
    state = TrainState(
        model, ema, optimizer, scheduler, precision, stopper, data.sampler, loss_fn, tasks, spec,
        resolved_config(inputs.model, cfg, inputs.mlflow),
        data_digest(inputs.ingest_dir, inputs.splits), cfg.workers, info.world_size,
    )  # fmt: skip
    return state, ctx


class _Epochs:
    """The epoch loop of one process, and the reasons it may stop early."""

    def __init__(
        self,
        inputs: TrainInputs,
        info: dist_utils.DistInfo,
        state: TrainState,
        ctx: StepContext,
        data: Loaders,
        on_epoch: EpochHook | None,
    ) -> None:
        self.inputs, self.info, self.state, self.ctx, self.data = inputs, info, state, ctx, data
        self.on_epoch = on_epoch
        self.last = TrainDir(inputs.out).last
        self.epoch = -1  # the epoch the loop was last in
        self.steps_done = 0  # optimizer steps of this invocation
        self.hooked = self.preempted = False

    def run(self, start: Resumed) -> None:
        cfg, state = self.inputs.train, self.state
        self.epoch = start.epoch - 1
        for calls, epoch in enumerate(range(start.epoch, cfg.epochs), start=1):
            self.epoch = epoch
            if state.stopper.should_stop:
                break
            state.sampler.set_epoch(epoch)
            skip = start.step if epoch == start.epoch else 0
            if skip:
                self.data.start_at(skip, cfg.batch_size)
            batches = len(self.data.train)
            self.ctx.on_step = lambda done, e=epoch, n=batches: self._on_step(e, n, done)
            stats = train_one_epoch(state.model, self.data.train, self.ctx, epoch, start_step=skip)
            if self.preempted:
                logger.info(
                    "stopped after %d steps, in epoch %d/%d: `--resume` continues there",
                    self.steps_done, epoch + 1, cfg.epochs,
                )  # fmt: skip
                break
            self._end_epoch(epoch, stats)
            if self.on_epoch is not None and self.on_epoch(epoch + 1, stats):
                self.hooked = True
                logger.info("epoch %d/%d: stopped by the sweep (pruned)", epoch + 1, cfg.epochs)
                break
            if self.inputs.stop_after is not None and calls >= self.inputs.stop_after:
                break
            steps = self.inputs.stop_after_steps
            if steps is not None and self.steps_done >= steps:
                break

    def _on_step(self, epoch: int, batches: int, done: int) -> bool:
        """After an optimizer step: a checkpoint when due; True stops (time box reached)."""
        cfg = self.inputs.train
        self.steps_done += 1
        inside = done < batches  # the epoch's last step is saved with its evaluation
        steps = self.inputs.stop_after_steps
        stop = steps is not None and self.steps_done >= steps
        due = cfg.checkpoint_steps is not None and done % cfg.checkpoint_steps == 0
        if inside and (stop or due):
            rngs = dist_utils.gather_lists([rng_state()])
            partial = dist_utils.gather_lists([list(self.ctx.partial)])
            if self.info.primary:
                self.state.save(self.last, epoch - 1, done, rngs, partial)
            dist_utils.barrier()
        self.preempted = stop and inside
        return self.preempted

    def _end_epoch(self, epoch: int, stats: dict[str, float]) -> None:
        """Evaluate, record the epoch, save last.pt (and best.pt when it improved)."""
        cfg, state = self.inputs.train, self.state
        stats.update(evaluate(state.eval_model, self.data.val, self.ctx, state.tasks))
        if isinstance(state.loss, MultiTaskLoss):
            stats.update({f"task_weight_{n}": w for n, w in state.loss.task_weights().items()})
        stats["lr"] = max(g["lr"] for g in state.optimizer.param_groups)  # the head's
        improved = state.stopper.update(stats[cfg.early_stopping.monitor], epoch)
        state.history.append({"epoch": epoch + 1, **{k: round(v, 6) for k, v in stats.items()}})
        rngs = dist_utils.gather_lists([rng_state()])
        if self.info.primary:
            runs.log_metrics(stats, step=epoch + 1)
            saved = state.save(self.last, epoch, 0, rngs, [])
            if improved:
                state.save_best(TrainDir(self.inputs.out).best, saved)
            logger.info(
                "epoch %d/%d: loss %.4f, val acc %.3f, val macro-F1 %.3f, %.0f img/s%s",
                epoch + 1, cfg.epochs, stats["train_loss"], stats["val_accuracy"],
                stats["val_macro_f1"], stats["images_per_s"], " (best)" if improved else "",
            )  # fmt: skip
        dist_utils.barrier()

    def result(self) -> TrainResult:
        """What this process trained; rank 0 also writes history, metrics and run.json."""
        inputs, state, out = self.inputs, self.state, TrainDir(self.inputs.out)
        stopped = self.hooked or self.preempted
        finished = (
            self.epoch + 1 >= inputs.train.epochs or state.stopper.should_stop
        ) and not stopped
        run_id = str(state.run_id)
        if not state.history:  # stopped inside the first epoch: last.pt holds the place
            if self.info.primary:
                runs.end_run("KILLED")
            return TrainResult(inputs.out, out.best, out.last, run_id, 0, 0, {})
        best_epoch = state.stopper.best_epoch + 1
        result = TrainResult(
            out=inputs.out,
            best=out.best,
            last=out.last,
            run_id=run_id,
            best_epoch=best_epoch,
            epochs_run=len(state.history),
            metrics=next(h for h in state.history if h["epoch"] == best_epoch),
            history=tuple(state.history),
            stopped_by_hook=self.hooked,
        )
        if finished and self.ctx.precision.dtype is not None:
            result = replace(result, metrics={**result.metrics, **self._precision_gate()})
        if self.info.primary:
            digest = write_outputs(inputs, result, state.history, finished)
            result = replace(result, weights_sha256=digest)
        return result

    def _precision_gate(self) -> dict[str, float]:
        """The best checkpoint's val answers at the training precision against fp32.

        Refuses the training (``train.amp_max_flip_rate``) when too many differ: its val
        figures, computed in bf16 or fp16, would not describe the fp32 model that is exported.
        """
        cfg, state = self.inputs.train, self.state
        unwrap(state.eval_model).load_state_dict(
            load_checkpoint(TrainDir(self.inputs.out).best)["model"]
        )
        ctx = self.ctx
        differ, answers = precision_flips(
            state.eval_model,
            self.data.val,
            ctx.device,
            ctx.precision,
            state.tasks,
            ctx.channels_last,
        )
        rate = differ / max(answers, 1)
        name = self.ctx.precision.name
        figures = {"amp_flip_rate": round(rate, 6)}
        if self.info.primary:
            runs.log_metrics(figures, None)
        if rate > cfg.amp_max_flip_rate:
            raise TrainError(
                f"{name} training: {differ} of {answers} val answers of the best checkpoint "
                f"differ between {name} and fp32 arithmetic ({rate:.1%}, limit "
                f"train.amp_max_flip_rate {cfg.amp_max_flip_rate:.1%}): its val figures do not "
                "describe the fp32 model export writes; train with train.amp: false"
            )
        logger.info("%s: %d of %d val answers differ from fp32 (%.1f%%, limit %.1f%%)", name,
                    differ, answers, 100 * rate, 100 * cfg.amp_max_flip_rate)  # fmt: skip
        return figures
