"""The training pipeline: ingest -> split -> train -> evaluate -> threshold -> export -> register.

Pipeline inputs: one per params.yaml section (``train_cfg``, ``export_cfg``, ...: the section as
JSON, defaulting to params.yaml's at compile time), ``data_source`` (overrides data.source),
``data_task`` (data.task: the column of a CSV manifest with a column per task, or several
separated by commas to train them together; empty: unset), ``data_format`` and ``data_shards``
(data.format and data.shards: shards to an s3:// prefix, which later tasks stream from) and
``data_version`` (the DVC revision or md5 of the data: it is an input of ingest, so KFP's cache
key changes when the data does, kubeflow/website#1875). Each task gets only the sections its
stage reads, as `dvc repro` tracks them (dvc.yaml ``params:``), so a change to ``export.opset``
re-runs export and register, not ingest or train. Nothing run-unique is an input of a cached
task: the train task reads the run id from its pod's label. Where tasks run (images, GPU, node
pool, /dev/shm, requests) comes from the ``kfp`` section at compile time; kfp-kubernetes puts
the MLflow ConfigMap and Secret into every task's environment. Settings for the platform are
ignored by the local runner.
"""

from __future__ import annotations

from typing import Any

from kfp import dsl, kubernetes

import components
from carinspect.config import DATA_SECRET_KEYS, KfpConfig, Params
from pipelines.signature import call, parameters, pipeline

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
    kubernetes.use_secret_as_env(
        task, kfp.data_secret, {k: k for k in DATA_SECRET_KEYS}, optional=True
    )  # sharded data in S3: ingest writes it, train, evaluate and export read it
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
    if t.nodes > 1 and not t.workspace_uri:  # an S3 workspace needs no shared volume
        kubernetes.mount_pvc(task, pvc_name=t.workspace_pvc, mount_path="/workspace")


def build(cfg: Params) -> Any:
    """The pipeline function for ``cfg`` (params.yaml parsed): its sections are the defaults."""
    kfp = cfg.kfp
    comp = components.build(kfp.image, kfp.train.image)
    # multi-node training needs the cluster settings at run time; single-node training does not,
    # so they are not part of its cache key
    cluster = kfp.model_dump_json() if kfp.train.nodes > 1 else ""

    def training(inputs: dict[str, Any]) -> Any:
        produced: dict[str, Any] = {}
        ingest, split = prepare(comp, inputs, produced)
        train = call(comp, "train", inputs, produced, nproc=max(kfp.train.gpus, 1), cluster=cluster)
        evaluate, threshold, export, register = release(comp, inputs, produced)
        for task in (ingest, split, evaluate, threshold, export, register):
            _platform(task, kfp)
        _gpu_pool(train, kfp)
        # the run id for the training run's lineage tags, from the pod's label: not an input
        kubernetes.use_field_path_as_env(train, "KFP_RUN_ID", "metadata.labels['pipeline/runid']")
        return register.outputs["Output"]

    return pipeline(
        kfp.pipeline_name,
        "carinspect: labelled vehicle photos to a registered image classifier",
        parameters(cfg),
        training,
    )


def release(
    comp: Any, inputs: dict[str, Any], produced: dict[str, Any]
) -> tuple[Any, Any, Any, Any]:
    """Evaluate, threshold, export and register ``produced["train"]`` (a training or the best)."""
    evaluate = call(comp, "evaluate", inputs, produced)
    threshold = call(comp, "threshold", inputs, produced)
    export = call(comp, "export", inputs, produced)
    register = call(
        comp, "register", inputs, produced,
        kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,  # caching is off for register
    )  # fmt: skip
    register.set_caching_options(False)  # a new version every run, even with equal inputs
    return evaluate, threshold, export, register


def prepare(comp: Any, inputs: dict[str, Any], produced: dict[str, Any]) -> tuple[Any, Any]:
    """Ingest and split: the data every pipeline trains on (their artifacts into ``produced``)."""
    return call(comp, "ingest", inputs, produced), call(comp, "split", inputs, produced)
