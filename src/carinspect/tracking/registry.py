"""Model registry: log the exported model into its training run, register a version, tag, alias."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, get_args

import numpy as np

from carinspect.config import GateMetric, Settings
from carinspect.contracts.cards import ModelCard
from carinspect.contracts.folders import ExportDir
from carinspect.errors import InputError
from carinspect.tracking.lifecycle import bound_retries

logger = logging.getLogger(__name__)

GATE_METRICS: tuple[str, ...] = get_args(GateMetric)
RUN_COPY = "export"  # where a training run holds its exported model.onnx and model.json
ONNX_DIGEST = "export.sha256"  # model.onnx + model.json: the tag that makes register idempotent


@dataclass(frozen=True)
class RegisteredVersion:
    """What register writes to registered.json."""

    name: str
    version: str
    run_id: str
    model_uri: str
    alias: str


def params_hash(params: dict[str, str]) -> str:
    """Stable digest of a run's parameters (sorted JSON)."""
    return "sha256:" + hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()


def register_version(
    settings: Settings,
    run_id: str,
    name: str,
    export_dir: Path,
    card: ModelCard,
    tags: dict[str, str],
    alias: str,
) -> RegisteredVersion:
    """Log ``export_dir``'s model.onnx (+ model.json) to ``run_id`` and register it under ``name``.

    Once per (run, ONNX digest): a version that already holds it gets the alias instead.
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    bound_retries()
    export = ExportDir(export_dir)
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    client = MlflowClient()
    digest = _export_digest(export)
    version = _registered_before(client, name, run_id, digest)
    if version is None:
        version = _register(client, run_id, name, export, card, {**tags, ONNX_DIGEST: digest})
    else:
        logger.info(
            "%s version %s already holds this export of run %s: completing its alias",
            name, version, run_id,
        )  # fmt: skip
    client.set_registered_model_alias(name, alias, version)
    logger.debug("registered %s version %s (alias %s) from run %s", name, version, alias, run_id)
    return RegisteredVersion(name, version, run_id, f"models:/{name}/{version}", alias)


def _export_digest(export: ExportDir) -> str:
    """The export by content: the graph and the model card (its rule, classes, preprocessing)."""
    digest = hashlib.sha256()
    for path in (export.onnx, export.card):
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return "sha256:" + digest.hexdigest()


def _registered_before(client: Any, name: str, run_id: str, digest: str) -> str | None:
    """The version of ``name`` that already holds this run's export with ``digest``, if any.

    Register is idempotent: a rerun after a kill between registering and moving the alias finds
    the version instead of adding a second, promotable copy of the same model.
    """
    from mlflow.exceptions import MlflowException

    try:
        found = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    same = [v for v in found if (v.tags or {}).get(ONNX_DIGEST) == digest]
    ready = [v for v in same if str(v.status) == "READY"]
    return str(max(int(v.version) for v in ready)) if ready else None


def _register(
    client: Any, run_id: str, name: str, export: ExportDir, card: ModelCard, tags: dict[str, str]
) -> str:
    """Log the model into run ``run_id`` (without reopening it) and register a new version."""
    import mlflow
    import onnx
    from mlflow.models import infer_signature

    from carinspect.contracts.onnx_names import INPUT
    from carinspect.modeling.onnx_export import session

    size = card.preprocess.img_size
    example = np.zeros((1, 3, size, size), dtype=np.float32)  # one image: keeps the example small
    outputs = session(export.onnx).run(None, {INPUT: example})
    signature = infer_signature({INPUT: example}, dict(zip(card.outputs, outputs, strict=True)))
    # the logged model belongs to the run's experiment; the run's status is never touched
    mlflow.set_experiment(experiment_id=client.get_run(run_id).info.experiment_id)
    # the copy the version's onnx.run_artifacts tag names: export logs it when it was given
    # the run; an export made without one gets it here
    logged = {a.path for a in client.list_artifacts(run_id, RUN_COPY)}
    extra = [export.card] + ([export.mc_head] if card.mc_dropout is not None else [])
    extra += [export.drift] if export.drift.is_file() else []  # exports before it have none
    extra += [export.root / card.files["int8"]] if "int8" in card.files else []  # passed its gate
    if f"{RUN_COPY}/{export.ONNX}" not in logged:
        for file in (export.onnx, *extra):
            client.log_artifact(run_id, str(file), artifact_path=RUN_COPY)
    info = mlflow.onnx.log_model(
        onnx.load(str(export.onnx)),
        name="model",
        signature=signature,
        input_example={INPUT: example},
        save_as_external_data=False,
        # what mlflow.pyfunc loads it with: the provider export checked parity on, not a
        # CUDA it never ran on (carinspect serve picks its own: ORT_PROVIDERS)
        onnx_execution_providers=checked_providers(card.to_json()),
        extra_files=[str(f) for f in extra],  # as ExportDir.LOGGED_*
        run_id=run_id,
    )
    said = io.StringIO()
    with contextlib.redirect_stderr(said):  # MLflow prints "Successfully registered ..." there
        version = mlflow.register_model(info.model_uri, name, tags=tags)
    for line in said.getvalue().splitlines():
        logger.debug("mlflow: %s", line)
    return str(version.version)


def version_tags(
    settings: Settings, run_id: str, model_json: dict[str, Any], metrics: dict[str, Any]
) -> dict[str, str]:
    """Lineage and headline figures for a model version."""
    from mlflow.tracking import MlflowClient

    run = MlflowClient(settings.mlflow_tracking_uri).get_run(run_id)
    tags = {k: str(v) for k, v in model_json.get("lineage", {}).items()}
    tags["params.hash"] = params_hash(run.data.params)
    kfp_run = settings.kfp_run_id or run.data.tags.get("kfp.run_id")
    if kfp_run:  # the pipeline run that trained (and registers) this version
        tags["kfp.run_id"] = str(kfp_run)
    for split in ("val", "test"):
        for key in (*GATE_METRICS, "ece", "log_loss"):
            value = metrics.get(split, {}).get(key)
            if value is not None:
                tags[f"metrics.{split}.{key}"] = f"{value:.6f}"
    for task in model_json.get("tasks") or []:  # several tasks: each one's figures and rule
        for split in ("val", "test"):
            figures = metrics.get("tasks", {}).get(task["name"], {}).get(split, {})
            for key in GATE_METRICS:
                if figures.get(key) is not None:
                    tags[f"metrics.{task['name']}.{split}.{key}"] = f"{figures[key]:.6f}"
        tags[f"decision.{task['name']}"] = _rule_tag(task["decision"])
        tags[f"classes.{task['name']}"] = ",".join(task["classes"])
    if model_json.get("tasks"):
        tags["tasks"] = ",".join(t["name"] for t in model_json["tasks"])
    else:
        tags["decision"] = _rule_tag(model_json.get("decision", {}))
        tags["classes"] = ",".join(model_json["classes"])
    tags["onnx.checked_providers"] = ",".join(checked_providers(model_json))
    for precision, figures in sorted(model_json.get("parity", {}).items()):
        tags[f"onnx.parity.{precision}.max_abs_diff"] = f"{figures['max_abs_diff']:.3g}"
    tags["onnx.run_artifacts"] = f"runs:/{run_id}/{RUN_COPY}"  # the copy in the run
    return tags


def _rule_tag(decision: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in decision.items() if k != "classes"}, sort_keys=True)


def checked_providers(model_json: dict[str, Any]) -> list[str]:
    """The onnxruntime execution providers the export's parity check ran the model on."""
    parity = model_json.get("parity", {})
    found = sorted(
        {str(f["execution_provider"]) for f in parity.values() if "execution_provider" in f}
    )
    return found or ["CPUExecutionProvider"]  # exports made before the provider was recorded


def to_json(v: RegisteredVersion) -> dict[str, str]:
    """registered.json content."""
    return asdict(v)


@dataclass(frozen=True)
class VersionRow:
    """One line of `carinspect models`."""

    version: str
    aliases: list[str]
    created: str
    run_id: str
    metrics: dict[str, float]
    lineage: dict[str, str]


LINEAGE_KEYS = (
    "data.digest",
    "data.source",
    "git.commit",
    "git.dirty",
    "kfp.run_id",
    "params.hash",
)


def get_registered(client: Any, name: str) -> Any:
    """The registered model ``name``, or a clear error naming it."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(name)
    except MlflowException as err:
        if err.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise  # unreachable server, refused credentials: the CLI names those
        raise InputError(
            f"registered model {name!r} not found in {client.tracking_uri}: register a version "
            "first (dvc repro), or check MLFLOW_TRACKING_URI"
        ) from err


def list_versions(client: Any, name: str) -> list[VersionRow]:
    """Every version of ``name``, newest first, with aliases, headline metrics and lineage."""
    from datetime import UTC, datetime

    by_version: dict[str, list[str]] = {}
    for alias, v in (get_registered(client, name).aliases or {}).items():
        by_version.setdefault(str(v), []).append(alias)
    found: list[Any] = []
    token = None
    while True:
        page = client.search_model_versions(f"name = '{name}'", max_results=1000, page_token=token)
        found.extend(page)
        token = page.token
        if not token:
            break
    rows = []
    for mv in sorted(found, key=lambda m: int(m.version), reverse=True):
        tags = mv.tags or {}
        created = datetime.fromtimestamp(mv.creation_timestamp / 1000, UTC)
        rows.append(
            VersionRow(
                version=str(mv.version),
                aliases=sorted(by_version.get(str(mv.version), [])),
                created=created.isoformat(timespec="seconds"),
                run_id=str(mv.run_id or ""),
                metrics={
                    k.removeprefix("metrics."): float(v)
                    for k, v in tags.items()
                    if k.startswith("metrics.")
                },
                lineage={k: tags[k] for k in LINEAGE_KEYS if k in tags},
            )
        )
    return rows
