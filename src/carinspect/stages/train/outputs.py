"""What train leaves behind: the MLflow run it opens and the files later stages read."""

from __future__ import annotations

import csv
import io
import json
import logging
from typing import Any

from carinspect.contracts.cards import RunRef
from carinspect.contracts.folders import IngestDir, SplitDir, TrainDir
from carinspect.contracts.tasks import TaskSpec
from carinspect.io import write_json_atomic, write_text_atomic
from carinspect.modeling.checkpoint import load_checkpoint, weights_digest
from carinspect.stages.train.inputs import TrainInputs, TrainResult, describe
from carinspect.tracking import runs
from carinspect.tracking.lineage import lineage_tags
from carinspect.training import distributed as dist_utils
from carinspect.training.loop import Precision

logger = logging.getLogger(__package__)


def open_run(
    inputs: TrainInputs,
    config: dict[str, Any],
    tasks: list[TaskSpec],
    precision: Precision,
    info: dist_utils.DistInfo,
    run_id: str | None,
) -> str:
    """Start (or, resuming, reopen) the MLflow run; a new one gets its params, tags and reports."""
    new = run_id is None
    run_id = runs.start_run(inputs.settings, inputs.mlflow, run_id, inputs.parent_run_id)
    if new:
        runs.log_params({**_upstream_params(inputs), **config})
        tags = lineage_tags(inputs.ingest_dir, inputs.settings)
        tags.update(
            {
                "classes": ",".join(tasks[0].classes) if len(tasks) == 1 else "",
                "tasks": describe(tasks),
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


def write_outputs(
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
