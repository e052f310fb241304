"""The MLflow run a pipeline run appends to: opened by train, reopened by later stages.

Only the primary process calls into this module (mlflow/mlflow#11782 shows what happens when every
DDP rank opens a run).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from carinspect.config import MlflowConfig, Settings
from carinspect.contracts.cards import read_run_ref
from carinspect.errors import InputError
from carinspect.tracking.lifecycle import bound_retries, close_abandoned, owner_tags

logger = logging.getLogger(__name__)


def _leaves(d: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) for every non-mapping value of a nested mapping."""
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            yield from _leaves(v, f"{key}.")
        else:
            yield key, v


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"train": {"lr": 0.1}}`` -> ``{"train.lr": "0.1"}``; lists become JSON."""
    return {
        k: json.dumps(v) if isinstance(v, list | tuple) else str(v) for k, v in _leaves(d, prefix)
    }


def numeric_leaves(d: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a nested mapping as flat metric names (None, bools and text dropped)."""
    return {
        k: float(v)
        for k, v in _leaves(d, prefix)
        if isinstance(v, int | float) and not isinstance(v, bool)
    }


def start_run(
    settings: Settings,
    cfg: MlflowConfig | None,
    run_id: str | None = None,
    parent_run_id: str | None = None,
    stage: str = "train",
) -> str:
    """Open a new run in ``cfg.experiment`` (or reopen ``run_id``) and return its id.

    ``parent_run_id``: the new run is nested under that one (a sweep's trial). The run is tagged
    with this host and process (:mod:`carinspect.tracking.lifecycle`); before a new one is
    opened, the experiment's runs that a killed process of this host left RUNNING are closed.
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    from carinspect.tracking.store import check

    bound_retries()
    check(settings.mlflow_tracking_uri)  # a copied project must not write into the original's
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    if run_id is None:
        if cfg is None:
            raise ValueError("a new run needs the mlflow section of params")
        experiment = mlflow.set_experiment(cfg.experiment)
        close_abandoned(MlflowClient(), experiment.experiment_id, f"carinspect {stage}")
        run = mlflow.start_run(
            run_name=cfg.run_name, parent_run_id=parent_run_id, tags=owner_tags(stage)
        )
    else:
        run = reopen_run(run_id)
        mlflow.set_tags(owner_tags(stage))  # this process holds it now
    logger.info("MLflow run %s at %s", run.info.run_id, settings.mlflow_tracking_uri)
    return str(run.info.run_id)


def read_run_id(run_json: Path | None) -> str | None:
    """The MLflow run id train recorded in ``run.json``, or None when there is no such file."""
    ref = read_run_ref(run_json)
    return None if ref is None else ref.run_id


def check_run(run_json: Path, settings: Settings) -> str:
    """The run id in ``run_json`` once the tracking store is known to hold that run.

    Checked before a stage does its work, so a wrong MLFLOW_TRACKING_URI fails in a second with
    both stores named, not after minutes of evaluation with a traceback.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    bound_retries()
    ref = read_run_ref(run_json)
    if ref is None:
        raise InputError(f"{run_json}: not found (run train first: it records the MLflow run)")
    store = settings.mlflow_tracking_uri
    try:
        MlflowClient(store).get_run(ref.run_id)
    except MlflowException as err:
        if err.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        hint = (
            f"train logged it to {ref.tracking_uri}: set MLFLOW_TRACKING_URI={ref.tracking_uri}"
            if ref.tracking_uri and ref.tracking_uri != store
            else "re-run train (dvc repro --force train) to open a run in this store"
        )
        raise InputError(
            f"{run_json}: MLflow run {ref.run_id} is not in the tracking store {store}; {hint}"
        ) from None
    return ref.run_id


def reopen_run(run_id: str) -> Any:
    """Make ``run_id`` the active run again, whatever experiment this process set before.

    mlflow refuses to resume a run from another experiment than the active one; in a long-lived
    process (tests, a notebook) that is whatever ``set_experiment`` was called with last.
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    experiment_id = MlflowClient().get_run(run_id).info.experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    return mlflow.start_run(run_id=run_id)


def _flat_params(params: Mapping[str, Any]) -> dict[str, str]:
    """Flattened params, long values cut to MLflow's limit."""
    return {k: v[:6000] for k, v in flatten(params).items()}


def _log_flat(flat: Mapping[str, str]) -> None:
    """Log already flat params, 100 per request (MLflow's batch limit)."""
    import mlflow

    items = list(flat.items())
    for i in range(0, len(items), 100):
        mlflow.log_params(dict(items[i : i + 100]))


def log_params(params: Mapping[str, Any]) -> None:
    """Log nested params flattened (long values are cut to MLflow's limit)."""
    _log_flat(_flat_params(params))


def log_stage_params(client: Any, run_id: str, params: Mapping[str, Any]) -> None:
    """Add a later stage's params sections to run ``run_id`` (through ``client``).

    MLflow params cannot change, but DVC re-runs evaluate/threshold/export/register alone when
    only their section changed, appending to the same training run. The first values stay as
    params; a changed value is logged as the tag ``params.latest.<key>`` and warned about.
    """
    from mlflow.entities import Param, RunTag

    logged = client.get_run(run_id).data.params
    flat = _flat_params(params)
    new = [Param(k, v) for k, v in flat.items() if k not in logged]
    for i in range(0, len(new), 100):  # MLflow's batch limit
        client.log_batch(run_id, params=new[i : i + 100])
    changed = {k: v for k, v in flat.items() if k in logged and logged[k] != v}
    if changed:
        logger.warning(
            "run %s was logged with other values of %s (params cannot change): the values used "
            "now are the tags params.latest.*",
            run_id, ", ".join(sorted(changed)),
        )  # fmt: skip
        client.log_batch(run_id, tags=[RunTag(f"params.latest.{k}", v) for k, v in changed.items()])


def log_metrics(metrics: Mapping[str, float], step: int | None) -> None:
    """Log one step of metrics."""
    import mlflow

    mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)


def set_tags(tags: Mapping[str, str]) -> None:
    """Set run tags."""
    import mlflow

    mlflow.set_tags(dict(tags))


def log_files(paths: list[Path], artifact_path: str) -> None:
    """Log the files that exist among ``paths`` under ``artifact_path``."""
    import mlflow

    for p in paths:
        if Path(p).is_file():
            mlflow.log_artifact(str(p), artifact_path=artifact_path)


def append_to_run(
    settings: Settings,
    run_id: str,
    metrics: Mapping[str, Any],
    prefix: str,
    folder: Path | None = None,
    artifact_path: str | None = None,
    params: Mapping[str, Any] | None = None,
) -> None:
    """Add a later stage's figures, params sections and files to a run.

    Figures are the numeric leaves of ``metrics``, named ``prefix...``; ``params`` are sections
    such as ``{"evaluate": {...}}`` (see :func:`log_stage_params`); ``folder`` is logged under
    ``artifact_path``. Logged through the client: the run is not reopened, so its status (the
    training's FINISHED) never changes, and a stage killed here leaves nothing RUNNING.
    """
    import time

    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    from carinspect.tracking.store import check

    bound_retries()
    check(settings.mlflow_tracking_uri)
    client = MlflowClient(settings.mlflow_tracking_uri)
    if params:
        log_stage_params(client, run_id, params)
    now = int(time.time() * 1000)
    figures = [Metric(k, v, now, 0) for k, v in numeric_leaves(metrics, prefix).items()]
    for i in range(0, len(figures), 1000):  # MLflow's batch limit
        client.log_batch(run_id, metrics=figures[i : i + 1000])
    if folder is not None:
        client.log_artifacts(run_id, str(folder), artifact_path=artifact_path)


def end_run(status: str = "FINISHED") -> None:
    """Close the active run."""
    import mlflow

    mlflow.end_run(status=status)
