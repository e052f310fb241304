"""The model serving uses: resolved from MODEL_URI, downloaded, opened, warmed up, swapped.

A new version is swapped in only after it has been downloaded and opened (serving/opening.py:
providers checked, warm-up batch sane). Until then, and whenever any of that fails, the
previous model keeps serving and the error is kept for /model, /metrics and the log.

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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from carinspect.contracts.folders import ExportDir
from carinspect.serving.loaded import LoadedModel, ModelLoadError, ModelRef, NotThereYet
from carinspect.serving.opening import open_model
from carinspect.serving.reachability import registry_problem
from carinspect.serving.settings import ServeSettings

logger = logging.getLogger(__name__)


class ModelStore:
    """Holds the serving model and replaces it when MODEL_URI's target changes."""

    def __init__(
        self,
        settings: ServeSettings,
        on_reload: Callable[[LoadedModel | None, str | None], None] | None = None,
        wanted: Callable[[Any], bool] | None = None,
    ) -> None:
        """Follow ``settings.model_uri``; ``on_reload`` is told of each swap and failure.

        ``wanted(model_version)``, when given, decides at each poll whether the alias's version
        is loaded at all (the canary: only while it has a share); when it says no, the model is
        let go and nothing is downloaded.
        """
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
        self._wanted = wanted
        self.target: Any = None  # the registry's model version the alias pointed at last poll
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
        self.target = mv
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
                    if self._wanted is not None and not self._wanted(self.target):
                        self._let_go(current)
                        return False
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

    def _let_go(self, current: LoadedModel | None) -> None:
        """Not wanted now: drop the model (its memory goes with the last request using it)."""
        self.waiting_for = f"{self.ref.uri} is not wanted now (no canary share)"
        self.last_error = None
        if current is not None:
            self._current = None
            logger.info("%s version %s let go: no share of traffic", self.ref.uri, current.version)

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
