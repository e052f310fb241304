"""pick_best as a KFP component: the sweep's best trial, by the objective in its history."""

from kfp.dsl import Input, Model, Output


def pick_best(tune_cfg: str, trials: Input[list[Model]], best: Output[Model]) -> str:
    """Copy the best trial's training output to ``best``; returns its MLflow run id."""
    import shutil
    from pathlib import Path

    from mlflow.tracking import MlflowClient

    from carinspect.config import Settings
    from carinspect.stages.tune import best_trial_dir, finish_parent_run
    from components import glue

    cfg = glue.params_from_inputs({"tune_cfg": tune_cfg}).tune
    folders = [Path(t.path) for t in trials]
    index, value = best_trial_dir(cfg.objective, cfg.direction == "maximize", folders)
    shutil.copytree(folders[index], best.path, dirs_exist_ok=True)
    run_id = glue.run_id_of(Path(best.path))
    settings = Settings()
    parent = (
        MlflowClient(settings.mlflow_tracking_uri)
        .get_run(run_id)
        .data.tags.get("mlflow.parentRunId")
    )
    if parent:  # the sweep's run, opened by sample_trials
        finish_parent_run(settings, parent, cfg.objective, value, run_id)
    best.metadata.update(
        {"mlflow_run_id": run_id, "trial": index, cfg.objective: value, "trials": len(folders)}
    )
    return run_id
