"""The evaluate, threshold, export, register, promote and triton sections: from a model to a served version."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from carinspect.config.base import ConfigError, Section


class EvaluateConfig(Section):
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


class ThresholdConfig(Section):
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


class ExportConfig(Section):
    """ONNX export and its parity check on real val images."""

    opset: int = Field(18, ge=13, le=23)
    fp16: bool = Field(False, description="also write model.fp16.onnx (FP16 weights and compute)")
    parity_images: int = Field(64, ge=1, description="val images compared with the checkpoint")
    max_abs_diff: float = Field(1e-4, gt=0.0, description="fp32: max |p_onnx - p_torch|")
    fp16_max_abs_diff: float = Field(5e-3, gt=0.0)
    fp16_max_flips: int = Field(1, ge=0, description="FP16: decisions allowed to differ")
    quantize: Literal["none", "int8"] = Field(
        "none",
        description="int8: also write model.int8.onnx (static QDQ quantization, per-channel "
        "weights), kept only if it passes its gate against FP32 on the val split",
    )
    int8_calibration_images: int = Field(
        256, ge=8, le=5000, description="train photos the activation ranges are calibrated on"
    )
    int8_symmetric: bool = Field(
        True,
        description="INT8: every zero point 0, activations too: what TensorRT takes (GPU nodes "
        "and Triton); false: asymmetric activations, a few percent faster on CPUs only",
    )
    int8_max_flip_rate: float = Field(
        0.01, ge=0.0, le=1.0, description="INT8: share of val decisions allowed to differ from FP32"
    )
    int8_max_recall_drop: float = Field(
        0.02, ge=0.0, le=1.0, description="INT8: most a class's val recall may fall below FP32's"
    )


class RegisterConfig(Section):
    """The registered model a pipeline run adds a version to."""

    model_name: str = Field("carinspect", min_length=1)
    alias: str = Field("challenger", min_length=1, description="alias set on each new version")
    require_better: bool = Field(
        True,
        description="refuse a model evaluate's verdict did not find better than the baseline; "
        "false: register it with a WARNING",
    )


GateMetric = Literal["accuracy", "balanced_accuracy", "macro_f1", "weighted_f1", "auroc_macro"]


class PromoteConfig(Section):
    """The gate ``carinspect promote`` applies before moving the serving alias."""

    alias: str = Field("champion", min_length=1, description="the alias serving follows")
    metric: GateMetric = Field("accuracy", description="compared between candidate and champion")
    split: Literal["val", "test"] = "test"
    tolerance: float = Field(0.01, ge=0.0, le=1.0, description="candidate >= champion - tolerance")
    floor: float = Field(0.65, ge=0.0, le=1.0, description="candidate >= floor, champion or not")
    same_photos: bool = Field(
        True,
        description="judge candidate and champion on one identical set (the candidate's test "
        "split + the golden set), as each serves, where the project holds that data; else the "
        "recorded metrics (measured on each version's own test split)",
    )
    golden: str = Field(
        "data/golden",
        description="the golden set: reviewed production photos no version trained on "
        "(photos/<class>/<photo>, DVC-tracked; `carinspect review pull --golden-share` fills it)",
    )


class TritonConfig(Section):
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
    precision: Literal["fp32", "int8"] = Field(
        "fp32",
        description="the graph the repository serves: fp32 (model.onnx) or int8 (the version's "
        "INT8 graph; TensorRT builds INT8 engines from its Q/DQ scales)",
    )
    tensorrt_workspace_mb: int = Field(1024, ge=64, description="TensorRT's builder workspace")

    @model_validator(mode="after")
    def _batch_sizes(self) -> TritonConfig:
        bad = [b for b in self.preferred_batch_sizes if not 1 <= b <= self.max_batch_size]
        if bad:
            raise ValueError(
                f"preferred_batch_sizes {bad} must lie in 1..max_batch_size={self.max_batch_size}"
            )
        return self
