"""Start a training: check the inputs before any process starts, then one process or DDP."""

from __future__ import annotations

import logging
from pathlib import Path

from carinspect.config import MlflowConfig, ModelConfig, Settings, TrainConfig
from carinspect.contracts.folders import IngestDir, TrainDir
from carinspect.data.loading.augment import build_augment
from carinspect.data.loading.dataset import load_task_split
from carinspect.data.storage.store import ShardError, open_store
from carinspect.logs import configure_logging
from carinspect.modeling.factory import check_model_name
from carinspect.modeling.losses import build_task_loss
from carinspect.stages.train.fit import fit
from carinspect.stages.train.inputs import (
    EpochHook,
    TrainError,
    TrainInputs,
    TrainResult,
    resolved_config,
    sampler_task,
    tasks_of,
)
from carinspect.tracking.lifecycle import ended_on_failure
from carinspect.training import distributed as dist_utils
from carinspect.training.resume import data_digest, resumable

logger = logging.getLogger(__package__)


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
            resolved_config(model, train, mlflow),
            data_digest(Path(ingest_dir), Path(splits)) if Path(splits).is_file() else "",
            settings.mlflow_tracking_uri,
        )
        if resume:
            logger.info("resuming: %s (--fresh starts over)", why)
        elif TrainDir(out).last.is_file():
            logger.info("training from the start: %s", why)
    inputs = TrainInputs(
        model, train, mlflow, settings, Path(ingest_dir), Path(splits), Path(out), resume,
        stop_after, parent_run_id, stop_after_steps,
    )  # fmt: skip
    nproc = nproc or train.nproc
    under_torchrun = dist_utils.env_info().distributed
    if on_epoch is not None and (nproc > 1 or under_torchrun):
        raise TrainError("an epoch hook (a sweep's pruning) needs one training process: nproc 1")
    check_inputs(inputs, dist_utils.env_info().world_size if under_torchrun else nproc)
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


def _train_process(inputs: TrainInputs, on_epoch: EpochHook | None = None) -> TrainResult:
    info = dist_utils.env_info()
    device = dist_utils.init(info)
    try:
        with ended_on_failure():  # the run ends FAILED (KILLED on SIGTERM), never RUNNING
            return fit(inputs, info, device, on_epoch)
    finally:
        dist_utils.shutdown()


def check_inputs(inputs: TrainInputs, world: int) -> None:
    """Fail before any process starts, with a message naming the input."""
    if not inputs.splits.is_file():
        raise TrainError(f"split file {inputs.splits} not found (run the split stage first)")
    ingest = IngestDir(inputs.ingest_dir)
    ingest.require(ingest.manifest)
    check_model_name(inputs.model.name)
    build_augment(inputs.train.augment)
    tasks = tasks_of(inputs)
    train = load_task_split(inputs.splits, inputs.ingest_dir, "train", tasks)
    val = load_task_split(inputs.splits, inputs.ingest_dir, "val", tasks)
    sampler_task(inputs.train, tasks)
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
