"""train: a timm classifier on the ingest cache, DDP-ready, resumable, tracked in MLflow.

Output folder ``out``: ``last.pt`` and ``best.pt`` (model, optimizer, scheduler, scaler, EMA,
sampler and early-stopping state, RNG states, resolved config, class names, preprocessing spec,
MLflow run id; several tasks: ``tasks`` and the loss's learned weights: the keys of
:class:`carinspect.contracts.checkpoint.Checkpoint`), ``metrics.json`` (the best epoch, for
``dvc metrics``), ``history.csv`` (one row per epoch, for ``dvc plots``) and ``run.json`` (the
MLflow run later stages append to).

launch.py checks the inputs and starts one process or DDP; fit.py builds and runs the epochs;
state.py owns the checkpoint (save, restore, RNG); loaders.py the data; outputs.py the MLflow
run and the files. Every module logs as ``carinspect.stages.train``.
"""

from carinspect.stages.train.fit import build_optimizer
from carinspect.stages.train.inputs import EpochHook, TrainError, TrainInputs, TrainResult
from carinspect.stages.train.launch import run

__all__ = ["EpochHook", "TrainError", "TrainInputs", "TrainResult", "build_optimizer", "run"]
