"""The sweep pipeline: ingest -> split -> N trials in parallel -> the best -> evaluate ... register.

``sample_trials`` draws ``tune.trials`` configurations from ``tune.space`` up front (seeded), a
``dsl.ParallelFor`` trains one per item on the GPU node pool (the same task settings as the
training pipeline's train task), ``pick_best`` keeps the trial whose history is best on
``tune.objective``, and evaluate, threshold, export and register continue with it. Trials in
parallel cannot report to one pruner, so nothing is pruned here: for an adaptive search with
pruning on one node use `carinspect tune` (Katib would add adaptive parallel search, at the
price of a cluster operator and its own trial CRDs; a ParallelFor needs nothing beyond KFP).
"""

# no `from __future__ import annotations` here: KFP reads the pipeline signature's real types

from typing import Any

from kfp import dsl, kubernetes

import components
from carinspect import kfp_glue
from carinspect.config import Params
from pipelines.training import _gpu_pool, _platform, prepare, release

SWEEP_FILE = "pipelines/sweep_pipeline.yaml"


def build_sweep(cfg: Params) -> Any:
    """The sweep pipeline function for ``cfg``: its sections are the defaults."""
    kfp = cfg.kfp
    comp = components.build(kfp.image, kfp.train.image)
    d = kfp_glue.section_texts(cfg, sweep=True)

    @dsl.pipeline(  # type: ignore[untyped-decorator]
        name=f"{kfp.pipeline_name}-sweep",
        description="carinspect: a hyper-parameter sweep, then the best trial to the registry",
    )
    def sweep(
        data_version: str,
        data_source: str = cfg.data.source,
        data_task: str = kfp_glue.task_text(cfg.data.task),
        data_format: str = cfg.data.format,
        data_shards: str = cfg.data.shards,
        coco_tasks_cfg: str = d["coco_tasks_cfg"],
        demo_cfg: str = d["demo_cfg"],
        ingest_cfg: str = d["ingest_cfg"],
        split_cfg: str = d["split_cfg"],
        model_cfg: str = d["model_cfg"],
        train_cfg: str = d["train_cfg"],
        mlflow_cfg: str = d["mlflow_cfg"],
        tune_cfg: str = d["tune_cfg"],
        evaluate_cfg: str = d["evaluate_cfg"],
        threshold_cfg: str = d["threshold_cfg"],
        export_cfg: str = d["export_cfg"],
        register_cfg: str = d["register_cfg"],
    ) -> str:
        ingest, split = prepare(
            comp, data_source, data_version, data_task, data_format, data_shards, coco_tasks_cfg,
            demo_cfg, ingest_cfg, split_cfg,
        )  # fmt: skip
        sample = comp.sample_trials(
            tune_cfg=tune_cfg, model_cfg=model_cfg, train_cfg=train_cfg, mlflow_cfg=mlflow_cfg
        )
        with dsl.ParallelFor(sample.output) as trial:
            train = comp.train(
                model_cfg=trial.model_cfg,
                train_cfg=trial.train_cfg,
                mlflow_cfg=mlflow_cfg,
                data=ingest.outputs["data"],
                splits=split.outputs["splits"],
                nproc=max(kfp.train.gpus, 1),
                cluster="",
                parent_run_id=trial.parent_run_id,
            )
            _gpu_pool(train, kfp)
            kubernetes.use_field_path_as_env(
                train, "KFP_RUN_ID", "metadata.labels['pipeline/runid']"
            )
        best = comp.pick_best(tune_cfg=tune_cfg, trials=dsl.Collected(train.outputs["model"]))
        model = best.outputs["best"]
        evaluate, threshold, export, register = release(
            comp, model, ingest, split, evaluate_cfg, threshold_cfg, export_cfg, register_cfg
        )
        for task in (ingest, split, sample, best, evaluate, threshold, export, register):
            _platform(task, kfp)
        sample.set_caching_options(False)  # a new parent MLflow run for every sweep
        return register.outputs["Output"]  # type: ignore[no-any-return]

    return sweep
