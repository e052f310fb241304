"""Serving settings, all from the environment (a Kubernetes ConfigMap and Secret set them)."""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from carinspect.config import DEFAULT_TRACKING_URI


class ServeSettings(BaseSettings):
    """Every knob of ``carinspect serve`` and ``carinspect predict``; names are the env vars."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    model_uri: str = Field(
        "models:/carinspect@champion",
        validation_alias="MODEL_URI",
        description="models:/<name>@<alias>, models:/<name>/<version>, or a folder with "
        "model.onnx + model.json",
    )
    mlflow_tracking_uri: str = Field(
        DEFAULT_TRACKING_URI, validation_alias="MLFLOW_TRACKING_URI",
        description="the registry MODEL_URI is resolved in (an MLflow server in a cluster)",
    )  # fmt: skip
    thresh: float | None = Field(
        None, ge=0.0, le=1.0, validation_alias="THRESH",
        description="overrides the model's threshold (binary: T_HIGH too; multiclass: "
        "min_confidence)",
    )  # fmt: skip
    t_low: float | None = Field(
        None, ge=0.0, le=1.0, validation_alias="T_LOW",
        description="overrides the band's lower edge (two classes; ignored, with a warning, for "
        "several tasks)",
    )  # fmt: skip
    t_high: float | None = Field(
        None, ge=0.0, le=1.0, validation_alias="T_HIGH",
        description="overrides the band's upper edge, the threshold (two classes)",
    )  # fmt: skip
    max_batch_size: int = Field(
        8, ge=1, le=1024, validation_alias="MAX_BATCH_SIZE",
        description="most images per onnxruntime call; on CPU a batch over ~8 costs no less per "
        "image but releases its answers together, which spreads latency under load; GPU: 32-64",
    )  # fmt: skip
    max_wait_ms: float = Field(
        20.0, ge=0.0, le=1000.0, validation_alias="MAX_WAIT_MS",
        description="longest an image waits for images that are being decoded to share its "
        "onnxruntime call; a lone request never waits",
    )  # fmt: skip
    mc_samples: int = Field(
        0,
        ge=0,
        le=1000,
        validation_alias="MC_SAMPLES",
        description="Monte Carlo dropout passes per image (0: off); answers gain an uncertainty",
    )
    mc_seed: int | None = Field(
        None, validation_alias="MC_SEED", description="seeds the dropout masks (reproducible)"
    )
    poll_seconds: float = Field(
        30.0, gt=0.0, validation_alias="POLL_SECONDS",
        description="how often the alias is checked for a new version",
    )  # fmt: skip
    max_upload_mb: float = Field(
        10.0, gt=0.0, le=512.0, validation_alias="MAX_UPLOAD_MB",
        description="larger uploads get 413 before their body is read",
    )  # fmt: skip
    max_batch_files: int = Field(
        32, ge=1, le=1024, validation_alias="MAX_BATCH_FILES",
        description="most files in one /predict/batch request",
    )  # fmt: skip
    max_batch_mb: float = Field(
        50.0, gt=0.0, le=4096.0, validation_alias="MAX_BATCH_MB",
        description="the whole /predict/batch body (all its files together); larger: 413 before "
        "it is read",
    )  # fmt: skip
    body_memory_mb: float = Field(
        128.0, gt=0.0, validation_alias="BODY_MEMORY_MB",
        description="request bodies the server reads and holds at once, by their declared "
        "length (a chunked body counts as its route's limit); when full, a request waits up to "
        "QUEUE_WAIT_S, then gets 503 with Retry-After",
    )  # fmt: skip
    decode_memory_mb: float = Field(
        96.0, gt=0.0, validation_alias="DECODE_MEMORY_MB",
        description="memory the decodes in flight may use together, as worked out from each "
        "image's header before its pixels are allocated; an image that alone needs more is "
        "refused (422 decode_budget), one that must wait longer than QUEUE_WAIT_S gets 503",
    )  # fmt: skip
    queue_wait_s: float = Field(
        10.0, gt=0.0, le=600.0, validation_alias="QUEUE_WAIT_S",
        description="longest a request waits for body or decode memory before 503 + Retry-After",
    )  # fmt: skip
    max_concurrency: int = Field(
        256, ge=1, validation_alias="MAX_CONCURRENCY",
        description="open connections and requests in progress (uvicorn's limit_concurrency); "
        "past it, 503",
    )  # fmt: skip
    header_timeout_s: float = Field(
        10.0, gt=0.0, le=600.0, validation_alias="HEADER_TIMEOUT_S",
        description="a connection must complete a request's headers within this (from its "
        "opening, or from the first byte of the next request); else 408 and closed",
    )  # fmt: skip
    body_timeout_s: float = Field(
        15.0, gt=0.0, le=600.0, validation_alias="BODY_TIMEOUT_S",
        description="longest wait for the next piece of a request body; else 408 and closed",
    )  # fmt: skip
    request_timeout_s: float = Field(
        60.0, gt=0.0, le=3600.0, validation_alias="REQUEST_TIMEOUT_S",
        description="the whole request, body, queue and inference included; past it, 408 while "
        "the body is still arriving, else 503",
    )  # fmt: skip
    keepalive_timeout_s: float = Field(
        5.0, gt=0.0, le=600.0, validation_alias="KEEPALIVE_TIMEOUT_S",
        description="an idle keep-alive connection is closed after this",
    )  # fmt: skip
    max_pixels: int = Field(
        40_000_000, ge=1, validation_alias="MAX_PIXELS",
        description="images declaring more pixels are refused as pixel bombs (422)",
    )  # fmt: skip
    api_keys: SecretStr = Field(
        SecretStr(""), validation_alias="API_KEYS", description="comma-separated; empty: no auth"
    )
    allow_url_fetch: bool = Field(
        False, validation_alias="ALLOW_URL_FETCH",
        description="turns on POST /predict/url (public http(s) addresses only)",
    )  # fmt: skip
    url_fetch_timeout_s: float = Field(
        5.0, gt=0.0, le=60.0, validation_alias="URL_FETCH_TIMEOUT_S",
        description="the whole fetch of one URL, redirects included",
    )  # fmt: skip
    url_fetch_allow_cidrs: str = Field(
        "", validation_alias="URL_FETCH_ALLOW_CIDRS",
        description="comma-separated networks /predict/url may reach although not public "
        "(an internal image store); empty: public addresses only",
    )  # fmt: skip
    ort_providers: str = Field(
        "auto", validation_alias="ORT_PROVIDERS",
        description="auto (CUDA when available, else CPU) or a comma-separated provider list, "
        "e.g. TensorrtExecutionProvider,CUDAExecutionProvider,CPUExecutionProvider",
    )  # fmt: skip
    ort_trt_cache_dir: Path | None = Field(
        None, validation_alias="ORT_TRT_CACHE_DIR",
        description="where the TensorRT provider keeps its built engines (a volume, so a restart "
        "skips the minutes-long build); default: MODEL_CACHE_DIR/tensorrt",
    )  # fmt: skip
    ort_trt_fp16: bool = Field(
        False, validation_alias="ORT_TRT_FP16",
        description="TensorRT builds FP16 engines (faster; probabilities move by ~1e-3)",
    )  # fmt: skip
    cpu_limit: float = Field(
        0.0, ge=0.0, le=1024.0, validation_alias="CPU_LIMIT",
        description="CPUs this server may use (the pod's limits.cpu); 0: the CPUs this process "
        "may run on. os.cpu_count() in a container is the node's, not the pod's",
    )  # fmt: skip
    decode_threads: int = Field(
        0, ge=0, le=256, validation_alias="DECODE_THREADS",
        description="threads decoding uploads, first come first served; 0: one per CPU",
    )  # fmt: skip
    access_log: bool = Field(
        False, validation_alias="ACCESS_LOG",
        description="a log line per request (uvicorn's access log); /metrics counts and times "
        "every request by route and status without it",
    )  # fmt: skip
    decode_nice: int = Field(
        10, ge=0, le=19, validation_alias="DECODE_NICE",
        description="how much lower the decoding threads' CPU priority is than inference's "
        "(Linux nice); 0: the same",
    )  # fmt: skip
    ort_intra_op_threads: int = Field(
        0, ge=0, le=256, validation_alias="ORT_INTRA_OP_THREADS",
        description="onnxruntime threads per batch; 0: half the CPUs (at least one), since "
        "decoding the next uploads needs the other half",
    )  # fmt: skip
    ort_inter_op_threads: int = Field(
        0, ge=0, le=256, validation_alias="ORT_INTER_OP_THREADS",
        description="onnxruntime's inter-op threads; 0: its default",
    )  # fmt: skip
    ort_allow_spinning: bool = Field(
        False, validation_alias="ORT_ALLOW_SPINNING",
        description="let idle onnxruntime threads spin (faster on a dedicated GPU/CPU, slower "
        "when decoding shares the cores)",
    )  # fmt: skip
    model_cache_dir: Path = Field(
        Path(tempfile.gettempdir()) / "carinspect-models", validation_alias="MODEL_CACHE_DIR",
        description="where downloaded versions are kept (an emptyDir on Kubernetes)",
    )  # fmt: skip
    webhook_secret: SecretStr | None = Field(
        None, validation_alias="CARINSPECT_WEBHOOK_SECRET",
        description="turns on POST /webhooks/mlflow, verifying MLflow's HMAC signature with it",
    )  # fmt: skip
    drift_window: int = Field(
        500, ge=0, le=100_000, validation_alias="DRIFT_WINDOW",
        description="answered photos the drift scores on /metrics are taken over (against the "
        "version's drift.json); 0: off",
    )  # fmt: skip
    drift_min_photos: int = Field(
        100, ge=1, le=100_000, validation_alias="DRIFT_MIN_PHOTOS",
        description="drift scores are published (and judged) only once the window holds this "
        "many photos: a PSI over a few photos is noise",
    )  # fmt: skip
    shadow: str = Field(
        "", validation_alias="SHADOW",
        description="an alias of MODEL_URI's registered model (e.g. challenger) that also answers "
        "every request, off the response path; agreement is counted on /metrics; empty: off",
    )  # fmt: skip
    shadow_percent: float = Field(
        100.0, gt=0.0, le=100.0, validation_alias="SHADOW_PERCENT",
        description="share of requests shadowed (each photo is inferred twice: on a busy CPU "
        "the shadowed share costs throughput in proportion)",
    )  # fmt: skip
    canary_percent: float = Field(
        0.0, ge=0.0, le=100.0, validation_alias="CANARY_PERCENT",
        description="share of clients (by X-Client-Key, else X-Request-Id, else address) "
        "answered by CANARY_ALIAS instead; 0: off",
    )  # fmt: skip
    canary_alias: str = Field(
        "challenger", min_length=1, validation_alias="CANARY_ALIAS",
        description="the alias that answers the canary share",
    )  # fmt: skip
    model_precision: Literal["auto", "fp32", "int8"] = Field(
        "auto", validation_alias="MODEL_PRECISION",
        description="which graph of the version answers: int8 (the INT8 graph export kept when "
        "it passed its gate against FP32; refused for a version without one), fp32, or auto "
        "(the INT8 graph when the version has one and, on a CPU, it runs at least 1.1x as fast "
        "as FP32 there, timed at load; on TensorRT always; on CUDA alone never)",
    )  # fmt: skip
    rollout_follow: bool = Field(
        True, validation_alias="ROLLOUT_FOLLOW",
        description="when MODEL_URI names an alias of a registered model: take the canary share "
        "from the rollout recorded on CANARY_ALIAS's version (`carinspect rollout`), read at each "
        "poll; CANARY_PERCENT applies while none is recorded",
    )  # fmt: skip
    feedback_dir: str = Field(
        "", validation_alias="FEEDBACK_DIR",
        description="a folder or s3://bucket/prefix where answered photos worth a look (the "
        "FEEDBACK_* policy) are kept with their answer and why, for review (`carinspect review "
        "push`) and `carinspect feedback import`; empty: off",
    )  # fmt: skip
    feedback_percent: float = Field(
        5.0, ge=0.0, le=100.0, validation_alias="FEEDBACK_PERCENT",
        description="random share of the answered photos kept besides those the policy picks "
        "(reason random); 0: only the policy's",
    )  # fmt: skip
    feedback_margin: float = Field(
        0.1, ge=0.0, le=1.0, validation_alias="FEEDBACK_MARGIN",
        description="keep a photo whose two most probable classes (of any task) are closer "
        "than this (reason margin); 0: off",
    )  # fmt: skip
    feedback_uncertain: bool = Field(
        True, validation_alias="FEEDBACK_UNCERTAIN",
        description="keep photos answered uncertain (inside the rule's band; reason uncertain)",
    )  # fmt: skip
    feedback_mc_std: float = Field(
        0.1, ge=0.0, le=0.5, validation_alias="FEEDBACK_MC_STD",
        description="with MC_SAMPLES: keep a photo whose answered class's MC dropout spread is "
        "above this (reason mc_spread); 0: off",
    )  # fmt: skip
    feedback_drift_factor: float = Field(
        2.0, ge=0.0, validation_alias="FEEDBACK_DRIFT_FACTOR",
        description="keep a photo whose embedding distance is beyond this many times the 90th "
        "percentile of held-out photos' distances (drift.json; reason drift); 0: off",
    )  # fmt: skip
    feedback_disagreements: bool = Field(
        True, validation_alias="FEEDBACK_DISAGREEMENTS",
        description="with SHADOW: keep photos the shadow answered otherwise (reason disagreement)",
    )  # fmt: skip
    feedback_per_hour: int = Field(
        600, ge=0, validation_alias="FEEDBACK_PER_HOUR",
        description="photos kept per clock hour at most; 0: no cap",
    )  # fmt: skip
    feedback_per_class_per_hour: int = Field(
        100, ge=0, validation_alias="FEEDBACK_PER_CLASS_PER_HOUR",
        description="photos kept per clock hour per answered class (of each task) at most, so one "
        "busy class cannot fill the log; 0: no cap",
    )  # fmt: skip
    feedback_max_mb: float = Field(
        1024.0, gt=0.0, validation_alias="FEEDBACK_MAX_MB",
        description="FEEDBACK_DIR's size cap; when reached, sampling stops (one WARNING)",
    )  # fmt: skip
    audit_on_poll: bool = Field(
        True, validation_alias="AUDIT_ON_POLL",
        description="record alias moves made outside carinspect in the audit trail when noticed",
    )  # fmt: skip

    @model_validator(mode="after")
    def _consistent(self) -> ServeSettings:
        if self.t_low is not None and self.t_high is not None and self.t_low > self.t_high:
            raise ValueError(f"T_LOW={self.t_low} is above T_HIGH={self.t_high}")
        if self.shadow and self.canary_percent > 0:
            raise ValueError(
                f"SHADOW={self.shadow} and CANARY_PERCENT={self.canary_percent}: one at a time "
                "(shadow compares a challenger, canary lets it answer)"
            )
        return self

    def keys(self) -> list[str]:
        """The configured API keys (none: predict routes are open)."""
        return [k.strip() for k in self.api_keys.get_secret_value().split(",") if k.strip()]

    @property
    def cpus(self) -> int:
        """CPUs to size the thread pools for: CPU_LIMIT rounded up, else this process's CPUs."""
        if self.cpu_limit > 0:
            return max(1, math.ceil(self.cpu_limit))
        return (
            len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else os.cpu_count() or 1
        )

    @property
    def decoders(self) -> int:
        """Threads decoding uploads."""
        return self.decode_threads or self.cpus

    @property
    def inference_threads(self) -> int:
        """Onnxruntime's intra-op threads.

        Under load, decoding and inference run at the same time on different requests, so
        onnxruntime's own parallelism only competes with decoding for the cores: on 2 CPUs, one
        thread gave 9-18% more requests/s at concurrency 32 than onnxruntime's default of one per
        core (phone photos, resnet10t), at the cost of ~3 ms on a lone request.
        """
        return self.ort_intra_op_threads or max(1, self.cpus // 2)

    @property
    def max_upload_bytes(self) -> int:
        """Per-file upload limit in bytes."""
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def max_batch_bytes(self) -> int:
        """The whole /predict/batch body's limit: MAX_BATCH_MB, or less when every file fits."""
        return min(
            int(self.max_batch_mb * 1024 * 1024), self.max_upload_bytes * self.max_batch_files
        )
