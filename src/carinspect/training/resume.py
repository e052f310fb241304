"""Whether a checkpoint left by a killed or failed train continues this training.

``dvc repro`` after a kill (or after the tracking server came back) runs train again; with
``last.pt`` kept (``persist: true`` in dvc.yaml) the stage picks up where it stopped instead of
starting over, but only when that is the same training: the same model, train and mlflow
params, the same data (manifest and splits, by digest), not finished yet, and its MLflow run
still in the tracking store. Anything else starts from the beginning, saying why.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

from carinspect.contracts.folders import IngestDir
from carinspect.modeling.checkpoint import load_checkpoint
from carinspect.training.loop import EarlyStopping

logger = logging.getLogger(__name__)


def data_digest(ingest_dir: Path, splits: Path) -> str:
    """What the training read: the manifest and the split file, by content."""
    digest = hashlib.sha256()
    for path in (IngestDir(ingest_dir).manifest, Path(splits)):
        digest.update(path.read_bytes())
    return "sha256:" + digest.hexdigest()


def resumable(last: Path, config: dict[str, Any], data: str, tracking_uri: str) -> tuple[bool, str]:
    """Whether ``last`` continues the training of ``config`` on ``data``, and why (not)."""
    if not last.is_file():
        return False, f"no {last}"
    try:
        state = load_checkpoint(last)
    except Exception as err:  # a torn or foreign file is a reason to start over, not to fail
        return False, f"{last} cannot be read ({err})"
    if state.get("config") != config:
        return False, f"{last} was trained with other model/train/mlflow params"
    if state.get("data") != data:
        return False, f"{last} was trained on other data (manifest or splits changed)"
    epochs = int(config["train"]["epochs"])
    stopper = EarlyStopping(_early_stopping(config))
    stopper.load_state_dict(state["early_stopping"])
    if (state["epoch"] + 1 >= epochs and not state.get("step")) or stopper.should_stop:
        return False, f"{last} is of a finished training"
    run_id = state.get("mlflow_run_id")
    if run_id:
        from mlflow.tracking import MlflowClient

        try:
            MlflowClient(tracking_uri).get_run(run_id)
        except Exception as err:
            return False, f"its MLflow run {run_id} is not in {tracking_uri} ({type(err).__name__})"
    where = f"epoch {state['epoch'] + 2}" + (f", step {state['step']}" if state.get("step") else "")
    return True, f"{last} continues at {where} of {epochs} (same params and data)"


def _early_stopping(config: dict[str, Any]) -> Any:
    from carinspect.config import TrainConfig

    return TrainConfig.model_validate(config["train"]).early_stopping
