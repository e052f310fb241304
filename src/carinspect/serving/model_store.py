"""The model serving uses: resolved from MODEL_URI, downloaded, opened, warmed up, swapped.

A new version is swapped in only after it has been downloaded, its onnxruntime session opened
with the configured execution providers (and checked to really use them: onnxruntime falls back
to CPU silently when CUDA cannot start, mlflow/mlflow#13388), and a warm-up batch has produced
sane probabilities. Until then, and whenever any of that fails, the previous model keeps serving
and the error is kept for /model, /metrics and the log.

An alias (or registered model) that does not exist yet is not a failure: a server is often
deployed before the first version is promoted. It waits quietly (one INFO line, then DEBUG per
poll), not ready, with the reason on /readyz and /model, and counts no reload failure.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from carinspect.contracts.base import ContractError
from carinspect.contracts.cards import ModelCard, read_card
from carinspect.contracts.folders import ExportDir
from carinspect.contracts.onnx_names import FEATURES, INPUT, MASK, OUTPUTS
from carinspect.contracts.preprocess import PreprocessSpec
from carinspect.drift.profile import EMBEDDING, DriftWindow, EmbeddingRef, read_profile
from carinspect.errors import InputError
from carinspect.serving.reachability import registry_problem
from carinspect.serving.settings import ServeSettings

logger = logging.getLogger(__name__)


class ModelLoadError(InputError):
    """A model that cannot be served: the message says which and why."""


class NotThereYet(ModelLoadError):
    """MODEL_URI's registered model or alias does not exist (yet): nothing to load, no failure."""


@dataclass(frozen=True)
class ModelRef:
    """What MODEL_URI names: a registered model by alias or version, or a local folder."""

    uri: str
    name: str | None = None
    alias: str | None = None
    version: str | None = None
    folder: Path | None = None

    @classmethod
    def parse(cls, uri: str) -> ModelRef:
        """``models:/<name>@<alias>``, ``models:/<name>/<version>`` or a folder path."""
        if uri.startswith("models:/"):
            rest = uri.removeprefix("models:/").strip("/")
            if "@" in rest:
                name, alias = rest.split("@", 1)
                if name and alias and "/" not in alias:
                    return cls(uri, name=name, alias=alias)
            elif rest.count("/") == 1:
                name, version = rest.split("/")
                if name and version.isdigit():
                    return cls(uri, name=name, version=version)
            raise ModelLoadError(
                f"MODEL_URI={uri!r}: expected models:/<name>@<alias> or models:/<name>/<version>"
            )
        folder = Path(uri.removeprefix("file://"))
        return cls(uri, folder=folder)


@dataclass(frozen=True)
class ServedTask:
    """One answer the model gives: its classes, decision rule, graph output and columns."""

    name: str
    classes: list[str]
    decision: dict[str, Any]
    output: str
    columns: slice  # its block of the rows :meth:`LoadedModel.probabilities` returns


@dataclass
class McSampler:
    """Monte Carlo dropout over the pooled features: K masked passes of the classifier head.

    The backbone runs once per image; the head runs on K copies of its features, each with a
    fresh dropout mask (keep with probability 1 - rate, scaled by 1/keep, as dropout trains).
    Because the models' only dropout sits before the classifier, this is the same distribution
    as K full stochastic passes, at the cost of K small matrix products.
    """

    session: Any
    rate: float
    samples: int
    outputs: list[str]
    rng: np.random.Generator
    lock: threading.Lock = field(default_factory=threading.Lock)

    def summary(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean and standard deviation over the K samples of each probability, per image."""
        n, width = features.shape
        tiled = np.broadcast_to(features, (self.samples, n, width)).reshape(-1, width)
        keep = 1.0 - self.rate
        with self.lock:  # numpy generators are not thread-safe
            mask = (self.rng.random(tiled.shape, dtype=np.float32) < keep) / np.float32(keep)
        out = self.session.run(self.outputs, {FEATURES: tiled, MASK: mask.astype(np.float32)})
        probs = np.concatenate(out, axis=1).reshape(self.samples, n, -1)
        return probs.mean(axis=0), probs.std(axis=0)


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to serve: an open, warmed-up session and what model.json says.

    ``tasks`` holds one entry for a single-task model (``classes`` and ``decision`` are then
    its), one per head for a multi-task model (``multitask``; ``classes`` is empty and
    ``decision`` unused).
    """

    ref: ModelRef
    version: str | None
    classes: list[str]
    spec: PreprocessSpec
    decision: dict[str, Any]
    session: Any
    providers: list[str]
    folder: Path
    meta: dict[str, Any]
    tasks: list[ServedTask] = field(default_factory=list)
    multitask: bool = False
    mc: McSampler | None = None  # MC_SAMPLES > 0: dropout sampled per image
    drift: DriftWindow | None = None  # the version has drift.json: served photos scored on it
    embedding: EmbeddingRef | None = None  # and the graph its features: rows end with a distance
    loaded_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    @property
    def provider(self) -> str:
        """The execution provider that runs the model (the first one onnxruntime kept)."""
        return self.providers[0]

    @property
    def outputs(self) -> list[str]:
        """The graph outputs a prediction reads."""
        return [t.output for t in self.tasks] if self.tasks else [OUTPUTS[1]]

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities for a float32 NCHW batch; several tasks: side by side, task order."""
        out = self.session.run(self.outputs, {INPUT: batch})
        if len(out) == 1:
            first: np.ndarray = out[0]
            return first
        return np.concatenate(out, axis=1)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """The rows :func:`carinspect.serving.inference.answer` reads.

        Without MC dropout: :meth:`probabilities`. With it: those, then the MC mean, then the
        MC standard deviation, side by side (three times as wide). With an embedding reference,
        one more column: each photo's embedding distance (:meth:`drift_of` reads it).
        """
        if self.mc is None and self.embedding is None:
            return self.probabilities(batch)
        *probs, features = self.session.run([*self.outputs, FEATURES], {INPUT: batch})
        if self.mc is not None:
            probs.extend(self.mc.summary(features))
        if self.embedding is not None:
            probs.append(self.embedding.distances(features)[:, None])
        return np.concatenate(probs, axis=1)

    def drift_of(self, row: np.ndarray) -> dict[str, float]:
        """The drift statistics in a row of :meth:`infer` (the embedding distance, if any)."""
        return {EMBEDDING: float(row[-1])} if self.embedding is not None else {}


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


def provider_options(wanted: list[str], settings: ServeSettings) -> list[Any]:
    """``wanted`` as onnxruntime's providers argument, with the TensorRT provider's options.

    TensorRT builds an engine per model on first load (minutes for a large model): it is cached
    under ORT_TRT_CACHE_DIR (or MODEL_CACHE_DIR/tensorrt), keyed by model, so a restarted pod
    reuses it. FP16 engines only with ORT_TRT_FP16.
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


def read_meta(folder: Path) -> tuple[Path, ModelCard]:
    """model.onnx and the validated model.json of a downloaded or local model folder."""
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
        return onnx_path, read_card(meta_path)
    except ContractError as err:
        raise ModelLoadError(str(err)) from None


def open_model(
    ref: ModelRef, version: str | None, folder: Path, settings: ServeSettings
) -> LoadedModel:
    """Open ``folder`` as a servable model: session, provider check, warm-up."""
    import onnxruntime as ort

    onnx_path, card = read_meta(folder)
    wanted, required = resolve_providers(settings.ort_providers)
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
                str(path), sess_options=opts, providers=provider_options(wanted, settings)
            )
        except Exception as err:  # onnxruntime raises its own exception types
            raise ModelLoadError(f"{path}: onnxruntime cannot open it: {err}") from err

    session = open_session(onnx_path)
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
    return model_from_session(ref, version, folder, card, session, active, settings, mc)


def model_from_session(
    ref: ModelRef,
    version: str | None,
    folder: Path,
    card: ModelCard,
    session: Any,
    providers: list[str],
    settings: ServeSettings,
    mc: McSampler | None = None,
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
            wide = width * (3 if model.mc is not None else 1) + (model.embedding is not None)
            try:
                rows = model.infer(batch)
            except Exception as err:  # onnxruntime raises its own exception types
                raise ModelLoadError(f"{model.ref.uri}: features warm-up failed: {err}") from err
            if rows.shape != (n, wide):
                raise ModelLoadError(
                    f"{model.ref.uri}: warm-up with the features gave shape {rows.shape}, "
                    f"expected ({n}, {wide})"
                )
        sums = [probs[:, t.columns].sum(axis=1) for t in model.tasks]
        if not np.all(np.isfinite(probs)) or not all(np.allclose(x, 1.0, atol=1e-3) for x in sums):
            raise ModelLoadError(f"{model.ref.uri}: warm-up probabilities are not a distribution")


class ModelStore:
    """Holds the serving model and replaces it when MODEL_URI's target changes."""

    def __init__(
        self,
        settings: ServeSettings,
        on_reload: Callable[[LoadedModel | None, str | None], None] | None = None,
    ) -> None:
        self.settings = settings
        self.ref = ModelRef.parse(settings.model_uri)
        self._current: LoadedModel | None = None
        self._lock = threading.Lock()  # one load at a time; readers never wait on it
        self.last_error: str | None = None
        self.last_error_at: str | None = None
        self.reloads = 0
        self.failures = 0
        self.waiting_for: str | None = None  # why there is nothing to load yet (not a failure)
        # whether the last poll reached the registry (None: a local folder, nothing to reach)
        self.registry_reachable: bool | None = None
        self.registry_error: str | None = None
        self._on_reload = on_reload
        self._local_stamp: tuple[int, ...] | None = None

    @property
    def current(self) -> LoadedModel | None:
        """The model serving now (None before the first successful load)."""
        return self._current

    def not_ready_reason(self) -> str:
        """Why nothing serves yet: the load error, what is awaited, or loading."""
        return self.last_error or self.waiting_for or "loading"

    def _client(self) -> Any:
        from mlflow.tracking import MlflowClient

        return MlflowClient(self.settings.mlflow_tracking_uri)

    def target_version(self) -> str | None:
        """The registry version MODEL_URI points at now (None for a local folder)."""
        from mlflow.exceptions import MlflowException

        if self.ref.folder is not None:
            return None
        if self.ref.version is not None:
            return self.ref.version
        client = self._client()
        try:
            mv = client.get_model_version_by_alias(self.ref.name, self.ref.alias)
        except MlflowException:
            self._raise_if_not_there_yet(client)
            # The alias is there after all (set between the two reads: a promotion during this
            # poll), or the registry could not say. Ask once more; a second miss is a failure.
            try:
                mv = client.get_model_version_by_alias(self.ref.name, self.ref.alias)
            except MlflowException as err:
                raise ModelLoadError(
                    f"{self.ref.uri}: cannot resolve alias {self.ref.alias!r}: {err.message}"
                ) from err
        return str(mv.version)

    def _raise_if_not_there_yet(self, client: Any) -> None:
        """Raise :class:`NotThereYet` when the model or its alias is simply not there.

        Asked of the registered model itself, because stores word a missing alias differently
        (SQL stores answer INVALID_PARAMETER_VALUE, not RESOURCE_DOES_NOT_EXIST).
        """
        from mlflow.exceptions import MlflowException

        try:
            registered = client.get_registered_model(self.ref.name)
        except MlflowException as err:
            if err.error_code == "RESOURCE_DOES_NOT_EXIST":
                raise NotThereYet(f"registered model {self.ref.name!r} does not exist yet") from err
            return
        if self.ref.alias not in (registered.aliases or {}):
            raise NotThereYet(
                f"registered model {self.ref.name!r} has no alias {self.ref.alias!r} yet"
            )

    def fetch(self) -> tuple[str | None, Path]:
        """MODEL_URI's current version (None for a folder) and its files on local disk."""
        version = self.target_version()
        if version is None:
            assert self.ref.folder is not None
            return None, self.ref.folder
        return version, self._download(version)

    def _cache_key(self, version: str) -> str:
        """Which version of which store: ``<version>-<hash>`` of the store, run and creation time.

        A name and number alone are not unique: two stores (a laptop's and a test's, or a store
        rebuilt after its registered model was deleted) both have carinspect version 1, and a
        shared MODEL_CACHE_DIR served one store's model for the other.
        """
        from mlflow.exceptions import MlflowException

        try:
            mv = self._client().get_model_version(self.ref.name, version)
        except MlflowException as err:
            raise ModelLoadError(f"models:/{self.ref.name}/{version}: {err.message}") from err
        identity = "\n".join(
            (self.settings.mlflow_tracking_uri, str(self.ref.name), version, str(mv.run_id),
             str(mv.source), str(mv.creation_timestamp))
        )  # fmt: skip
        return f"{version}-{hashlib.sha256(identity.encode()).hexdigest()[:12]}"

    def _download(self, version: str) -> Path:
        """The version's files, downloaded once into MODEL_CACHE_DIR/<name>/<version>-<key>."""
        import mlflow

        assert self.ref.name is not None
        dest = self.settings.model_cache_dir / self.ref.name / self._cache_key(version)
        if (dest / ExportDir.ONNX).is_file():
            return dest
        tmp = dest.with_name(f".{dest.name}.{time.monotonic_ns()}.tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        try:
            mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{self.ref.name}/{version}",
                dst_path=str(tmp),
                tracking_uri=self.settings.mlflow_tracking_uri,
            )
            if dest.exists():
                shutil.rmtree(dest)
            tmp.rename(dest)
        except Exception as err:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(err, ModelLoadError):
                raise
            raise ModelLoadError(
                f"models:/{self.ref.name}/{version}: download failed: {err}"
            ) from err
        return dest

    def _local_changed(self) -> bool:
        folder = self.ref.folder
        assert folder is not None
        stamp = tuple(
            int(x)
            for p in (folder / ExportDir.ONNX, folder / ExportDir.CARD)
            if p.exists()
            for x in (p.stat().st_mtime_ns, p.stat().st_size)
        )
        changed = stamp != self._local_stamp
        self._local_stamp = stamp
        return changed

    def refresh(self) -> bool:
        """Load MODEL_URI's current target if it is not the one serving; True if swapped."""
        with self._lock:
            current = self._current
            try:
                if self.ref.folder is not None:
                    if current is not None and not self._local_changed():
                        return False
                    if current is None:
                        self._local_changed()
                    version, folder = None, self.ref.folder
                else:
                    if not self._registry_answers():
                        return False
                    version = self.target_version()
                    self.waiting_for = None
                    if current is not None and current.version == version:
                        self.last_error = None  # the alias is back on the version serving fine
                        return False
                    assert version is not None
                    folder = self._download(version)
                model = open_model(self.ref, version, folder, self.settings)
            except NotThereYet as err:
                self._wait(str(err))
                return False
            except ModelLoadError as err:
                self._fail(str(err))
                return False
            except Exception as err:  # a registry or network error must not stop the poller
                self._fail(f"{self.ref.uri}: {type(err).__name__}: {err}")
                return False
            self._current = model  # one reference assignment: requests see old or new, never half
            self.reloads += 1
            self.last_error = None
            logger.info(
                "serving %s version %s on %s (was %s)",
                self.ref.uri, model.version, model.provider,
                current.version if current else "nothing",
            )  # fmt: skip
            if self._on_reload:
                self._on_reload(model, None)
            return True

    def _registry_answers(self) -> bool:
        """Ask the registry's health first: no minutes of MLflow retries while it is down."""
        problem = registry_problem(
            self.settings.mlflow_tracking_uri, min(5.0, self.settings.poll_seconds)
        )
        self.registry_reachable = problem is None
        self.registry_error = problem
        if problem is not None:
            self._fail(problem)
        return problem is None

    def _wait(self, reason: str) -> None:
        first = reason != self.waiting_for
        self.waiting_for = reason
        if self._current is None:
            logger.log(
                logging.INFO if first else logging.DEBUG,
                "waiting for %s: %s (checking every %s s)",
                self.ref.uri, reason, self.settings.poll_seconds,
            )  # fmt: skip
        else:
            logger.log(
                logging.WARNING if first else logging.DEBUG,
                "%s: %s; still serving version %s",
                self.ref.uri, reason, self._current.version,
            )  # fmt: skip

    def _fail(self, message: str) -> None:
        self.failures += 1
        self.last_error = message
        self.last_error_at = datetime.now(UTC).isoformat(timespec="seconds")
        served = self._current.version if self._current else None
        logger.error("model reload failed, still serving %s: %s", served or "nothing", message)
        if self._on_reload:
            self._on_reload(None, message)

    def record_outside_moves(self) -> None:
        """Note alias moves made outside carinspect in the audit trail (best effort)."""
        if self.ref.alias is None or self.ref.name is None or not self.settings.audit_on_poll:
            return
        from carinspect.tracking.audit import reconcile

        try:
            reconcile(self._client(), self.ref.name, self.ref.alias, observer="carinspect serve")
        except Exception as err:  # no write access to the registry must not stop serving
            logger.warning("could not update the audit trail of %s: %s", self.ref.name, err)

    def poll(self, stop: threading.Event) -> None:
        """Refresh every POLL_SECONDS until ``stop`` is set (runs in a thread)."""
        while not stop.wait(self.settings.poll_seconds):
            self.refresh()
            self.record_outside_moves()
