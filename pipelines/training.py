"""The training pipeline: ingest -> split -> train -> evaluate -> threshold -> export -> register.

Pipeline inputs: ``params`` (the whole params.yaml as text; the stages read their sections from
it, exactly as `dvc repro` does), ``data_source`` (overrides data.source) and ``data_version``
(the DVC revision or md5 of the data: it is an input of ingest, so KFP's cache key changes when
the data does, kubeflow/website#1875). Where tasks run (images, GPU, node pool, /dev/shm,
requests) comes from the ``kfp`` section at compile time; kfp-kubernetes puts the MLflow
ConfigMap and Secret into every task's environment. Settings for the platform are ignored by
the local runner.
"""

# no `from __future__ import annotations` here: KFP reads the pipeline signature's real types

from typing import Any

from kfp import dsl, kubernetes

import components
from carinspect.config import KfpConfig, Params

PIPELINE_FILE = "pipelines/training_pipeline.yaml"


def _platform(task: Any, kfp: KfpConfig) -> None:
    """MLflow wiring and requests for a CPU task."""
    kubernetes.use_config_map_as_env(
        task, kfp.mlflow_config_map, {"MLFLOW_TRACKING_URI": "MLFLOW_TRACKING_URI"}
    )
    kubernetes.use_secret_as_env(
        task,
        kfp.mlflow_secret,
        {"MLFLOW_TRACKING_USERNAME": "MLFLOW_TRACKING_USERNAME",
         "MLFLOW_TRACKING_PASSWORD": "MLFLOW_TRACKING_PASSWORD"},
        optional=True,
    )  # fmt: skip
    task.set_env_variable("NO_ALBUMENTATIONS_UPDATE", "1")
    task.set_cpu_request(kfp.cpu).set_cpu_limit(kfp.cpu)
    task.set_memory_request(kfp.memory).set_memory_limit(kfp.memory)


def _gpu_pool(task: Any, kfp: KfpConfig) -> None:
    """The train task: GPUs, the GPU node pool, /dev/shm, its own requests."""
    t = kfp.train
    _platform(task, kfp)
    task.set_cpu_request(t.cpu).set_cpu_limit(t.cpu)
    task.set_memory_request(t.memory).set_memory_limit(t.memory)
    if t.gpus:
        task.set_accelerator_type(t.accelerator).set_accelerator_limit(t.gpus)
    for key, value in t.node_selector.items():
        kubernetes.add_node_selector(task, key, value)
    for tol in t.tolerations:
        kubernetes.add_toleration(
            task, key=tol.key, operator=tol.operator, value=tol.value, effect=tol.effect
        )
    kubernetes.empty_dir_mount(
        task, volume_name="dshm", mount_path="/dev/shm", medium="Memory", size_limit=t.shm_size
    )
    if t.nodes > 1:
        kubernetes.mount_pvc(task, pvc_name=t.workspace_pvc, mount_path="/workspace")


def build(cfg: Params, params_text: str) -> Any:
    """The pipeline function for ``cfg`` (params.yaml parsed) whose default params are ``params_text``."""
    kfp = cfg.kfp
    comp = components.build(kfp.image, kfp.train.image)

    @dsl.pipeline(  # type: ignore[untyped-decorator]
        name=kfp.pipeline_name,
        description="carinspect: labelled vehicle photos to a registered image classifier",
    )
    def training(
        data_version: str,
        params: str = params_text,
        data_source: str = cfg.data.source,
    ) -> str:
        ingest = comp.ingest(params=params, data_source=data_source, data_version=data_version)
        split = comp.split(params=params, data=ingest.outputs["data"])
        train = comp.train(
            params=params,
            data=ingest.outputs["data"],
            splits=split.outputs["splits"],
            nproc=max(kfp.train.gpus, 1),
            kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        )
        evaluate = comp.evaluate(
            params=params,
            model=train.outputs["model"],
            data=ingest.outputs["data"],
            splits=split.outputs["splits"],
        )
        threshold = comp.threshold(
            params=params, model=train.outputs["model"], evaluation=evaluate.outputs["evaluation"]
        )
        export = comp.export(
            params=params,
            model=train.outputs["model"],
            evaluation=evaluate.outputs["evaluation"],
            operating_point=threshold.outputs["operating_point"],
            data=ingest.outputs["data"],
            splits=split.outputs["splits"],
        )
        register = comp.register(
            params=params,
            model=train.outputs["model"],
            evaluation=evaluate.outputs["evaluation"],
            onnx_model=export.outputs["onnx_model"],
            kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        )
        for task in (ingest, split, evaluate, threshold, export, register):
            _platform(task, kfp)
        _gpu_pool(train, kfp)
        register.set_caching_options(False)  # a new version every run, even with equal inputs
        return register.outputs["Output"]  # type: ignore[no-any-return]

    return training
