"""The model, train, mlflow and tune sections: what is trained, how, and the search over it."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from carinspect.config.base import Section


class ModelConfig(Section):
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


class EarlyStoppingConfig(Section):
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


class TrainConfig(Section):
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
    amp: bool = Field(
        True,
        description="mixed precision: bf16 on GPUs and on CPUs with AVX-512 BF16 or AMX, "
        "fp16 on older GPUs, fp32 on other CPUs",
    )
    amp_max_flip_rate: float = Field(
        0.05,
        ge=0.0,
        le=1.0,
        description="mixed precision's gate: share of val answers of the best checkpoint that may "
        "differ between the training precision and fp32 (what the exported graph computes)",
    )
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


class MlflowConfig(Section):
    """Where runs are recorded (the tracking URI itself comes from MLFLOW_TRACKING_URI)."""

    experiment: str = "carinspect"
    run_name: str | None = None


class SearchDim(Section):
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


class TuneConfig(Section):
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
