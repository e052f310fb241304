"""The sweep pipeline: ingest -> split -> N trials in parallel -> the best -> evaluate ... register.

``sample_trials`` draws ``tune.trials`` configurations from ``tune.space`` up front (seeded), a
``dsl.ParallelFor`` trains one per item on the GPU node pool (the same task settings as the
training pipeline's train task), ``pick_best`` keeps the trial whose history is best on
``tune.objective``, and evaluate, threshold, export and register continue with it. Trials in
parallel cannot report to one pruner, so nothing is pruned here: for an adaptive search with
pruning on one node use `carinspect tune` (Katib would add adaptive parallel search, at the
price of a cluster operator and its own trial CRDs; a ParallelFor needs nothing beyond KFP).
"""

from __future__ import annotations

from typing import Any

from kfp import dsl, kubernetes

import components
from carinspect.config import Params
from pipelines.signature import parameters, pipeline, stage_inputs, upstream
from pipelines.training import _gpu_pool, _platform, prepare, release

SWEEP_FILE = "pipelines/sweep_pipeline.yaml"


def build_sweep(cfg: Params) -> Any:
    """The sweep pipeline function for ``cfg``: its sections are the defaults."""
    kfp = cfg.kfp
    comp = components.build(kfp.image, kfp.train.image)

    def sweep(inputs: dict[str, Any]) -> Any:
        produced: dict[str, Any] = {}
        ingest, split = prepare(comp, inputs, produced)
        sample = comp.sample_trials(tune_cfg=inputs["tune_cfg"], **stage_inputs(inputs, "train"))
        with dsl.ParallelFor(sample.output) as trial:
            train = comp.train(
                model_cfg=trial.model_cfg,
                train_cfg=trial.train_cfg,
                mlflow_cfg=inputs["mlflow_cfg"],
                **upstream("train", produced),
                nproc=max(kfp.train.gpus, 1),
                cluster="",
                parent_run_id=trial.parent_run_id,
            )
            _gpu_pool(train, kfp)
            kubernetes.use_field_path_as_env(
                train, "KFP_RUN_ID", "metadata.labels['pipeline/runid']"
            )
        best = comp.pick_best(
            tune_cfg=inputs["tune_cfg"], trials=dsl.Collected(train.outputs["model"])
        )
        produced["train"] = best.outputs["best"]  # the best trial's training output
        evaluate, threshold, export, register = release(comp, inputs, produced)
        for task in (ingest, split, sample, best, evaluate, threshold, export, register):
            _platform(task, kfp)
        sample.set_caching_options(False)  # a new parent MLflow run for every sweep
        return register.outputs["Output"]

    return pipeline(
        f"{kfp.pipeline_name}-sweep",
        "carinspect: a hyper-parameter sweep, then the best trial to the registry",
        parameters(cfg, sweep=True),
        sweep,
    )
