"""train as a KFP component: DDP on the pod's GPUs, or a TrainJob across nodes."""

from kfp.dsl import Dataset, Input, Metrics, Model, Output


def train(
    params: str,
    data: Input[Dataset],
    splits: Input[Dataset],
    nproc: int,
    kfp_run_id: str,
    model: Output[Model],
    metrics: Output[Metrics],
) -> str:
    """Train (one process per GPU on this pod; kfp.train.nodes > 1: a Kubeflow TrainJob).

    Returns the MLflow run id.
    """
    from pathlib import Path

    from carinspect import kfp_glue
    from carinspect.config import Settings
    from carinspect.stages import train as stage

    kfp_glue.set_run_env(kfp_run_id)
    p = kfp_glue.load_params(params)
    out = Path(model.path)
    if p.kfp.train.nodes > 1:
        from carinspect.training.trainjob import train_on_nodes

        train_on_nodes(p, params, Path(data.path), Path(splits.path), out, kfp_run_id)
    else:
        stage.run(
            p.model, p.train, p.mlflow, Settings(), Path(data.path),
            Path(splits.path) / "splits.csv", out, nproc=max(nproc, 1),
        )  # fmt: skip
    kfp_glue.log_metrics(metrics, out / "metrics.json")
    run_id = kfp_glue.run_id_of(out)
    model.metadata.update({"mlflow_run_id": run_id, "framework": "timm", "name": p.model.name})
    return run_id
