"""The kfp section: where the pipeline's tasks run on Kubernetes."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from carinspect.config.base import Section


class Toleration(Section):
    """A Kubernetes toleration (for a tainted GPU node pool)."""

    key: str
    operator: Literal["Equal", "Exists"] = "Exists"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = "NoSchedule"


# the keys of kfp.data_secret that every task (and TrainJob node) gets as environment variables
DATA_SECRET_KEYS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_ENDPOINT_URL",
    "AWS_DEFAULT_REGION",
)


class KfpTrainConfig(Section):
    """Where and how the train task runs on the cluster (set on the task, not the component)."""

    image: str = Field(
        "ghcr.io/carinspect/carinspect-gpu:0.1.0", min_length=1,
        description="the GPU variant of the project image",
    )  # fmt: skip
    accelerator: str = Field("nvidia.com/gpu", min_length=1)
    gpus: int = Field(1, ge=0, le=16, description="per node; DDP runs one process per GPU")
    nodes: int = Field(1, ge=1, le=64, description="> 1: a Kubeflow Trainer TrainJob")
    node_selector: dict[str, str] = Field(
        {"nvidia.com/gpu.present": "true"}, description="labels of the GPU node pool"
    )
    tolerations: list[Toleration] = Field(
        [Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")]
    )
    cpu: str = Field("4", description="CPU request and limit")
    memory: str = Field("16Gi", description="memory request and limit")
    shm_size: str = Field("8Gi", description="/dev/shm (a memory emptyDir) for DataLoader workers")
    trainer_runtime: str = Field("torch-distributed", description="Kubeflow Trainer runtime")
    workspace_pvc: str = Field(
        "carinspect-workspace", description="ReadWriteMany PVC shared by a multi-node TrainJob"
    )
    workspace_uri: str = Field(
        "",
        pattern=r"^(s3://[^/]+.*)?$",
        description="s3://bucket/prefix: a multi-node TrainJob stages its inputs and outputs "
        "there instead of on workspace_pvc, so it needs no ReadWriteMany volume; the data must "
        "then be shards in S3 (data.format: shards, data.shards: s3://...), which every node "
        "streams; credentials from kfp.data_secret",
    )
    namespace: str = Field("kubeflow", min_length=1, description="where the TrainJob is created")


class KfpConfig(Section):
    """The Kubeflow Pipelines run: images, pod settings, MLflow wiring."""

    image: str = Field(
        "ghcr.io/carinspect/carinspect:0.1.0", min_length=1,
        description="the project image (docker/Dockerfile) every task runs in",
    )  # fmt: skip
    pipeline_name: str = "carinspect-training"
    mlflow_config_map: str = Field(
        "carinspect-mlflow", description="ConfigMap with key MLFLOW_TRACKING_URI"
    )
    mlflow_secret: str = Field(
        "carinspect-mlflow", description="Secret with MLFLOW_TRACKING_USERNAME/PASSWORD (optional)"
    )
    data_secret: str = Field(
        "carinspect-data",
        description="Secret with the object store credentials of sharded data in S3: any of "
        f"{', '.join(DATA_SECRET_KEYS)} (optional: without it, boto3's own chain, such as "
        "a service account's IAM role, applies)",
    )
    cpu: str = "2"
    memory: str = "8Gi"
    train: KfpTrainConfig = KfpTrainConfig()
