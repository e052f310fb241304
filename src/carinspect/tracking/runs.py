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


def start_run(settings: Settings, cfg: MlflowConfig | None, run_id: str | None = None) -> str:
    """Open a new run in ``cfg.experiment`` (or reopen ``run_id``) and return its id."""
    import mlflow

    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    if run_id is None:
        if cfg is None:
            raise ValueError("a new run needs the mlflow section of params")
        mlflow.set_experiment(cfg.experiment)
        run = mlflow.start_run(run_name=cfg.run_name)
    else:
        run = reopen_run(run_id)
    logger.info("MLflow run %s at %s", run.info.run_id, settings.mlflow_tracking_uri)
    return str(run.info.run_id)


def read_run_id(run_json: Path | None) -> str | None:
    """The MLflow run id train recorded in ``run.json``, or None when there is no such file."""
    if run_json is None or not Path(run_json).is_file():
        return None
    return str(json.loads(Path(run_json).read_text())["run_id"])


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


def log_params(params: Mapping[str, Any]) -> None:
    """Log nested params flattened (long values are cut to MLflow's limit)."""
    import mlflow

    flat = {k: v[:6000] for k, v in flatten(params).items()}
    items = list(flat.items())
    for i in range(0, len(items), 100):
        mlflow.log_params(dict(items[i : i + 100]))


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
) -> None:
    """Add a later stage's figures (numeric leaves, named ``prefix...``) and ``folder`` to a run."""
    import mlflow

    start_run(settings, None, run_id)
    try:
        log_metrics(numeric_leaves(metrics, prefix), step=None)
        if folder is not None:
            mlflow.log_artifacts(str(folder), artifact_path=artifact_path)
    finally:
        end_run()


def end_run(status: str = "FINISHED") -> None:
    """Close the active run."""
    import mlflow

    mlflow.end_run(status=status)
