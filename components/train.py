"""train as a KFP component: DDP on the pod's GPUs, or a TrainJob across nodes."""

from kfp.dsl import Dataset, Input, Metrics, Model, Output


def train(
    model_cfg: str,
    train_cfg: str,
    mlflow_cfg: str,
    data: Input[Dataset],
    splits: Input[Dataset],
    nproc: int,
    cluster: str,
    model: Output[Model],
    metrics: Output[Metrics],
    parent_run_id: str = "",
) -> str:
    """Train: one process per GPU on this pod, or a Kubeflow TrainJob when ``cluster`` is set.

    ``cluster`` is the kfp section (JSON) for training across nodes, empty to train here. The
    pipeline run id comes from the pod's environment (KFP_RUN_ID), not from an input, so that
    equal inputs give the same cache key in every run. ``parent_run_id``: a sweep's run, which
    this trial's run nests under. Returns the MLflow run id.
    """
    from pathlib import Path

    from carinspect.config import KfpConfig, Settings
    from carinspect.contracts.folders import SplitDir, TrainDir
    from carinspect.stages import train as stage
    from components import glue

    inputs = {"model_cfg": model_cfg, "train_cfg": train_cfg, "mlflow_cfg": mlflow_cfg}
    p = glue.params_from_inputs(inputs)
    out = Path(model.path)
    if cluster:
        from carinspect.training.trainjob import train_on_nodes

        kfp = KfpConfig.model_validate_json(cluster)
        sections = glue.sections_of(inputs)  # what this task was given, the nodes read
        train_on_nodes(
            p, kfp, Path(data.path), Path(splits.path), out, Settings(), sections=sections
        )
    else:
        stage.run(
            p.model, p.train, p.mlflow, Settings(), Path(data.path),
            SplitDir(splits.path).splits, out, nproc=max(nproc, 1),
            parent_run_id=parent_run_id or None,
        )  # fmt: skip
    glue.log_metrics(metrics, TrainDir(out).metrics)
    run_id = glue.run_id_of(out)
    model.metadata.update({"mlflow_run_id": run_id, "framework": "timm", "name": p.model.name})
    return run_id
