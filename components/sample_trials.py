"""sample_trials as a KFP component: the sweep's configurations, drawn before any trial runs."""


def sample_trials(tune_cfg: str, model_cfg: str, train_cfg: str, mlflow_cfg: str) -> list:  # type: ignore[type-arg]
    """``tune.trials`` items of {trial, parent_run_id, values, model_cfg, train_cfg}.

    Trials that run in parallel cannot inform each other, so the sampler draws them all up
    front (seeded: the same inputs give the same trials). The sweep's parent MLflow run is
    opened here, before the trials start, so that they nest under it (and the tracking store
    is created once, not raced by the parallel trials).
    """
    from carinspect.config import Settings
    from carinspect.stages.tune import create_parent_run, sample_configs
    from components import glue

    p = glue.params_from_inputs(
        {"tune_cfg": tune_cfg, "model_cfg": model_cfg, "train_cfg": train_cfg,
         "mlflow_cfg": mlflow_cfg}
    )  # fmt: skip
    return sample_configs(p, create_parent_run(p, Settings()))
