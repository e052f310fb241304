"""train: a timm classifier on the ingest cache, DDP-ready, resumable, tracked in MLflow.

Output folder ``out``: ``last.pt`` and ``best.pt`` (model, optimizer, scheduler, scaler, EMA,
sampler and early-stopping state, RNG states, resolved config, class names, preprocessing spec,
MLflow run id; several tasks: ``tasks`` and the loss's learned weights), ``metrics.json`` (the best epoch, for ``dvc metrics``), ``history.csv`` (one row
per epoch, for ``dvc plots``) and ``run.json`` (the MLflow run later stages append to).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from carinspect.config import MlflowConfig, ModelConfig, Settings, TrainConfig
from carinspect.contracts.cards import RunRef
from carinspect.contracts.folders import IngestDir, SplitDir, TrainDir
from carinspect.contracts.preprocess import PreprocessSpec
from carinspect.contracts.tasks import (
    MISSING,
    TaskSpec,
    num_outputs,
    task_slices,
    tasks_of_checkpoint,
)
from carinspect.data.augment import build_augment
from carinspect.data.dataset import (
    ImageDataset,
    Sample,
    load_task_split,
    loader_for,
    sample_labels,
    split_tasks,
)
from carinspect.data.samplers import EpochTagged, ShardedEpochSampler, shard
from carinspect.data.store import ShardError, ShardStore, open_store
from carinspect.data.streaming import ShardStream, stream_loader
from carinspect.errors import InputError
from carinspect.io import write_json_atomic, write_text_atomic
from carinspect.logs import configure_logging
from carinspect.modeling.checkpoint import (
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
    weights_digest,
)
from carinspect.modeling.factory import build_model, check_model_name
from carinspect.modeling.losses import MultiTaskLoss, build_task_loss
from carinspect.tracking import runs
from carinspect.tracking.lifecycle import ended_on_failure
from carinspect.tracking.lineage import lineage_tags
from carinspect.training import distributed as dist_utils
from carinspect.training.loop import (
    EarlyStopping,
    Precision,
    StepContext,
    cosine_with_warmup,
    evaluate,
    train_one_epoch,
)
from carinspect.training.resume import data_digest, resumable

logger = logging.getLogger(__name__)


class TrainError(InputError):
    """Training cannot start with these inputs."""


@dataclass(frozen=True)
class TrainInputs:
    """Everything a training process needs; picklable, so it can cross to spawned DDP workers."""

    model: ModelConfig
    train: TrainConfig
    mlflow: MlflowConfig
    settings: Settings
    ingest_dir: Path
    splits: Path
    out: Path
    resume: bool = False
    stop_after: int | None = None
    parent_run_id: str | None = None  # a sweep's run: this one is nested under it
    stop_after_steps: int | None = None


# called on rank 0 after each epoch with (epoch, that epoch's figures); True stops training
EpochHook = Callable[[int, dict[str, float]], bool]


@dataclass(frozen=True)
class TrainResult:
    """What the stage produced."""

    out: Path
    best: Path
    last: Path
    run_id: str
    best_epoch: int
    epochs_run: int
    metrics: dict[str, float]
    history: tuple[dict[str, float], ...] = ()
    stopped_by_hook: bool = False  # a sweep pruned it
    weights_sha256: str = ""  # of the best checkpoint's weights (rank 0's result only)


def run(
    model: ModelConfig,
    train: TrainConfig,
    mlflow: MlflowConfig,
    settings: Settings,
    ingest_dir: Path,
    splits: Path,
    out: Path,
    resume: bool | None = False,
    stop_after: int | None = None,
    nproc: int | None = None,
    parent_run_id: str | None = None,
    on_epoch: EpochHook | None = None,
    stop_after_steps: int | None = None,
) -> TrainResult:
    """Train, in ``nproc`` processes (default ``train.nproc``) when not already under torchrun.

    ``stop_after`` ends this invocation after that many epochs (a time-boxed or preemptible job),
    ``stop_after_steps`` after that many optimizer steps, inside an epoch if need be (last.pt
    then holds the place); ``resume`` continues from ``out/last.pt`` (None: when that checkpoint
    is of this training, unfinished: see :mod:`carinspect.training.resume`). ``parent_run_id`` nests
    the MLflow run under a sweep's; ``on_epoch`` sees each epoch's figures and may stop
    training (a pruned trial). A hook cannot cross to spawned processes, so it needs a single
    process.
    """
    if resume is None:
        resume, why = resumable(
            TrainDir(out).last,
            _config(model, train, mlflow),
            data_digest(Path(ingest_dir), Path(splits)) if Path(splits).is_file() else "",
            settings.mlflow_tracking_uri,
        )
        if resume:
            logger.info("resuming: %s (--fresh starts over)", why)
        elif TrainDir(out).last.is_file():
            logger.info("training from the start: %s", why)
    inputs = TrainInputs(
        model,
        train,
        mlflow,
        settings,
        Path(ingest_dir),
        Path(splits),
        Path(out),
        resume,
        stop_after,
        parent_run_id,
        stop_after_steps,
    )
    nproc = nproc or train.nproc
    under_torchrun = dist_utils.env_info().distributed
    if on_epoch is not None and (nproc > 1 or under_torchrun):
        raise TrainError("an epoch hook (a sweep's pruning) needs one training process: nproc 1")
    _check_inputs(inputs, dist_utils.env_info().world_size if under_torchrun else nproc)
    if nproc > 1 and not under_torchrun:
        logger.info("launching %d training processes", nproc)
        level = logging.getLogger().getEffectiveLevel()
        result: TrainResult = dist_utils.launch(nproc, _spawned_process, inputs, level)
        return result
    return _train_process(inputs, on_epoch)


def _spawned_process(inputs: TrainInputs, log_level: int) -> TrainResult:
    """Entry of a worker the launcher spawned: a fresh interpreter, so logging starts unset.

    Without this, rank 0's per-epoch lines go to Python's last-resort handler, which drops INFO.
    """
    configure_logging(level=log_level)
    return _train_process(inputs)


def _check_inputs(inputs: TrainInputs, world: int) -> None:
    """Fail before any process starts, with a message naming the input."""
    if not inputs.splits.is_file():
        raise TrainError(f"split file {inputs.splits} not found (run the split stage first)")
    ingest = IngestDir(inputs.ingest_dir)
    ingest.require(ingest.manifest)
    check_model_name(inputs.model.name)
    build_augment(inputs.train.augment)
    tasks = _tasks(inputs)
    train = load_task_split(inputs.splits, inputs.ingest_dir, "train", tasks)
    val = load_task_split(inputs.splits, inputs.ingest_dir, "val", tasks)
    _sampler_task(inputs.train, tasks)
    build_task_loss(inputs.train, tasks, [[0] for _ in tasks])  # refuses bad task weights
    if len(train) < inputs.train.batch_size * world:
        raise TrainError(
            f"train.batch_size {inputs.train.batch_size} x {world} process(es) is larger than the "
            f"{len(train)} training images: lower train.batch_size"
        )
    if not val:
        raise TrainError(f"{inputs.splits}: the val split is empty; early stopping needs it")
    if inputs.resume and not TrainDir(inputs.out).last.is_file():
        raise TrainError(f"--resume: {TrainDir(inputs.out).last} not found")
    # every shard there, the size and checksum the index records, the bucket taking our
    # credentials: a broken dataset stops training here, not an epoch in
    try:
        open_store(inputs.ingest_dir).verify()
    except ShardError as err:
        raise TrainError(str(err)) from None


def _tasks(inputs: TrainInputs) -> list[TaskSpec]:
    """The tasks of splits.csv; a single task is named as ingest's report names it."""
    report = IngestDir(inputs.ingest_dir).report
    name = "label"
    if report.is_file():
        name = str(json.loads(report.read_text()).get("task") or name)
    return split_tasks(inputs.splits, name)


def _sampler_task(cfg: TrainConfig, tasks: list[TaskSpec]) -> int:
    """Index of the task whose classes the sampler balances."""
    names = [t.name for t in tasks]
    if cfg.sampler_task is None:
        return 0
    if cfg.sampler_task not in names:
        raise TrainError(f"train.sampler_task {cfg.sampler_task!r} is not one of the tasks {names}")
    return names.index(cfg.sampler_task)


@dataclass(frozen=True)
class _Loaders:
    """The train and val loaders, and what selects the train draw of an epoch."""

    sampler: ShardedEpochSampler | ShardStream
    train: torch.utils.data.DataLoader[Any]
    val: torch.utils.data.DataLoader[Any]
    tagged: EpochTagged | None = None  # per-file cache: what feeds the train loader indices

    @classmethod
    def build(
        cls,
        inputs: TrainInputs,
        info: dist_utils.DistInfo,
        spec: PreprocessSpec,
        train_samples: list[Sample],
        strata: list[int],
        tasks: list[TaskSpec],
    ) -> _Loaders:
        """Per-file cache: indexed datasets and the sharded sampler; shards: two streams."""
        cfg = inputs.train
        store = open_store(inputs.ingest_dir)
        val_samples = load_task_split(inputs.splits, inputs.ingest_dir, "val", tasks)
        if isinstance(store, ShardStore):
            stream = ShardStream(
                store,
                train_samples,
                spec,
                cfg.batch_size,
                augment=build_augment(cfg.augment),
                seed=cfg.seed,
                rank=info.rank,
                world_size=info.world_size,
                kind=cfg.sampler,
                strata=strata,
                window=cfg.shuffle_window,
            )
            val = ShardStream(
                store,
                val_samples,
                spec,
                cfg.batch_size,
                train=False,
                rank=info.rank,
                world_size=info.world_size,
            )
            logger.info(
                "streaming %d training images from %d shards in %s", len(train_samples),
                len(store.shards), store.uri,
            )  # fmt: skip
            return cls(stream, stream_loader(stream, cfg.workers), stream_loader(val, cfg.workers))
        train_ds = ImageDataset(
            train_samples, spec, build_augment(cfg.augment), seed=cfg.seed, store=store
        )
        val_ds = ImageDataset(val_samples, spec, store=store)
        if cfg.cache_images:
            held = train_ds.preload() + val_ds.preload()
            logger.debug("decoded images held in memory: %.1f MiB", held / 2**20)
        sampler = ShardedEpochSampler(strata, cfg.sampler, info.rank, info.world_size, cfg.seed)
        tagged = EpochTagged(sampler)
        train_loader = loader_for(train_ds, cfg.batch_size, tagged, cfg.workers, drop_last=True)
        val_loader = loader_for(
            val_ds,
            cfg.batch_size,
            shard(len(val_ds), info.rank, info.world_size),
            cfg.workers,
            drop_last=False,
        )
        return cls(sampler, train_loader, val_loader, tagged)

    def start_at(self, step: int, batch_size: int) -> None:
        """Begin the next train pass at batch ``step`` of this rank (a resume inside an epoch)."""
        if isinstance(self.sampler, ShardStream):
            self.sampler.start_at(step)
        elif self.tagged is not None:
            self.tagged.start_at(step * batch_size)


def _resume_step(state: dict[str, Any], world: int, workers: int) -> int:
    """Where inside its epoch a checkpoint resumes: its step, when the stream can be rebuilt.

    The stream of an epoch depends on the world size and the worker count; with others the
    epoch starts over (from its first step, with the weights of the checkpoint).
    """
    step = int(state.get("step") or 0)
    if step and (state.get("world_size") != world or state.get("workers") != workers):
        logger.warning(
            "%d processes x %d workers now, %s x %s at the checkpoint: epoch %d starts over",
            world, workers, state.get("world_size"), state.get("workers"), state["epoch"] + 2,
        )  # fmt: skip
        return 0
    return step


def _seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def _rng_state() -> dict[str, Any]:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _train_process(inputs: TrainInputs, on_epoch: EpochHook | None = None) -> TrainResult:
    info = dist_utils.env_info()
    device = dist_utils.init(info)
    try:
        with ended_on_failure():  # the run ends FAILED (KILLED on SIGTERM), never RUNNING
            return _train(inputs, info, device, on_epoch)
    finally:
        dist_utils.shutdown()


def _config(model: ModelConfig, train: TrainConfig, mlflow: MlflowConfig) -> dict[str, Any]:
    """The resolved sections a checkpoint records and a resume must match."""
    return {"model": model.model_dump(), "train": train.model_dump(), "mlflow": mlflow.model_dump()}


def _unwrap(model: nn.Module) -> nn.Module:
    inner = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    return getattr(inner, "_orig_mod", inner)


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


def _describe(tasks: list[TaskSpec]) -> str:
    """``cleanliness(clean,dirty); damage(damaged,intact)``."""
    return "; ".join(f"{t.name}({','.join(t.classes)})" for t in tasks)


def _ingest_short_side(ingest_dir: Path) -> int | None:
    """The short side ingest stored the images at (None for an older ingest output)."""
    report = IngestDir(ingest_dir).report
    if not report.is_file():
        return None
    value = json.loads(report.read_text()).get("short_side")
    return int(value) if value else None


def _train(
    inputs: TrainInputs,
    info: dist_utils.DistInfo,
    device: torch.device,
    on_epoch: EpochHook | None = None,
) -> TrainResult:
    cfg, mcfg = inputs.train, inputs.model
    _seed_everything(cfg.seed, cfg.deterministic)
    tasks = _tasks(inputs)
    multi = len(tasks) > 1
    spec = PreprocessSpec.from_model(mcfg, _ingest_short_side(inputs.ingest_dir))
    train_samples = load_task_split(inputs.splits, inputs.ingest_dir, "train", tasks)
    by = _sampler_task(cfg, tasks)  # images unlabelled for that task: one more group
    strata = [
        c if c != MISSING else len(tasks[by].classes) for c in sample_labels(train_samples, by)
    ]
    data = _Loaders.build(inputs, info, spec, train_samples, strata, tasks)
    sampler, train_loader, val_loader = data.sampler, data.train, data.val

    model: nn.Module = build_model(mcfg, num_outputs(tasks)).to(device)
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

    loss_fn = build_task_loss(
        cfg, tasks, [sample_labels(train_samples, t) for t in range(len(tasks))]
    )
    loss_fn = loss_fn.to(device)
    optimizer = build_optimizer(_unwrap(model), cfg)
    if list(loss_fn.parameters()):  # learned task weights: no weight decay pulls them to 0
        optimizer.add_param_group({"params": list(loss_fn.parameters()), "weight_decay": 0.0})
    steps_per_epoch = -(-len(train_loader) // cfg.accumulate)
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
    ctx.slices = task_slices(tasks) if multi else None

    start_epoch, start_step, history, run_id = 0, 0, [], None
    if inputs.resume:
        state = load_checkpoint(TrainDir(inputs.out).last)
        if tasks_of_checkpoint(state) != tasks:
            raise CheckpointError(
                f"{TrainDir(inputs.out).last}: trained for {_describe(tasks_of_checkpoint(state))}, "
                f"the data now has {_describe(tasks)}"
            )
        _unwrap(model).load_state_dict(state["model"])
        if state.get("loss"):
            loss_fn.load_state_dict(state["loss"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if precision.scaler is not None and state.get("scaler"):
            precision.scaler.load_state_dict(state["scaler"])
        if ema is not None and state.get("ema"):
            ema.load_state_dict(state["ema"])
        stopper.load_state_dict(state["early_stopping"])
        sampler.load_state_dict(state["sampler"])
        _set_rng_state(state["rng"][min(info.rank, len(state["rng"]) - 1)])
        start_epoch, history, run_id = state["epoch"] + 1, state["history"], state["mlflow_run_id"]
        start_step = _resume_step(state, info.world_size, cfg.workers)
        if start_step:
            ctx.partial = list(state["partial"][info.rank])
        logger.info(
            "resuming from epoch %d of %d%s", start_epoch + 1, cfg.epochs,
            f", step {start_step}" if start_step else "",
        )  # fmt: skip

    config = _config(mcfg, cfg, inputs.mlflow)
    trained_on = data_digest(inputs.ingest_dir, inputs.splits)
    if info.primary:
        run_id = _open_run(inputs, config, tasks, precision, info, run_id)
    run_id = dist_utils.broadcast_object(run_id)

    eval_model = ema.module if ema is not None else model
    epoch = start_epoch - 1
    hooked = preempted = False
    steps_done = 0  # optimizer steps of this invocation

    def snapshot(done_epoch: int, step: int, rngs: list[Any], partial: list[Any]) -> dict[str, Any]:
        """last.pt's content: after epoch ``done_epoch``, and ``step`` batches into the next."""
        return {
            "model": _unwrap(model).state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": precision.scaler.state_dict() if precision.scaler is not None else None,
            "ema": ema.state_dict() if ema is not None else None,
            "early_stopping": stopper.state_dict(),
            "sampler": sampler.state_dict(),
            "rng": rngs,
            "epoch": done_epoch,
            "step": step,  # 0: at an epoch's end
            "partial": partial,  # every rank's running sums of that next epoch
            "workers": cfg.workers,
            "history": history,
            "classes": None if multi else tasks[0].classes,
            "task": tasks[0].name,
            "tasks": [t.model_dump() for t in tasks] if multi else None,
            "loss": loss_fn.state_dict(),
            "preprocess": spec.to_dict(),
            "config": config,
            "data": trained_on,  # manifest and splits, by digest: an automatic resume checks it
            "mlflow_run_id": run_id,
            "world_size": info.world_size,
        }

    def on_step(epoch: int, batches: int, done: int) -> bool:
        """After an optimizer step: a checkpoint when due; True stops (time box reached)."""
        nonlocal steps_done, preempted
        steps_done += 1
        inside = done < batches  # the epoch's last step is saved with its evaluation
        stop = inputs.stop_after_steps is not None and steps_done >= inputs.stop_after_steps
        due = cfg.checkpoint_steps is not None and done % cfg.checkpoint_steps == 0
        if inside and (stop or due):
            rngs = dist_utils.gather_lists([_rng_state()])
            partial = dist_utils.gather_lists([list(ctx.partial)])
            if info.primary:
                save_checkpoint(snapshot(epoch - 1, done, rngs, partial), TrainDir(inputs.out).last)
            dist_utils.barrier()
        preempted = stop and inside
        return preempted

    for calls, epoch in enumerate(range(start_epoch, cfg.epochs), start=1):
        if stopper.should_stop:
            break
        sampler.set_epoch(epoch)
        skip = start_step if epoch == start_epoch else 0
        if skip:
            data.start_at(skip, cfg.batch_size)
        batches = len(train_loader)
        ctx.on_step = lambda done, e=epoch, n=batches: on_step(e, n, done)
        stats = train_one_epoch(model, train_loader, ctx, epoch, start_step=skip)
        if preempted:
            logger.info(
                "stopped after %d steps, in epoch %d/%d: `--resume` continues there",
                steps_done, epoch + 1, cfg.epochs,
            )  # fmt: skip
            break
        stats.update(evaluate(eval_model, val_loader, ctx, tasks))
        if isinstance(loss_fn, MultiTaskLoss):
            stats.update({f"task_weight_{n}": w for n, w in loss_fn.task_weights().items()})
        stats["lr"] = max(g["lr"] for g in optimizer.param_groups)  # the head's
        improved = stopper.update(stats[cfg.early_stopping.monitor], epoch)
        history.append({"epoch": epoch + 1, **{k: round(v, 6) for k, v in stats.items()}})
        rng_states = dist_utils.gather_lists([_rng_state()])
        if info.primary:
            runs.log_metrics(stats, step=epoch + 1)
            state = snapshot(epoch, 0, rng_states, [])
            save_checkpoint(state, TrainDir(inputs.out).last)
            if improved:
                best_state = {**state, "model": _unwrap(eval_model).state_dict()}
                save_checkpoint(best_state, TrainDir(inputs.out).best)
            logger.info(
                "epoch %d/%d: loss %.4f, val acc %.3f, val macro-F1 %.3f, %.0f img/s%s",
                epoch + 1,
                cfg.epochs,
                stats["train_loss"],
                stats["val_accuracy"],
                stats["val_macro_f1"],
                stats["images_per_s"],
                " (best)" if improved else "",
            )
        dist_utils.barrier()
        if on_epoch is not None and on_epoch(epoch + 1, stats):
            hooked = True
            logger.info("epoch %d/%d: stopped by the sweep (pruned)", epoch + 1, cfg.epochs)
            break
        if inputs.stop_after is not None and calls >= inputs.stop_after:
            break
        if inputs.stop_after_steps is not None and steps_done >= inputs.stop_after_steps:
            break

    finished = (epoch + 1 >= cfg.epochs or stopper.should_stop) and not hooked and not preempted
    if not history:  # stopped inside the first epoch: last.pt holds the place, nothing else yet
        if info.primary:
            runs.end_run("KILLED")
        return TrainResult(inputs.out, TrainDir(inputs.out).best, TrainDir(inputs.out).last,
                           str(run_id), 0, 0, {})  # fmt: skip
    best = next(h for h in history if h["epoch"] == stopper.best_epoch + 1)
    result = TrainResult(
        out=inputs.out,
        best=TrainDir(inputs.out).best,
        last=TrainDir(inputs.out).last,
        run_id=str(run_id),
        best_epoch=stopper.best_epoch + 1,
        epochs_run=len(history),
        metrics=best,
        history=tuple(history),
        stopped_by_hook=hooked,
    )
    if info.primary:
        result = replace(result, weights_sha256=_write_outputs(inputs, result, history, finished))
    return result


def _open_run(
    inputs: TrainInputs,
    config: dict[str, Any],
    tasks: list[TaskSpec],
    precision: Precision,
    info: dist_utils.DistInfo,
    run_id: str | None,
) -> str:
    new = run_id is None
    run_id = runs.start_run(inputs.settings, inputs.mlflow, run_id, inputs.parent_run_id)
    if new:
        runs.log_params({**_upstream_params(inputs), **config})
        tags = lineage_tags(inputs.ingest_dir, inputs.settings)
        tags.update(
            {
                "classes": ",".join(tasks[0].classes) if len(tasks) == 1 else "",
                "tasks": _describe(tasks),
                "world_size": str(info.world_size),
                "precision": precision.name,
                "stage": "train",
            }
        )
        runs.set_tags(tags)
        split_dir = SplitDir(inputs.splits.parent)
        runs.log_files(
            [IngestDir(inputs.ingest_dir).report, IngestDir(inputs.ingest_dir).report_md],
            "data/ingest",
        )
        runs.log_files([split_dir.report, split_dir.report_md], "data/split")
        import mlflow

        mlflow.log_dict(config, "config/resolved.json")
    return run_id


def _upstream_params(inputs: TrainInputs) -> dict[str, Any]:
    """The data/ingest/split params recorded in the ingest and split reports (older: none)."""
    found: dict[str, Any] = {}
    for report in (IngestDir(inputs.ingest_dir).report, SplitDir(inputs.splits.parent).report):
        try:
            found.update(json.loads(report.read_text()).get("params", {}))
        except (OSError, ValueError):
            logger.warning("%s: unreadable, its params are not logged on the run", report)
    return found


def _write_outputs(
    inputs: TrainInputs, result: TrainResult, history: list[dict[str, float]], finished: bool
) -> str:
    """history.csv, metrics.json, run.json and the run's last tags; returns the weights digest."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(history[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    write_text_atomic(TrainDir(inputs.out).history, buf.getvalue())
    metrics = {
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        **{k: v for k, v in result.metrics.items() if k != "epoch"},
    }
    write_json_atomic(TrainDir(inputs.out).metrics, metrics)
    import mlflow

    ref = RunRef(
        run_id=result.run_id,
        tracking_uri=inputs.settings.mlflow_tracking_uri,
        experiment=inputs.mlflow.experiment,
        best_checkpoint=str(result.best),
    )
    write_json_atomic(TrainDir(inputs.out).run_ref, ref.model_dump())
    mlflow.log_artifact(str(TrainDir(inputs.out).history), artifact_path="train")
    digest = weights_digest(load_checkpoint(result.best)["model"])
    runs.set_tags({"best_epoch": str(result.best_epoch), "weights.sha256": digest})
    runs.end_run("FINISHED" if finished else "KILLED")
    return digest
