"""Typed models of params.yaml: one section per stage, validated strictly at load.

A stage never reads params.yaml itself: the CLI and the KFP components call :func:`load_params`
(or build the section models directly) and pass the section to the stage's ``run``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from carinspect.errors import InputError

SPLIT_NAMES: tuple[str, ...] = ("train", "val", "test")
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"  # the embedded store every command uses by default


class ConfigError(InputError):
    """A params file that cannot be used; the message names the file and the key."""


class _Section(BaseModel):
    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")


DemoClass = Literal["clean", "dirty", "dusty", "muddy"]
_BINARY_DEMO: tuple[DemoClass, ...] = ("clean", "dirty")


class DemoConfig(_Section):
    """The generated demo dataset (``data.source: demo``)."""

    per_class: int = Field(160, ge=4, le=100_000, description="images generated per class")
    seed: int = 0
    broken: bool = Field(True, description="add deliberately broken/duplicate files")
    damaged: float = Field(
        0.35,
        ge=0.0,
        le=1.0,
        description="fraction of cars drawn with scratches and a dent (the damage task)",
    )
    classes: list[DemoClass] = Field(
        default_factory=lambda: list(_BINARY_DEMO),
        min_length=2,
        description="classes to draw: clean/dirty (binary) or a severity scale such as "
        "clean/dusty/muddy (multiclass)",
    )

    @model_validator(mode="after")
    def _distinct_classes(self) -> DemoConfig:
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"data.demo.classes repeats a class: {self.classes}")
        return self


class DataConfig(_Section):
    """Where the labelled images come from.

    ``source`` is one of: ``demo``; a local folder with one subfolder per class; a CSV manifest
    (``path,label[,split][,group]``, or one column per task with ``task`` naming the one to
    train on, or a list of them to train together); a COCO JSON file (``coco_tasks`` maps its
    categories to tasks); ``s3://bucket/prefix`` (one sub-prefix per
    class); ``dvc://<repo>@<rev>#<path>`` (a folder per class inside a DVC/git repo).
    """

    source: str = "demo"
    task: str | list[str] | None = Field(
        None,
        description="CSV manifests with a column per task (path,cleanliness,damage,...): the "
        "column to train on, or a list of columns to train together (one head each); unset: "
        "`label`, or the only task column. COCO with coco_tasks: the task(s); unset: all",
    )
    coco_tasks: dict[str, list[str]] = Field(
        default_factory=dict,
        description="COCO sources: the category names of each task, e.g. {cleanliness: [clean, "
        "dirty], damage: [damaged, intact]}; an image's label for a task is its one category "
        "from that list",
    )
    demo: DemoConfig = DemoConfig()
    feedback: str = Field(
        "",
        description="a feedback dataset folder (`carinspect feedback import` writes its photos/, "
        "one subfolder per class, tracked by photos.dvc): its photos are ingested beside "
        "data.source's; a folder with no photos/ (or empty: none) adds none. params.yaml names "
        "data/feedback, which dvc.yaml's ingest stage depends on",
    )
    feedback_new_classes: bool = Field(
        False, description="take classes that only data.feedback has (reviewers' labels from "
        "another project add classes silently otherwise); false: ingest stops, naming them",
    )  # fmt: skip

    format: Literal["files", "shards"] = Field(
        "files",
        description="how ingest stores the images it keeps: files (one PNG each under "
        "images/) or shards (webdataset tar files with an index, images/shards.json), which "
        "training streams from local disk or S3 with a disjoint share per rank and worker",
    )
    shards: str = Field(
        "",
        description="data.format shards: where the shards go; empty: inside the ingest "
        "output (images/), versioned by DVC with it; s3://bucket/prefix: uploaded there (the "
        "index in images/ names the prefix; add the prefix to dvc.yaml's ingest outs with "
        "cache: false and persist: true to track it)",
    )

    @model_validator(mode="after")
    def _source_not_empty(self) -> DataConfig:
        if not self.source.strip():
            raise ValueError("data.source must not be empty")
        if self.shards and self.format != "shards":
            raise ValueError(
                f"data.shards {self.shards!r} is set but data.format is {self.format!r}"
            )
        if self.shards and not self.shards.startswith("s3://"):
            raise ValueError(
                f"data.shards {self.shards!r}: give an s3://bucket/prefix, or leave it empty "
                "to keep the shards inside the ingest output"
            )
        if self.shards.startswith("s3://") and not self.shards[5:].split("/")[0]:
            raise ValueError(f"data.shards {self.shards!r}: no bucket name")
        if isinstance(self.task, list) and (not self.task or len(set(self.task)) != len(self.task)):
            raise ValueError(f"data.task lists no task or repeats one: {self.task}")
        seen: dict[str, str] = {}
        for name, members in self.coco_tasks.items():
            for category in members:
                if category in seen:
                    raise ValueError(
                        f"data.coco_tasks: category {category!r} is in both {seen[category]!r} "
                        f"and {name!r}"
                    )
                seen[category] = name
            if len(members) < 2:
                raise ValueError(f"data.coco_tasks.{name} needs at least two categories")
        return self


class IngestConfig(_Section):
    """Decoding, validation and the resized image cache."""

    short_side: int = Field(
        128, ge=16, le=4096, description="cache images resized to this short side"
    )
    min_side: int = Field(32, ge=1, description="images with a smaller side are dropped")
    max_pixels: int = Field(
        50_000_000, ge=1, description="decompression-bomb guard: width*height above this is dropped"
    )
    max_bytes: int = Field(50 * 1024 * 1024, ge=1, description="files larger than this are dropped")
    workers: int = Field(2, ge=1, le=64, description="parallel decoders (threads)")
    near_duplicate_distance: int = Field(
        4, ge=0, le=64, description="max Hamming distance of 64-bit perceptual hashes"
    )
    shortcut_auc: float = Field(
        0.8, gt=0.5, le=1.0, description="warn when size/aspect/grayscale alone reach this AUC"
    )
    shortcut_folds: int = Field(5, ge=2, le=20)
    shard_mb: float = Field(
        64, gt=0, le=4096, description="data.format shards: size each shard is filled to (MiB)"
    )
    min_per_class: int = Field(
        3, ge=1, description="a class with fewer usable images is refused before anything is "
        "written (split needs one per train/val/test split: at least as many as it has)",
    )  # fmt: skip


class SplitConfig(_Section):
    """Stratified, group-aware train/val/test split."""

    train: float = Field(0.7, ge=0.0, le=1.0)
    val: float = Field(0.15, ge=0.0, le=1.0)
    test: float = Field(0.15, ge=0.0, le=1.0)
    seed: int = 42
    respect_manifest_split: bool = Field(
        True, description="keep the split column of a CSV manifest when it has one"
    )

    @model_validator(mode="after")
    def _fractions(self) -> SplitConfig:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"split fractions train+val+test must sum to 1, got {total:g}")
        if self.train <= 0:
            raise ValueError("split.train must be greater than 0")
        return self

    def fractions(self) -> dict[str, float]:
        """Fraction per split name, in SPLIT_NAMES order."""
        return {"train": self.train, "val": self.val, "test": self.test}


class ModelConfig(_Section):
    """The network and the input it expects (the preprocessing spec evaluation and serving share)."""

    name: str = Field("resnet10t", description="any timm model name")
    pretrained: bool = Field(False, description="load pretrained weights (hub, or `weights`)")
    weights: str | None = Field(None, description="local weights file used when pretrained")
    img_size: int | None = Field(
        96, ge=16, le=1024, description="input side in pixels; null: the model's pretraining size"
    )
    drop_rate: float = Field(0.0, ge=0.0, lt=1.0)
    drop_path_rate: float = Field(0.0, ge=0.0, lt=1.0)
    resize: Literal["squash", "crop"] = Field(
        "squash", description="squash: whole image to a square; crop: shorter side, centre crop"
    )
    crop_pct: float = Field(0.875, gt=0.0, le=1.0, description="for resize: crop")
    mean: list[float] | None = Field(
        [0.485, 0.456, 0.406], min_length=3, max_length=3, description="null: the model's own"
    )
    std: list[float] | None = Field(
        [0.229, 0.224, 0.225], min_length=3, max_length=3, description="null: the model's own"
    )


class EarlyStoppingConfig(_Section):
    """Stop when a validation metric has not improved for ``patience`` epochs."""

    monitor: Literal["val_macro_f1", "val_accuracy", "val_loss"] = "val_macro_f1"
    patience: int = Field(5, ge=1)
    min_delta: float = Field(0.0, ge=0.0)


def _default_augment() -> list[dict[str, Any]]:
    return [
        {"name": "HorizontalFlip", "p": 0.5},
        {
            "name": "Affine",
            "scale": [0.85, 1.15],
            "translate_percent": [-0.06, 0.06],
            "rotate": [-8, 8],
            "p": 0.7,
        },
        {
            "name": "ColorJitter",
            "brightness": [0.75, 1.25],
            "contrast": [0.75, 1.25],
            "saturation": [0.8, 1.2],
            "hue": [-0.03, 0.03],
            "p": 0.7,
        },
        {"name": "GaussianBlur", "blur_limit": [3, 5], "p": 0.1},
        {"name": "GaussNoise", "std_range": [0.01, 0.05], "p": 0.2},
        {"name": "ImageCompression", "quality_range": [50, 95], "p": 0.3},
    ]


class TrainConfig(_Section):
    """The training loop, imbalance handling and distributed settings."""

    epochs: int = Field(15, ge=1)
    batch_size: int = Field(32, ge=1, description="per process")
    nproc: int = Field(1, ge=1, le=64, description="processes on this node (one per GPU)")
    workers: int = Field(2, ge=0, le=64, description="DataLoader workers per process")
    cache_images: bool = Field(
        True,
        description="decode the training images once, keep them in RAM (per-file cache only: "
        "shards are streamed)",
    )
    checkpoint_steps: int | None = Field(
        None,
        ge=1,
        description="also write last.pt every this many optimizer steps inside an epoch (an "
        "epoch over millions of images survives preemption); --resume continues at that step "
        "with the same stream. null: at the end of each epoch only",
    )
    shuffle_window: int = Field(
        1024,
        ge=1,
        le=1_000_000,
        description="data.format shards: images a DataLoader worker reads together and shuffles "
        "(rounded down to whole batches); the shards themselves are shuffled every epoch",
    )
    seed: int = 42
    deterministic: bool = Field(True, description="deterministic kernels (bit-exact resume on CPU)")
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(2e-3, gt=0.0)
    weight_decay: float = Field(0.05, ge=0.0)
    layer_decay: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="fine-tuning: the head trains at lr, each earlier layer group at this "
        "factor of the next (timm's layer-wise LR decay); null: one lr for all",
    )
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    warmup_epochs: float = Field(1.0, ge=0.0)
    min_lr: float = Field(1e-5, ge=0.0)
    accumulate: int = Field(1, ge=1, description="gradient accumulation steps")
    clip_grad: float | None = Field(1.0, gt=0.0, description="max gradient norm; null: off")
    amp: bool = Field(True, description="mixed precision on CUDA (bf16 if supported); off on CPU")
    channels_last: bool = False
    compile: bool = False
    ema: bool = False
    ema_decay: float = Field(0.998, gt=0.0, lt=1.0)
    sampler: Literal["none", "weighted", "oversample"] = "none"
    sampler_task: str | None = Field(
        None, description="several tasks: the task whose classes the sampler balances (first)"
    )
    class_weights: Literal["auto", "none"] | list[float] = "none"
    loss: Literal["ce", "focal"] = "ce"
    focal_gamma: float = Field(2.0, ge=0.0)
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    task_weighting: Literal["fixed", "uncertainty"] = Field(
        "fixed",
        description="several tasks: fixed (task_weights) or learned homoscedastic-uncertainty "
        "weights (Kendall et al. 2018)",
    )
    task_weights: dict[str, float] = Field(
        default_factory=dict, description="several tasks, fixed weighting: {task: weight}; 1.0"
    )
    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()
    augment: list[dict[str, Any]] = Field(
        default_factory=_default_augment,
        description="albumentations transforms: {name: <class>, <argument>: <value>, ...}",
    )

    @model_validator(mode="after")
    def _augment_named(self) -> TrainConfig:
        for i, spec in enumerate(self.augment):
            if not isinstance(spec.get("name"), str):
                raise ValueError(f"train.augment[{i}] needs a 'name' (an albumentations class)")
        return self


class EvaluateConfig(_Section):
    """Evaluation on val and test, and temperature calibration."""

    batch_size: int = Field(64, ge=1)
    workers: int = Field(2, ge=0, le=64)
    calibrate: bool = Field(True, description="fit a temperature on val; probabilities use it")
    ece_bins: int = Field(15, ge=2, le=100)
    verdict_metric: Literal["accuracy", "balanced_accuracy", "macro_f1"] = Field(
        "balanced_accuracy",
        description="what the verdict compares with always answering the most frequent class",
    )
    bootstrap: int = Field(
        1000, ge=100, le=100_000, description="resamples for the verdict's confidence intervals"
    )
    seed: int = Field(0, description="seed of the verdict's bootstrap resamples")
    temperature_range: list[float] = Field(
        default_factory=lambda: [0.05, 20.0],
        min_length=2,
        max_length=2,
        description="a fitted temperature outside it means calibration collapsed (no signal)",
    )
    small_sample: int = Field(
        30, ge=0, description="fewer test photos than this: a WARNING that figures are rough"
    )

    @model_validator(mode="after")
    def _range_ordered(self) -> EvaluateConfig:
        low, high = self.temperature_range
        if not 0 < low < high:
            raise ValueError(
                f"temperature_range {list(self.temperature_range)}: need 0 < low < high"
            )
        return self


class ThresholdConfig(_Section):
    """The operating point: a precision target for a binary task, confidence rules otherwise."""

    positive_class: str | None = Field(
        None, description="binary: the class whose precision is targeted (default: the second)"
    )
    target_precision: float = Field(0.95, gt=0.0, le=1.0)
    allow_fallback: bool = Field(
        True, description="if the target is out of reach, take the most precise threshold with "
        "a WARNING naming the precision reached; false: stop (strict)",
    )  # fmt: skip
    band_low: float | None = Field(None, ge=0.0, le=1.0, description="T_LOW; null: from coverage")
    band_high: float | None = Field(None, ge=0.0, le=1.0, description="T_HIGH; null: the threshold")
    target_coverage: float = Field(
        0.9, gt=0.0, le=1.0, description="share of val images that get a decision (binary band)"
    )
    min_confidence: float = Field(0.0, ge=0.0, le=1.0, description="multiclass: below is uncertain")
    per_class: dict[str, float] = Field(
        default_factory=dict, description="multiclass: minimum probability per predicted class"
    )
    bootstrap: int = Field(1000, ge=0, le=100_000, description="resamples for confidence intervals")
    seed: int = 0
    tasks: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="several tasks: per-task overrides of the keys above, e.g. {damage: "
        "{positive_class: intact, target_precision: 0.9}}",
    )

    def for_task(self, task: str) -> ThresholdConfig:
        """The settings of one task: this section with ``tasks[task]`` applied over it."""
        override = self.tasks.get(task, {})
        try:
            return ThresholdConfig(**{**self.model_dump(exclude={"tasks"}), **override})
        except ValidationError as err:
            problem = err.errors()[0]
            where = ".".join(str(x) for x in problem["loc"])
            raise ConfigError(f"threshold.tasks.{task}.{where}: {problem['msg']}") from None

    @model_validator(mode="after")
    def _band_order(self) -> ThresholdConfig:
        if (
            self.band_low is not None
            and self.band_high is not None
            and self.band_low > self.band_high
        ):
            raise ValueError("threshold.band_low must not exceed threshold.band_high")
        return self


class ExportConfig(_Section):
    """ONNX export and its parity check on real val images."""

    opset: int = Field(18, ge=13, le=23)
    fp16: bool = Field(False, description="also write model.fp16.onnx (FP16 weights and compute)")
    parity_images: int = Field(64, ge=1, description="val images compared with the checkpoint")
    max_abs_diff: float = Field(1e-4, gt=0.0, description="fp32: max |p_onnx - p_torch|")
    fp16_max_abs_diff: float = Field(5e-3, gt=0.0)
    fp16_max_flips: int = Field(1, ge=0, description="FP16: decisions allowed to differ")


class RegisterConfig(_Section):
    """The registered model a pipeline run adds a version to."""

    model_name: str = Field("carinspect", min_length=1)
    alias: str = Field("challenger", min_length=1, description="alias set on each new version")
    require_better: bool = Field(
        True,
        description="refuse a model evaluate's verdict did not find better than the baseline; "
        "false: register it with a WARNING",
    )


GateMetric = Literal["accuracy", "balanced_accuracy", "macro_f1", "weighted_f1", "auroc_macro"]


class PromoteConfig(_Section):
    """The gate ``carinspect promote`` applies before moving the serving alias."""

    alias: str = Field("champion", min_length=1, description="the alias serving follows")
    metric: GateMetric = Field("accuracy", description="compared between candidate and champion")
    split: Literal["val", "test"] = "test"
    tolerance: float = Field(0.01, ge=0.0, le=1.0, description="candidate >= champion - tolerance")
    floor: float = Field(0.65, ge=0.0, le=1.0, description="candidate >= floor, champion or not")


class TritonConfig(_Section):
    """``carinspect export-triton``: the Triton model repository of a registered version."""

    model_name: str = Field(
        "carinspect",
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="the model's folder in the repository",
    )
    max_batch_size: int = Field(32, ge=1, le=4096, description="largest batch Triton forms")
    preferred_batch_sizes: list[int] = Field(
        [8, 16, 32], description="batch sizes the dynamic batcher aims for (<= max_batch_size)"
    )
    max_queue_delay_us: int = Field(
        2000, ge=0, description="how long a request may wait for a batch to fill (microseconds)"
    )
    instance_count: int = Field(1, ge=1, le=64, description="model instances per device")
    instance_kind: Literal["KIND_GPU", "KIND_CPU", "KIND_AUTO"] = "KIND_GPU"
    tensorrt: bool = Field(
        True, description="onnxruntime's TensorRT accelerator on GPU instances (FP16 below)"
    )
    tensorrt_fp16: bool = Field(True, description="TensorRT builds FP16 engines")
    tensorrt_workspace_mb: int = Field(1024, ge=64, description="TensorRT's builder workspace")

    @model_validator(mode="after")
    def _batch_sizes(self) -> TritonConfig:
        bad = [b for b in self.preferred_batch_sizes if not 1 <= b <= self.max_batch_size]
        if bad:
            raise ValueError(
                f"preferred_batch_sizes {bad} must lie in 1..max_batch_size={self.max_batch_size}"
            )
        return self


class Toleration(_Section):
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


class KfpTrainConfig(_Section):
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


class KfpConfig(_Section):
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


class MlflowConfig(_Section):
    """Where runs are recorded (the tracking URI itself comes from MLFLOW_TRACKING_URI)."""

    experiment: str = "carinspect"
    run_name: str | None = None


class SearchDim(_Section):
    """One dimension of the search space: a distribution over one params key's values."""

    type: Literal["loguniform", "uniform", "int", "choice"]
    low: float | None = None
    high: float | None = None
    values: list[Any] | None = Field(None, description="choice: the values to pick from")

    @model_validator(mode="after")
    def _bounds(self) -> SearchDim:
        if self.type == "choice":
            if not self.values:
                raise ValueError("a choice needs a non-empty `values` list")
            return self
        if self.low is None or self.high is None or not self.low < self.high:
            raise ValueError(f"{self.type} needs low < high, got low={self.low} high={self.high}")
        if self.type == "loguniform" and self.low <= 0:
            raise ValueError(f"loguniform needs low > 0, got {self.low}")
        if self.type == "int" and (self.low != int(self.low) or self.high != int(self.high)):
            raise ValueError(f"int needs whole bounds, got {self.low} and {self.high}")
        return self


def _default_space() -> dict[str, SearchDim]:
    return {
        "train.lr": SearchDim(type="loguniform", low=3e-4, high=1e-2),
        "train.weight_decay": SearchDim(type="loguniform", low=1e-3, high=1e-1),
        "model.drop_rate": SearchDim(type="uniform", low=0.0, high=0.3),
    }


class TuneConfig(_Section):
    """A hyper-parameter search (`carinspect tune`): Optuna trials of the train stage."""

    trials: int = Field(6, ge=1, le=10_000, description="trials in the study, resumed ones count")
    objective: str = Field(
        "val_macro_f1", description="a val metric train records per epoch (history.csv column)"
    )
    direction: Literal["maximize", "minimize"] = "maximize"
    sampler: Literal["tpe", "random"] = "tpe"
    pruner: Literal["median", "halving", "none"] = Field(
        "median", description="stop unpromising trials early (median rule, successive halving)"
    )
    prune_after: int = Field(2, ge=0, description="epochs every trial runs before it may be pruned")
    seed: int = 0
    study: str = Field("carinspect", min_length=1, description="the Optuna study name")
    storage: str | None = Field(
        None,
        description="an SQLAlchemy URL for Optuna's storage; null: optuna.db (SQLite) in the "
        "tune output folder, so an interrupted sweep resumes",
    )
    space: dict[str, SearchDim] = Field(
        default_factory=_default_space, description="dotted params key -> its distribution"
    )

    @model_validator(mode="after")
    def _keys(self) -> TuneConfig:
        if not self.space:
            raise ValueError("tune.space is empty: name at least one params key to search")
        for key in self.space:
            if key.count(".") < 1 or key.split(".")[0] not in ("model", "train"):
                raise ValueError(
                    f"tune.space key {key!r}: only model.* and train.* keys are searched (the "
                    "trials re-run train on one ingest and split)"
                )
        return self


class Params(_Section):
    """The whole of params.yaml."""

    data: DataConfig = DataConfig()
    ingest: IngestConfig = IngestConfig()
    split: SplitConfig = SplitConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    threshold: ThresholdConfig = ThresholdConfig()
    export: ExportConfig = ExportConfig()
    # `register` would shadow ABCMeta.register on the model class; the YAML key stays `register`
    register_: RegisterConfig = Field(RegisterConfig(), alias="register")
    promote: PromoteConfig = PromoteConfig()
    kfp: KfpConfig = KfpConfig()
    mlflow: MlflowConfig = MlflowConfig()
    tune: TuneConfig = TuneConfig()
    triton: TritonConfig = TritonConfig()

    @model_validator(mode="after")
    def _enough_per_class(self) -> Params:
        splits = [name for name, f in self.split.fractions().items() if f > 0]
        if self.ingest.min_per_class < len(splits):
            raise ValueError(
                f"ingest.min_per_class={self.ingest.min_per_class} is below the {len(splits)} "
                f"images per class that split needs (one each for {', '.join(splits)})"
            )
        return self


class Settings(BaseSettings):
    """Infrastructure settings from the environment (never from params.yaml)."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    mlflow_tracking_uri: str = Field(
        DEFAULT_TRACKING_URI, validation_alias="MLFLOW_TRACKING_URI",
        description="where runs and model versions go (default: the embedded store here)",
    )  # fmt: skip
    kfp_run_id: str | None = Field(
        None, validation_alias="KFP_RUN_ID", description="the KFP run, tagged on the training run"
    )
    # the commit an image was built from (docker/Dockerfile sets them): a pod has no checkout
    image_git_commit: str | None = Field(
        None, validation_alias="CARINSPECT_GIT_COMMIT",
        description="lineage where there is no checkout (the images set it at build time)",
    )  # fmt: skip
    image_git_dirty: str | None = Field(
        None, validation_alias="CARINSPECT_GIT_DIRTY",
        description="whether that commit's tree was dirty (true/false)",
    )  # fmt: skip
    user: str | None = Field(
        None, validation_alias="CARINSPECT_USER", description="who is named in the audit trail"
    )
    webhook_secret: SecretStr | None = Field(
        None, validation_alias="CARINSPECT_WEBHOOK_SECRET", description="signs alias webhooks"
    )


def set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    """``set_dotted(d, "train.epochs", 3)`` sets ``d["train"]["epochs"] = 3``."""
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"override {key}: {part} is not a section")
        node = nxt
    node[parts[-1]] = value


def _format_error(path: Path, err: ValidationError) -> str:
    lines = [f"{path}: invalid parameters"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<top level>"
        kind = e["type"]
        if kind == "extra_forbidden":
            lines.append(f"  {key}: unknown key")
        else:
            got = e.get("input")
            shown = "" if isinstance(got, dict | list) else f" (got {got!r})"
            lines.append(f"  {key}: {e['msg']}{shown}")
    return "\n".join(lines)


def parse_params(raw: Any, path: Path | str = "<params>") -> Params:
    """Validate an already-parsed params mapping; errors name ``path`` and each bad key."""
    path = Path(path)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_error(path, err)) from None


def load_params(path: Path | str) -> Params:
    """Read and validate a params.yaml file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: params file not found") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    return parse_params(raw, path)
