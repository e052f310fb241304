"""Request and response models of the HTTP API (they are the OpenAPI schema too)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class ModelInfo(BaseModel):
    """Which model answered."""

    name: str | None = Field(description="registered model name (null for a local folder)")
    version: str | None = Field(description="registered version (null for a local folder)")
    alias: str | None = Field(description="the alias MODEL_URI follows, if any")


class Uncertainty(BaseModel):
    """Monte Carlo dropout (MC_SAMPLES > 0): how the probabilities vary with dropout on."""

    samples: int = Field(description="stochastic passes (MC_SAMPLES)")
    mean: dict[str, float] = Field(description="mean sampled probability per class")
    std: dict[str, float] = Field(
        description="standard deviation of the sampled probability per class: the spread"
    )


def _absent(value: object) -> bool:
    return value is None


class Explanation(BaseModel):
    """Where the model found its answer (``?explain=true``): a class activation map."""

    label: str = Field(description="the class whose evidence the map shows (the answer's label)")
    width: int = Field(description="heatmap width: the photo's aspect ratio, longest side 128")
    height: int
    heatmap_png: str = Field(
        description="base64 PNG, gray + alpha: brighter is stronger evidence; transparent where "
        "the model did not look (cropped away). Scaled to the photo's size it lies on it"
    )


class TaskAnswer(BaseModel):
    """One task's answer: what a single-task prediction gives, and each task of a multi-task one."""

    label: str = Field(description="a class, or 'uncertain' inside the uncertainty band")
    confidence: float = Field(
        description="probability of the label (of the top class if uncertain)"
    )
    probabilities: dict[str, float] = Field(description="calibrated probability per class")
    thresholds: dict[str, Any] = Field(description="the decision rule applied")
    uncertainty: Uncertainty | None = Field(
        None, exclude_if=_absent, description="only with MC dropout on (MC_SAMPLES)"
    )
    explanation: Explanation | None = Field(
        None, exclude_if=_absent, description="only when asked (?explain=true)"
    )


class _Answered(BaseModel):
    model: ModelInfo
    processing_ms: float = Field(description="time in the server for this image")
    filename: str | None = None


class Prediction(_Answered, TaskAnswer):
    """One image's answer. ``label`` and ``confidence`` keep the seed service's meaning."""


class _Tasks(BaseModel):
    tasks: dict[str, TaskAnswer] = Field(description="each task's answer, by task name")


class MultiTaskPrediction(_Answered, _Tasks):
    """One image's answers from a model with several tasks (one backbone, one head each)."""


AnyPrediction = Prediction | MultiTaskPrediction


class BatchItemError(BaseModel):
    """A file of a batch that got no answer: its status and why, as /predict would have said."""

    filename: str | None
    status: int = Field(description="the HTTP status /predict gives this file alone")
    detail: str


class BatchPrediction(BaseModel):
    """Answers for /predict/batch, in upload order: a prediction, or an error, per file.

    One bad file does not cost the others their answers; ``errors`` counts the files that
    got an error entry.
    """

    predictions: list[Prediction | MultiTaskPrediction | BatchItemError]
    errors: int = 0
    processing_ms: float


class UrlRequest(BaseModel):
    """Body of /predict/url."""

    url: str = Field(min_length=1, max_length=2048, examples=["https://example.com/car.jpg"])


class SecondStatus(BaseModel):
    """The shadow or canary model beside the one serving (SHADOW, a rollout, CANARY_PERCENT)."""

    mode: Literal["shadow", "canary"]
    alias: str
    uri: str
    version: str | None = Field(description="the version loaded now (None: not yet)")
    canary_percent: float = Field(description="share of clients it answers (canary)")
    rollout: str | None = Field(
        None, description="the rollout recorded on the canary's version that sets the share "
        "(`carinspect rollout`); None: CANARY_PERCENT does",
    )  # fmt: skip
    loaded_at: str | None
    reloads: int
    reload_failures: int
    last_reload_error: str | None
    waiting_for: str | None = Field(None, description="why nothing is loaded yet: not an error")


class ModelStatus(BaseModel):
    """What /model reports."""

    ready: bool
    uri: str
    name: str | None
    version: str | None
    alias: str | None
    classes: list[str]
    thresholds: dict[str, Any]
    tasks: dict[str, list[str]] | None = Field(
        None, description="several tasks: each task's classes (thresholds are then per task)"
    )
    preprocess: dict[str, Any]
    mc_samples: int = Field(0, description="Monte Carlo dropout passes per image (0: off)")
    execution_provider: str | None = Field(description="the provider onnxruntime really uses")
    precision: str | None = Field(
        None, description="which graph of the version answers: fp32 or int8 (MODEL_PRECISION)"
    )
    providers: list[str]
    loaded_at: str | None
    reloads: int
    reload_failures: int
    last_reload_error: str | None
    last_reload_error_at: str | None
    waiting_for: str | None = Field(
        None, description="why there is nothing to load yet (an alias not set yet): not an error"
    )
    registry_reachable: bool | None = Field(
        None, description="whether the last poll reached the registry (null: a local folder); "
        "the loaded model keeps serving while it cannot",
    )  # fmt: skip
    registry_error: str | None = Field(None, description="why the last poll could not reach it")
    second: SecondStatus | None = Field(
        None, description="the shadow or canary model, when SHADOW or CANARY_PERCENT is set"
    )


class Health(BaseModel):
    """Liveness / readiness answer."""

    status: str
    detail: str | None = None


class ErrorResponse(BaseModel):
    """Every 4xx/5xx body: what was wrong with which input."""

    detail: str
