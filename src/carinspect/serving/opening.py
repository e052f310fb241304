"""Opening a model folder (model.onnx + model.json) into a :class:`LoadedModel`.

The onnxruntime session is opened with the configured execution providers and checked to really
use them (onnxruntime falls back to CPU silently when CUDA cannot start, mlflow/mlflow#13388),
its inputs and outputs checked against the card, and a warm-up batch must give sane
probabilities before the model may serve.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from carinspect.contracts.base import ContractError
from carinspect.contracts.cards import ModelCard, read_card
from carinspect.contracts.folders import ExportDir
from carinspect.contracts.onnx_names import FEATURES, INPUT
from carinspect.drift.profile import DriftWindow, read_profile
from carinspect.serving.loaded import (
    LoadedModel,
    McSampler,
    ModelLoadError,
    ModelRef,
    Scores,
    ServedTask,
)
from carinspect.serving.settings import ServeSettings

logger = logging.getLogger(__name__)
# the providers that run an INT8 (Q/DQ) graph in INT8
INT8_PROVIDERS = ("CPUExecutionProvider", "TensorrtExecutionProvider")
# MODEL_PRECISION=auto on a CPU: the INT8 graph only when it is this much faster there. Its gain
# depends on the CPU and the model (AMX Xeons: 2-3x; Zen 4: 1.2-1.4x for resnets, and
# efficientnet_lite0's depthwise convolutions ran 0.7x), and near a tie FP32 is the reference.
INT8_WORTH = 1.1


def apply_overrides(decision: dict[str, Any], settings: ServeSettings) -> dict[str, Any]:
    """The model's decision rule with THRESH / T_LOW / T_HIGH applied."""
    d = dict(decision)
    if d.get("task") == "binary":
        if settings.thresh is not None:
            d["threshold"] = d["t_high"] = settings.thresh
        if settings.t_high is not None:
            d["t_high"] = settings.t_high
        if settings.t_low is not None:
            d["t_low"] = settings.t_low
        d["t_low"] = min(d["t_low"], d["t_high"])
    elif settings.thresh is not None:
        d["min_confidence"] = settings.thresh
    return d


def resolve_providers(setting: str) -> tuple[list[str], bool]:
    """(providers to ask for, whether the first one is required) from ORT_PROVIDERS."""
    import onnxruntime as ort

    if setting.strip().lower() == "auto":
        available = ort.get_available_providers()
        if "CUDAExecutionProvider" in available:
            return ["CUDAExecutionProvider", "CPUExecutionProvider"], False
        return ["CPUExecutionProvider"], False
    wanted = [p.strip() for p in setting.split(",") if p.strip()]
    return wanted, True


def provider_options(wanted: list[str], settings: ServeSettings, int8: bool = False) -> list[Any]:
    """``wanted`` as onnxruntime's providers argument, with the TensorRT provider's options.

    TensorRT builds an engine per model on first load (minutes for a large model): it is cached
    under ORT_TRT_CACHE_DIR (or MODEL_CACHE_DIR/tensorrt), keyed by model, so a restarted pod
    reuses it. FP16 engines only with ORT_TRT_FP16. ``int8``: the graph is the INT8 one, whose
    Q/DQ nodes carry the scales, so TensorRT builds INT8 kernels from them (no calibration
    table) and keeps the float parts in FP16 or FP32 as asked.
    """
    out: list[Any] = []
    for name in wanted:
        if name == "TensorrtExecutionProvider":
            cache = settings.ort_trt_cache_dir or settings.model_cache_dir / "tensorrt"
            cache.mkdir(parents=True, exist_ok=True)
            options = {
                "trt_engine_cache_enable": True,
                "trt_engine_cache_path": str(cache),
                "trt_timing_cache_enable": True,
                "trt_timing_cache_path": str(cache),
                "trt_fp16_enable": settings.ort_trt_fp16,
                "trt_int8_enable": int8,
            }
            out.append((name, options))
        else:
            out.append(name)
    return out


def _mc_sampler(
    folder: Path, card: ModelCard, settings: ServeSettings, open_session: Callable[[Path], Any]
) -> McSampler | None:
    """The MC dropout head when MC_SAMPLES asks for it; a clear error when the model has none."""
    if settings.mc_samples == 0:
        return None
    if card.mc_dropout is None:
        raise ModelLoadError(
            f"MC_SAMPLES={settings.mc_samples}, but model {card.name!r} was exported without "
            "an MC dropout head (trained with model.drop_rate 0, or its output is not "
            "classifier(pooled features)): retrain with model.drop_rate > 0, or unset MC_SAMPLES"
        )
    name = card.mc_dropout.head
    head = next((p for p in (folder / name, folder / "extra_files" / name) if p.is_file()), None)
    if head is None:
        raise ModelLoadError(f"{folder}: model.json names MC dropout head {name}, not found")
    outputs = [t.output for t in card.task_cards]
    return McSampler(
        open_session(head),
        card.mc_dropout.rate,
        settings.mc_samples,
        outputs,
        np.random.default_rng(settings.mc_seed),
    )


def read_meta(
    folder: Path, precision: str = "fp32", provider: str = "CPUExecutionProvider"
) -> tuple[Path, ModelCard]:
    """The graph to serve and the validated model.json of a downloaded or local model folder.

    ``precision``: fp32 (model.onnx), int8 (the INT8 graph export kept: refused when the
    version has none), or auto (the INT8 graph when the version has one that passed its gate).
    """
    onnx_path = folder / ExportDir.ONNX
    meta_path = next(
        (p for p in (folder / ExportDir.CARD, folder / ExportDir.LOGGED_CARD) if p.is_file()),
        None,
    )
    if not onnx_path.is_file():
        raise ModelLoadError(f"{folder}: {ExportDir.ONNX} not found")
    if meta_path is None:
        raise ModelLoadError(
            f"{folder}: {ExportDir.CARD} not found (beside {ExportDir.ONNX} or as "
            f"{ExportDir.LOGGED_CARD})"
        )
    try:
        card = read_card(meta_path)
    except ContractError as err:
        raise ModelLoadError(str(err)) from None
    return _graph(folder, card, precision, provider) or onnx_path, card


def _graph(folder: Path, card: ModelCard, precision: str, provider: str) -> Path | None:
    """The INT8 graph when ``precision`` asks for it and the version has one; else None.

    ``auto`` takes it only on the providers that run it in INT8: the CPU's and TensorRT.
    CUDA's runs a Q/DQ graph by dequantizing, slower than the FP32 graph.
    """
    if precision == "fp32" or (precision == "auto" and provider not in INT8_PROVIDERS):
        return None
    name = card.files.get("int8")
    found = next((p for p in (folder / name, folder / "extra_files" / name) if p.is_file()),
                 None) if name else None  # fmt: skip
    if found is None and precision == "int8":
        raise ModelLoadError(f"{folder}: MODEL_PRECISION=int8, but {card.why_no_int8()}")
    return found


def open_model(
    ref: ModelRef, version: str | None, folder: Path, settings: ServeSettings
) -> LoadedModel:
    """Open ``folder`` as a servable model: session, provider check, warm-up."""
    import onnxruntime as ort

    wanted, required = resolve_providers(settings.ort_providers)
    onnx_path, card = read_meta(folder, settings.model_precision, wanted[0])
    int8 = onnx_path.name == card.files.get("int8")
    if int8 and wanted[0] == "TensorrtExecutionProvider" and card.int8 and card.int8.tensorrt:
        # onnxruntime would hand the graph to CUDA or the CPU instead, silently
        raise ModelLoadError(
            f"{folder}: MODEL_PRECISION={settings.model_precision} on TensorRT: "
            f"{card.int8.tensorrt}"
        )
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = settings.inference_threads
    if settings.ort_inter_op_threads:
        opts.inter_op_num_threads = settings.ort_inter_op_threads
    if not settings.ort_allow_spinning:  # idle ORT threads would spin on cores decoding needs
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "0")

    def open_session(path: Path) -> Any:
        try:
            return ort.InferenceSession(
                str(path), sess_options=opts,
                providers=provider_options(wanted, settings, int8 and path == onnx_path),
            )  # fmt: skip
        except Exception as err:  # onnxruntime raises its own exception types
            raise ModelLoadError(f"{path}: onnxruntime cannot open it: {err}") from err

    session = open_session(onnx_path)
    if int8 and settings.model_precision == "auto" and wanted[0] == "CPUExecutionProvider":
        fp32_path = folder / ExportDir.ONNX  # the FP32 graph read_meta falls back to
        fp32 = open_session(fp32_path)
        feeds = _timing_batch(card.preprocess.img_size, settings.max_batch_size)
        outputs = [t.output for t in card.task_cards]
        speedup = _seconds(fp32, feeds, outputs) / _seconds(session, feeds, outputs)
        int8 = speedup >= INT8_WORTH
        logger.info(
            "MODEL_PRECISION=auto: the INT8 graph runs a batch of %d %.2fx as fast as FP32 on "
            "this node: serving %s", settings.max_batch_size, speedup, "INT8" if int8 else
            f"FP32 (INT8 only from {INT8_WORTH}x)",
        )  # fmt: skip
        if not int8:
            session, onnx_path = fp32, fp32_path
        del fp32
    active = list(session.get_providers())
    if active[0] != wanted[0]:
        message = f"{wanted[0]} was asked for but onnxruntime runs the model on {active[0]}"
        if required:
            raise ModelLoadError(f"{onnx_path}: {message}")
        logger.warning("%s: %s", onnx_path, message)
    inputs = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]
    wanted_outputs = [t.output for t in card.task_cards]
    if INPUT not in inputs or not set(wanted_outputs) <= set(outputs):
        raise ModelLoadError(
            f"{onnx_path}: expected input {INPUT!r} and outputs {wanted_outputs}, "
            f"found inputs {inputs} and outputs {outputs}"
        )
    mc = _mc_sampler(folder, card, settings, open_session)
    precision = "int8" if int8 else "fp32"
    return model_from_session(ref, version, folder, card, session, active, settings, mc, precision)


def _timing_batch(img_size: int, batch: int) -> dict[str, np.ndarray]:
    """A fixed batch of noise in the input's shape (zeros could take shortcuts)."""
    rng = np.random.default_rng(0)
    return {INPUT: rng.standard_normal((batch, 3, img_size, img_size), dtype=np.float32)}


def _seconds(
    session: Any, feeds: dict[str, np.ndarray], outputs: list[str], runs: int = 5
) -> float:
    """The fastest of ``runs`` calls after one warm call: what the session costs, less noise."""
    session.run(outputs, feeds)
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        session.run(outputs, feeds)
        best = min(best, time.perf_counter() - start)
    return best


def model_from_session(
    ref: ModelRef,
    version: str | None,
    folder: Path,
    card: ModelCard,
    session: Any,
    providers: list[str],
    settings: ServeSettings,
    mc: McSampler | None = None,
    precision: str = "fp32",
) -> LoadedModel:
    """A warmed-up :class:`LoadedModel` around anything with onnxruntime's ``run(outputs, feeds)``.

    onnxruntime's session for ``carinspect serve``; a Triton client for the Triton repository
    (:mod:`carinspect.serving.triton_client`), so both answer through the same code.
    """
    tasks = _served_tasks(card, settings)
    drift = _drift_window(folder, settings)
    model = LoadedModel(
        ref=ref,
        version=version,
        classes=[] if card.multitask else tasks[0].classes,
        spec=card.preprocess,
        decision={} if card.multitask else tasks[0].decision,
        session=session,
        providers=providers,
        folder=folder,
        meta=card.to_json(),
        tasks=tasks,
        multitask=card.multitask,
        mc=mc,
        drift=drift,
        # the reference only helps when the graph gives the features it projects
        embedding=(
            drift.profile.embedding if drift is not None and FEATURES in card.outputs else None
        ),
        precision=precision,
    )
    _warm_up(model, settings.max_batch_size)
    return model


def _drift_window(folder: Path, settings: ServeSettings) -> DriftWindow | None:
    """A window over drift.json's profile; none for a version exported without one.

    A profile that does not read is a warning, not a refusal: the model itself is sound.
    """
    path = next(
        (p for p in (folder / ExportDir.DRIFT, folder / ExportDir.LOGGED_DRIFT) if p.is_file()),
        None,
    )
    if path is None or settings.drift_window == 0:
        return None
    try:
        return DriftWindow(read_profile(path), settings.drift_window)
    except ContractError as err:
        logger.warning("no drift scores for this version: %s", err)
        return None


def _served_tasks(card: ModelCard, settings: ServeSettings) -> list[ServedTask]:
    """The card's tasks with their columns; THRESH/T_LOW/T_HIGH apply to a single task only."""
    overridden = any(v is not None for v in (settings.thresh, settings.t_low, settings.t_high))
    if card.multitask and overridden:
        logger.warning(
            "THRESH/T_LOW/T_HIGH are ignored: model %r has several tasks, each with its own rule",
            card.name,
        )
    out, start = [], 0
    for task in card.task_cards:
        rule = task.rule if card.multitask else apply_overrides(task.rule, settings)
        end = start + len(task.classes)
        out.append(ServedTask(task.name, task.classes, rule, task.output, slice(start, end)))
        start = end
    return out


def _warm_up(model: LoadedModel, max_batch: int) -> None:
    """Run batches of 1 and ``max_batch`` and check the probabilities are sane."""
    size = model.spec.img_size
    width = sum(len(t.classes) for t in model.tasks)
    for n in sorted({1, max_batch}):
        batch = np.zeros((n, 3, size, size), dtype=np.float32)
        try:
            probs = model.probabilities(batch)
        except Exception as err:  # onnxruntime raises its own exception types
            raise ModelLoadError(f"{model.ref.uri}: warm-up batch of {n} failed: {err}") from err
        if probs.shape != (n, width):
            raise ModelLoadError(
                f"{model.ref.uri}: warm-up gave shape {probs.shape}, expected ({n}, {width}) "
                f"for {', '.join(f'{t.name} {t.classes}' for t in model.tasks)}"
            )
        if model.mc is not None or model.embedding is not None:
            try:
                scores = model.infer(batch)
            except Exception as err:  # onnxruntime raises its own exception types
                raise ModelLoadError(f"{model.ref.uri}: features warm-up failed: {err}") from err
            _check_extras(model, scores, n, width)
        sums = [probs[:, t.columns].sum(axis=1) for t in model.tasks]
        if not np.all(np.isfinite(probs)) or not all(np.allclose(x, 1.0, atol=1e-3) for x in sums):
            raise ModelLoadError(f"{model.ref.uri}: warm-up probabilities are not a distribution")


def _check_extras(model: LoadedModel, scores: Scores, n: int, width: int) -> None:
    """The MC mean and spread are (n, width), the embedding distance (n,): else refused."""
    shapes: dict[str, tuple[np.ndarray | None, tuple[int, ...]]] = {
        "MC mean": (scores.mc_mean, (n, width)),
        "MC spread": (scores.mc_std, (n, width)),
    }
    if model.mc is None:
        shapes = {}
    if model.embedding is not None:
        shapes["embedding distance"] = (scores.distance, (n,))
    for what, (got, expected) in shapes.items():
        if got is None or got.shape != expected:
            found = None if got is None else got.shape
            raise ModelLoadError(
                f"{model.ref.uri}: warm-up with the features gave {what} of shape {found}, "
                f"expected {expected}"
            )
