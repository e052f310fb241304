"""Answering photos: the server, batch prediction, drift scores and the Triton repository."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from carinspect.cli.app import ParamsOpt, app, read_params
from carinspect.config import Params
from carinspect.contracts.folders import ExportDir
from carinspect.errors import InputError


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
) -> None:
    """Serve MODEL_URI (default models:/carinspect@champion) over HTTP; settings from the env."""
    import uvicorn

    from carinspect.serving.app import create_app
    from carinspect.serving.protocol import protocol_with
    from carinspect.serving.settings import ServeSettings

    settings = ServeSettings()
    # one process: the batcher needs every request in one place; scale with replicas
    uvicorn.run(
        create_app(settings), host=host, port=port, log_config=None,
        access_log=settings.access_log, timeout_graceful_shutdown=10,
        http=protocol_with(settings.header_timeout_s),  # headers due in HEADER_TIMEOUT_S
        limit_concurrency=settings.max_concurrency,
        timeout_keep_alive=max(1, round(settings.keepalive_timeout_s)),
    )  # fmt: skip


@app.command()
def predict(
    target: Annotated[
        str, typer.Argument(help="An image, a folder of images, or s3://bucket/prefix.")
    ],
    out: Annotated[
        Path,
        typer.Option(help="predictions.json or predictions.csv to write; - prints JSON here."),
    ] = Path("predictions.json"),
    explain: Annotated[
        Path | None,
        typer.Option(help="A folder for each photo with the heatmap of its answer laid on it."),
    ] = None,
) -> None:
    """Predict images with MODEL_URI's model, as the server would, without HTTP.

    On a folder with one subfolder per class, also prints accuracy and a confusion table
    against the folder names. With --explain, each answered photo is also drawn with the
    heatmap of its label (where the model found it) into that folder.
    """
    from carinspect.serving.batch_predict import confusion_text, folder_truth, label_counts
    from carinspect.serving.loaded import ModelLoadError
    from carinspect.serving.model_store import ModelStore
    from carinspect.serving.settings import ServeSettings

    settings = ServeSettings()
    if not settings.ort_intra_op_threads:  # one image decoded at a time: inference gets every CPU
        settings = settings.model_copy(update={"ort_intra_op_threads": settings.cpus})
    store = ModelStore(settings)
    if not store.refresh() or store.current is None:
        raise ModelLoadError(
            f"{store.last_error or settings.model_uri + ': no model'}; set MODEL_URI to "
            f"models:/<name>@<alias>, models:/<name>/<version> or a folder with {ExportDir.ONNX} "
            f"and {ExportDir.CARD}"
        )
    model = store.current
    rows = _predict_to(model, target, out, settings, explain)
    failed = sum(1 for r in rows if "error" in r)
    per_task = label_counts(model, rows)
    counts = (
        {f"{t}:{label}": n for t, c in per_task.items() for label, n in c.items()}
        if model.multitask
        else next(iter(per_task.values()), {})
    )
    version = f"version {model.version}" if model.version else str(model.folder)
    to_stdout = str(out) == "-"
    typer.echo(
        f"{len(rows)} inputs, {failed} unusable, labels {counts}; {version}"
        + ("" if to_stdout else f"; written to {out}")
        + (f"; heatmaps in {explain}" if explain is not None else ""),
        err=to_stdout,
    )
    for task, classes in (
        [(t.name, t.classes) for t in model.tasks] if model.multitask else [("", model.classes)]
    ):
        for line in confusion_text(folder_truth(target, rows, classes), rows, classes, task):
            typer.echo(line, err=to_stdout)


def _version_uri(
    command: str, p: Params, version: str | None, alias: str | None, model_uri: str | None
) -> str:
    """The MODEL_URI that --version, --alias or --model-uri names (default: the champion)."""
    if sum(x is not None for x in (version, alias, model_uri)) > 1:
        raise InputError(f"{command}: give one of --version, --alias or --model-uri")
    name = p.register_.model_name
    return model_uri or (
        f"models:/{name}/{version}" if version else f"models:/{name}@{alias or p.promote.alias}"
    )


UseVersionOpt = Annotated[str | None, typer.Option(help="Registered version to use.")]
AliasOpt = Annotated[
    str | None, typer.Option(help="Alias to use (default: promote.alias, the champion).")
]
ModelUriOpt = Annotated[
    str | None, typer.Option(help="Any MODEL_URI instead (e.g. the models/export folder).")
]


@app.command()
def drift(
    target: Annotated[
        str,
        typer.Argument(help="A folder of photos, s3://bucket/prefix, or a FEEDBACK_DIR log."),
    ],
    params: ParamsOpt = Path("params.yaml"),
    version: UseVersionOpt = None,
    alias: AliasOpt = None,
    model_uri: ModelUriOpt = None,
    out: Annotated[Path | None, typer.Option(help="Also write the report as JSON here.")] = None,
    fail_on_alert: Annotated[
        bool, typer.Option(help="Exit with status 1 when any score is above the alert level.")
    ] = False,
) -> None:
    """Drift scores of a set of photos against a registered version's training profile."""
    from carinspect.io import write_json_atomic
    from carinspect.serving.drift_check import drift_report, load_for_drift, photos_in
    from carinspect.serving.settings import ServeSettings

    uri = _version_uri("drift", read_params(params), version, alias, model_uri)
    items = photos_in(target)
    model = load_for_drift(uri, len(items))
    report = drift_report(model, target, items, ServeSettings())
    if out is not None:
        write_json_atomic(out, report.to_json())
    typer.echo(report.text())
    if fail_on_alert and report.alerts:
        raise typer.Exit(1)


@app.command("export-triton")
def export_triton(
    out: Annotated[
        str, typer.Option(help="Repository to write into: a folder or s3://bucket/prefix.")
    ],
    params: ParamsOpt = Path("params.yaml"),
    version: UseVersionOpt = None,
    alias: AliasOpt = None,
    model_uri: ModelUriOpt = None,
) -> None:
    """Write a Triton model repository entry (config.pbtxt, the ONNX model, model.json)."""
    from carinspect.serving.model_store import ModelStore
    from carinspect.serving.opening import read_meta
    from carinspect.serving.settings import ServeSettings
    from carinspect.serving.triton import publish, write_repository

    p = read_params(params)
    uri = _version_uri("export-triton", p, version, alias, model_uri)
    store = ModelStore(ServeSettings(MODEL_URI=uri))
    found, folder = store.fetch()
    _, card = read_meta(folder)
    number = int(found) if found and found.isdigit() else 1
    if out.startswith("s3://"):
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            entry = write_repository(folder, card, p.triton, Path(tmp), number)
            where = publish(entry, out)
    else:
        where = str(write_repository(folder, card, p.triton, Path(out), number))
    typer.echo(f"{uri} (version {number}) -> {where}")


@app.command("triton-predict")
def triton_predict(
    target: Annotated[
        str, typer.Argument(help="An image, a folder of images, or s3://bucket/prefix.")
    ],
    repository: Annotated[
        Path, typer.Option(help="The repository (or its model folder) export-triton wrote.")
    ],
    url: Annotated[
        str | None,
        typer.Option(help="Triton's HTTP endpoint (host:8000); none: onnxruntime in-process."),
    ] = None,
    out: Annotated[Path, typer.Option(help="predictions.json or predictions.csv to write.")] = Path(
        "predictions.json"
    ),
) -> None:
    """Predict images through Triton with the answers `carinspect serve` gives."""
    from carinspect.serving.settings import ServeSettings
    from carinspect.serving.triton_client import open_triton_model

    settings = ServeSettings()
    model = open_triton_model(repository, url, settings)
    rows = _predict_to(model, target, out, settings)
    failed = sum(1 for r in rows if "error" in r)
    typer.echo(f"{len(rows)} inputs, {failed} unusable; via {model.provider}; written to {out}")


def _predict_to(
    model: Any, target: str, out: Path, settings: Any, explain: Path | None = None
) -> list[dict[str, Any]]:
    """Answer every image under ``target`` with ``model`` (server limits) and write ``out``."""
    from carinspect.data.decoding.images import ImageLimits
    from carinspect.serving.batch_predict import list_inputs, predict_inputs, write_predictions

    limits = ImageLimits(max_pixels=settings.max_pixels, max_bytes=settings.max_upload_bytes)
    rows = predict_inputs(model, list_inputs(target), limits, settings.max_batch_size, explain)
    if str(out) == "-":
        typer.echo(json.dumps(rows, indent=2))
    else:
        write_predictions(rows, out, model)
    return rows
