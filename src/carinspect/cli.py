"""``carinspect``: one command per pipeline stage, plus registry, serving, KFP and data commands.

This is the adapter dvc.yaml calls: it reads params.yaml into the typed config and hands each
stage its section and paths. Stages never read params.yaml or the environment themselves.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from carinspect.config import Params, load_params
from carinspect.contracts.folders import (
    EvaluateDir,
    ExportDir,
    IngestDir,
    SplitDir,
    ThresholdDir,
    TrainDir,
)
from carinspect.errors import InputError, OutputError
from carinspect.logs import configure_logging
from carinspect.stages.spec import SPEC
from carinspect.tracking.lifecycle import Terminated, bound_retries

logger = logging.getLogger("carinspect")

app = typer.Typer(
    help="carinspect: labelled vehicle photos in, a served and versioned classifier out.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: flags as flags (the rich table showed `--json <bool>`)
)
data_app = typer.Typer(help="Dataset utilities.", no_args_is_help=True)
app.add_typer(data_app, name="data")
SweepOpt = Annotated[
    bool,
    typer.Option("--sweep", help="The sweep pipeline (tune.* trials in parallel, the best on)."),
]
pipeline_app = typer.Typer(help="The Kubeflow Pipelines pipeline: compile, run locally, submit.")
app.add_typer(pipeline_app, name="pipeline")
webhook_app = typer.Typer(help="MLflow webhooks for alias moves (optional; serving also polls).")
app.add_typer(webhook_app, name="webhook")
feedback_app = typer.Typer(
    help="Served photos (FEEDBACK_DIR) back into a dataset.", no_args_is_help=True
)
app.add_typer(feedback_app, name="feedback")
store_app = typer.Typer(
    help="The embedded MLflow store (mlflow.db + mlruns/).", no_args_is_help=True
)
app.add_typer(store_app, name="store")
DbOpt = Annotated[Path, typer.Option("--db", help="The embedded store's database file.")]

# each stage's output at its default place (stages/spec.py): the default paths of the options
_INGEST = IngestDir(SPEC["ingest"].out)
_SPLIT = SplitDir(SPEC["split"].out)
_TRAIN = TrainDir(SPEC["train"].out)
_EVALUATE = EvaluateDir(SPEC["evaluate"].out)
_THRESHOLD = ThresholdDir(SPEC["threshold"].out)
_EXPORT = ExportDir(SPEC["export"].out)

ParamsOpt = Annotated[
    Path, typer.Option("--params", "-p", help="params.yaml to read (one section per stage).")
]
CheckpointOpt = Annotated[Path, typer.Option(help="Checkpoint from train.")]
IngestOpt = Annotated[Path, typer.Option(help="Ingest output folder (images/, manifest.csv).")]
SplitsOpt = Annotated[Path, typer.Option(help="splits.csv from split.")]
RunOpt = Annotated[
    Path | None, typer.Option("--run", help="train's run.json: the MLflow run to append to.")
]
OutOpt = Annotated[Path, typer.Option(help="Output folder.")]


def _params(path: Path) -> Params:
    return load_params(path)


def _run_id(run_json: Path | None, required: bool = False) -> str | None:
    """The MLflow run train recorded, checked against the tracking store; None without run.json."""
    from carinspect.config import Settings
    from carinspect.tracking.runs import check_run

    if run_json is None or (not required and not run_json.is_file()):
        return None
    return check_run(run_json, Settings())


# typer carries its own copy of click: its usage errors derive from this class, not click's
_CLICK_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def _version(shown: bool) -> None:
    """``--version``: the installed carinspect's version, then exit."""
    if shown:
        from importlib.metadata import version

        typer.echo(f"carinspect {version('carinspect')}")
        raise typer.Exit()


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    configure_logging(verbose)


@app.command()
def ingest(
    params: ParamsOpt = Path("params.yaml"),
    out: Annotated[
        Path, typer.Option(help="Output folder: images/, manifest.csv, report.*")
    ] = _INGEST.root,
    source: Annotated[
        str | None,
        typer.Option(help="Override data.source (folder, CSV, COCO, s3://, dvc://, demo)."),
    ] = None,
) -> None:
    """Decode and validate every image of data.source into a resized cache + manifest.csv."""
    from carinspect.stages import ingest as stage

    cfg = _params(params)
    data = cfg.data if source is None else cfg.data.model_copy(update={"source": source})
    result = stage.run(data, cfg.ingest, out)
    typer.echo(
        f"{result.images} images in {len(result.classes)} classes {list(result.classes)}; "
        f"{result.dropped} dropped; report: {result.out / 'report.md'}"
    )
    if result.shortcut_warning:
        typer.echo("WARNING: a trivial feature separates the classes; see the report.", err=True)


@app.command()
def split(
    params: ParamsOpt = Path("params.yaml"),
    manifest: Annotated[Path, typer.Option(help="manifest.csv from ingest.")] = _INGEST.manifest,
    out: Annotated[Path, typer.Option(help="Output folder: splits.csv, report.*")] = _SPLIT.root,
) -> None:
    """Assign images to train/val/test: stratified, near-duplicates and groups kept together."""
    from carinspect.data.manifest import read_manifest
    from carinspect.stages import split as stage
    from carinspect.stages.threshold import check_rule

    cfg = _params(params)
    if manifest.is_file():  # the decision rule's classes, checked now rather than after training
        check_rule(cfg.threshold, sorted({r.label for r in read_manifest(manifest)}))
    result = stage.run(cfg.split, manifest, out)
    typer.echo(
        ", ".join(f"{s}: {sum(c.values())}" for s, c in result.counts.items())
        + f"; written to {result.splits}"
    )


@app.command()
def train(
    params: ParamsOpt = Path("params.yaml"),
    ingest: IngestOpt = _INGEST.root,
    splits: SplitsOpt = _SPLIT.splits,
    out: Annotated[
        Path, typer.Option(help="Output folder: checkpoints, metrics, history.")
    ] = _TRAIN.root,
    resume: Annotated[
        bool | None,
        typer.Option(
            "--resume/--fresh",
            help="Continue from OUT/last.pt, or start over. Default: continue when last.pt is "
            "of this training (same params and data) and unfinished (a killed or failed run).",
        ),
    ] = None,
    nproc: Annotated[
        int | None, typer.Option(help="Processes (one per GPU); default train.nproc.")
    ] = None,
    stop_after: Annotated[
        int | None, typer.Option(help="Stop this invocation after N epochs (resume later).")
    ] = None,
    stop_after_steps: Annotated[
        int | None,
        typer.Option(
            help="Stop after N optimizer steps, inside an epoch if need be (resume later)."
        ),
    ] = None,
) -> None:
    """Train a timm classifier (DDP when nproc > 1), tracked in MLflow; resumable."""
    from carinspect.config import Settings
    from carinspect.stages import train as stage

    cfg = _params(params)
    result = stage.run(
        cfg.model,
        cfg.train,
        cfg.mlflow,
        Settings(),
        ingest,
        splits,
        out,
        resume=resume,
        stop_after=stop_after,
        nproc=nproc,
        stop_after_steps=stop_after_steps,
    )
    from carinspect.training.distributed import env_info

    if not env_info().primary:
        return  # under torchrun every rank returns the same result; rank 0 reports it
    if not result.epochs_run:
        typer.echo(f"stopped inside the first epoch; {result.last} holds the place (--resume)")
        return
    m = result.metrics
    typer.echo(
        f"best epoch {result.best_epoch}/{result.epochs_run}: val accuracy {m['val_accuracy']:.3f}, "
        f"val macro-F1 {m['val_macro_f1']:.3f}; MLflow run {result.run_id}; checkpoint {result.best} "
        f"(weights sha256 {result.weights_sha256[:12]})"
    )


@app.command()
def evaluate(
    params: ParamsOpt = Path("params.yaml"),
    checkpoint: CheckpointOpt = _TRAIN.best,
    ingest: IngestOpt = _INGEST.root,
    splits: SplitsOpt = _SPLIT.splits,
    run_json: RunOpt = _TRAIN.run_ref,
    out: OutOpt = _EVALUATE.root,
) -> None:
    """Metrics, plots, calibration and predictions on val and test; logged to the training run."""
    from carinspect.config import Settings
    from carinspect.stages import evaluate as stage

    run_id = _run_id(run_json)
    cfg = _params(params).evaluate
    result = stage.run(cfg, Settings(), checkpoint, ingest, splits, out, run_id)
    from carinspect.evaluation.verdict import describe

    per_task = result.metrics.get("tasks") or {"": result.metrics}
    for (task, figures), verdict in zip(per_task.items(), result.verdict.tasks, strict=True):
        t, temperature = figures["test"], figures["calibration"]["temperature"]
        named = f"{task}: " if task else ""
        d = 2 if t["images"] < cfg.small_sample else 3  # no third decimal on a few photos
        typer.echo(
            f"{named}test ({t['images']} photos): accuracy {t['accuracy']:.{d}f}, macro-F1 "
            f"{t['macro_f1']:.{d}f}, ECE {t['ece']:.{d}f} (temperature {temperature:.3g})"
        )
        typer.echo(f"{named}verdict: {describe(verdict)}")
        for line in verdict.warnings:
            typer.echo(f"WARNING: {named}{line}", err=True)
        for line in verdict.problems:
            typer.echo(f"WARNING: {named}{line}", err=True)
    if not result.verdict.passed:
        typer.echo(
            "WARNING: register refuses this model (register.require_better: false, or "
            "`carinspect register --allow-no-better`, registers it anyway)",
            err=True,
        )
    typer.echo(f"written to {result.out}")


@app.command()
def tune(
    params: ParamsOpt = Path("params.yaml"),
    ingest: IngestOpt = _INGEST.root,
    splits: SplitsOpt = _SPLIT.splits,
    out: OutOpt = Path("models/tune"),
) -> None:
    """Search the `tune.space` params with Optuna (run again to continue a cut-off sweep)."""
    from carinspect.config import Settings
    from carinspect.stages import tune as stage

    result = stage.run(_params(params), Settings(), ingest, splits, out)
    counts = ", ".join(f"{n} {k}" for k, n in result.counts.items())
    typer.echo(
        f"best trial {result.best_trial}: {_params(params).tune.objective} "
        f"{result.best_value:.4f} with {_rounded(result.best_params)} ({counts}; MLflow parent run "
        f"{result.parent_run_id})\nwritten to {result.overlay}; train the final model with "
        f"them:\n  {result.command}"
    )


def _rounded(values: dict[str, Any]) -> str:
    """``{key: value}`` with floats to four significant digits, for reading."""
    shown = (f"{k}: {v:.4g}" if isinstance(v, float) else f"{k}: {v!r}" for k, v in values.items())
    return "{" + ", ".join(shown) + "}"


@app.command()
def threshold(
    params: ParamsOpt = Path("params.yaml"),
    predictions: Annotated[
        Path, typer.Option(help="predictions.csv from evaluate.")
    ] = _EVALUATE.predictions,
    run_json: RunOpt = _TRAIN.run_ref,
    out: OutOpt = _THRESHOLD.root,
) -> None:
    """Choose the operating threshold and uncertainty band on val; report val and test."""
    from carinspect.config import Settings
    from carinspect.stages import threshold as stage

    run_id = _run_id(run_json)
    from carinspect.stages.summary import describe_rule

    spec = stage.run(_params(params).threshold, Settings(), predictions, out, run_id).spec
    for task, rule in (spec.get("tasks") or {"": spec}).items():
        typer.echo(f"{task}: {describe_rule(rule)}" if task else describe_rule(rule))


@app.command()
def export(
    params: ParamsOpt = Path("params.yaml"),
    checkpoint: CheckpointOpt = _TRAIN.best,
    calibration: Annotated[
        Path, typer.Option(help="calibration.json from evaluate.")
    ] = _EVALUATE.calibration,
    threshold_json: Annotated[
        Path, typer.Option("--threshold", help="threshold.json.")
    ] = _THRESHOLD.rule,
    ingest: IngestOpt = _INGEST.root,
    splits: SplitsOpt = _SPLIT.splits,
    run_json: RunOpt = _TRAIN.run_ref,
    out: OutOpt = _EXPORT.root,
) -> None:
    """Export to ONNX (+ model.json) after a parity check against the checkpoint on val images."""
    from carinspect.config import Settings
    from carinspect.stages import export as stage

    run_id = _run_id(run_json)
    result = stage.run(
        _params(params).export,
        Settings(),
        checkpoint,
        calibration,
        threshold_json,
        ingest,
        splits,
        out,
        run_id,
    )
    from carinspect.stages.summary import describe_parity

    typer.echo(f"parity {describe_parity(result.parity)}; written to {result.out}")


@app.command()
def register(
    params: ParamsOpt = Path("params.yaml"),
    export_dir: Annotated[
        Path, typer.Option("--export", help="Export output folder.")
    ] = _EXPORT.root,
    metrics: Annotated[Path, typer.Option(help="metrics.json from evaluate.")] = _EVALUATE.metrics,
    run_json: RunOpt = _TRAIN.run_ref,
    out: Annotated[Path, typer.Option(help="registered.json to write.")] = SPEC["register"].out,
    allow_no_better: Annotated[
        bool,
        typer.Option(
            help="Register even if evaluate's verdict found the model no better than the "
            "baseline (register.require_better: false does the same)."
        ),
    ] = False,
) -> None:
    """Register the exported model as a new version (alias challenger) with lineage tags."""
    from carinspect.config import Settings
    from carinspect.stages import register as stage

    run_id = _run_id(run_json, required=True)
    if run_id is None:
        raise InputError("--run: the training run's run.json is needed to register")
    cfg = _params(params).register_
    if allow_no_better:
        cfg = cfg.model_copy(update={"require_better": False})
    v = stage.run(cfg, Settings(), export_dir, metrics, run_id, out)
    typer.echo(f"{v.name} version {v.version} (alias {v.alias}) from run {v.run_id}: {v.model_uri}")


@app.command()
def summary(
    out: Annotated[Path | None, typer.Option(help="Also write the summary to this file.")] = None,
) -> None:
    """The run in a dozen lines: data, best epoch, test vs baseline, verdict, rule, version."""
    from carinspect.stages.summary import Folders, run

    text = run(Folders(), out)
    if not text:
        raise InputError("nothing to summarise: no stage output here (run `dvc repro` first)")
    typer.echo("\n".join(text))


VersionOpt = Annotated[
    str | None, typer.Option("--version", help="Model version (default: the challenger).")
]
ReasonOpt = Annotated[str | None, typer.Option(help="Why: recorded in the audit trail.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _registry(params: Path) -> tuple[Params, Any, str]:
    """Params, an MlflowClient on MLFLOW_TRACKING_URI, and who is acting."""
    from carinspect.config import Settings
    from carinspect.tracking.audit import actor
    from carinspect.tracking.promotion import client_for

    settings = Settings()
    return _params(params), client_for(settings.mlflow_tracking_uri), actor(settings.user)


@app.command()
def promote(
    params: ParamsOpt = Path("params.yaml"),
    version: VersionOpt = None,
    force: Annotated[bool, typer.Option(help="Move the alias even if the gate fails.")] = False,
    reason: ReasonOpt = None,
) -> None:
    """Move alias champion to a version (default: the challenger) if it passes the gate."""
    from carinspect.tracking import promotion

    p, client, by = _registry(params)
    name = p.register_.model_name
    move = promotion.promote(
        client, name, p.promote, version, by,
        candidate_alias=p.register_.alias, force=force, reason=reason,
    )  # fmt: skip
    if move is None:
        from carinspect.tracking.audit import alias_target

        held = version or alias_target(client, name, p.promote.alias)
        typer.echo(f"{name} version {held} already has alias {p.promote.alias}: nothing to do")
        return
    typer.echo(move.describe())
    typer.echo(json.dumps(move.gate, sort_keys=True))


@app.command()
def rollback(params: ParamsOpt = Path("params.yaml"), reason: ReasonOpt = None) -> None:
    """Move alias champion back to the previous champion in the audit trail."""
    from carinspect.tracking import promotion

    p, client, by = _registry(params)
    move = promotion.rollback(client, p.register_.model_name, p.promote.alias, by, reason)
    typer.echo(move.describe())


@app.command()
def status(
    params: ParamsOpt = Path("params.yaml"),
    last: Annotated[int, typer.Option(help="Audit entries to show.", min=0)] = 10,
    as_json: JsonOpt = False,
) -> None:
    """Aliases of the registered model and the champion's audit trail (records outside moves)."""
    from dataclasses import asdict

    from carinspect.tracking.audit import read_trail, reconcile
    from carinspect.tracking.registry import get_registered

    p, client, _ = _registry(params)
    name, alias = p.register_.model_name, p.promote.alias
    reconcile(client, name, alias, observer="carinspect status")
    aliases = {k: str(v) for k, v in (get_registered(client, name).aliases or {}).items()}
    trail = read_trail(client, name, alias)[-last:] if last else []
    if as_json:
        doc = {"model": name, "aliases": aliases, "trail": [asdict(m) for m in trail]}
        typer.echo(json.dumps(doc, indent=2))
        return
    typer.echo(f"model {name}")
    for k, v in sorted(aliases.items()):
        typer.echo(f"  {k}: version {v}")
    typer.echo(f"{alias} moves (latest {len(trail)}):")
    for move in trail:
        typer.echo(f"  {move.describe()}")


@app.command()
def models(
    params: ParamsOpt = Path("params.yaml"),
    as_json: JsonOpt = False,
    limit: Annotated[int, typer.Option(min=0, help="Show the newest N versions only; 0: all.")] = 0,
) -> None:
    """Versions of the registered model with aliases, key metrics and lineage."""
    from dataclasses import asdict

    from carinspect.tracking.registry import list_versions

    p, client, _ = _registry(params)
    rows = list_versions(client, p.register_.model_name)
    if limit:
        rows = rows[:limit]  # newest first
    if as_json:
        typer.echo(json.dumps([asdict(r) for r in rows], indent=2))
        return
    metric = f"{p.promote.split}.{p.promote.metric}"
    header = ("version", "aliases", "created", metric, "git", "data", "run")
    table = [header] + [
        (
            r.version,
            ",".join(r.aliases) or "-",
            r.created,
            f"{r.metrics[metric]:.4f}" if metric in r.metrics else "-",
            r.lineage.get("git.commit", "-")[:8]
            + ("+dirty" if r.lineage.get("git.dirty") == "true" else ""),
            r.lineage.get("data.digest", "-").removeprefix("sha256:")[:12],
            r.run_id,
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        typer.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


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
) -> None:
    """Predict images with MODEL_URI's model, as the server would, without HTTP.

    On a folder with one subfolder per class, also prints accuracy and a confusion table
    against the folder names.
    """
    from carinspect.serving.model_store import ModelLoadError, ModelStore
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
    rows = _predict_to(model, target, out, settings)
    failed = sum(1 for r in rows if "error" in r)
    counts: dict[str, int] = {}
    for r in rows:
        for name, got in (r.get("tasks") or ({"": r} if "label" in r else {})).items():
            key = f"{name}:{got['label']}" if name else got["label"]
            counts[key] = counts.get(key, 0) + 1
    version = f"version {model.version}" if model.version else str(model.folder)
    to_stdout = str(out) == "-"
    typer.echo(
        f"{len(rows)} inputs, {failed} unusable, labels {counts}; {version}"
        + ("" if to_stdout else f"; written to {out}"),
        err=to_stdout,
    )
    from carinspect.serving.batch_predict import confusion_text, folder_truth

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

    uri = _version_uri("drift", _params(params), version, alias, model_uri)
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
    from carinspect.serving.model_store import ModelStore, read_meta
    from carinspect.serving.settings import ServeSettings
    from carinspect.serving.triton import publish, write_repository

    p = _params(params)
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


def _predict_to(model: Any, target: str, out: Path, settings: Any) -> list[dict[str, Any]]:
    """Answer every image under ``target`` with ``model`` (server limits) and write ``out``."""
    from carinspect.data.images import ImageLimits
    from carinspect.serving.batch_predict import list_inputs, predict_inputs, write_predictions

    limits = ImageLimits(max_pixels=settings.max_pixels, max_bytes=settings.max_upload_bytes)
    rows = predict_inputs(model, list_inputs(target), limits, settings.max_batch_size)
    if str(out) == "-":
        typer.echo(json.dumps(rows, indent=2))
    else:
        write_predictions(rows, out, model)
    return rows


ParamPairs = Annotated[
    list[str] | None,
    typer.Option(
        "--param",
        help="key=value: data_version / data_source (pipeline inputs) or a params.yaml key "
        "such as train.epochs=3. Repeatable.",
    ),
]


@pipeline_app.command("compile")
def pipeline_compile(
    params: ParamsOpt = Path("params.yaml"),
    out: Annotated[
        Path | None,
        typer.Option(help="Pipeline YAML to write (default: the committed file)."),
    ] = None,
    sweep: SweepOpt = False,
) -> None:
    """Compile the training pipeline (or the sweep): pipelines/{training,sweep}_pipeline.yaml."""
    from pipelines.commands import PIPELINE_FILE, SWEEP_FILE, compile_pipeline

    target = out or Path(SWEEP_FILE if sweep else PIPELINE_FILE)
    typer.echo(f"pipeline written to {compile_pipeline(params, target, sweep)}")


@pipeline_app.command("run")
def pipeline_run(
    local: Annotated[bool, typer.Option("--local", help="Run here with kfp.local.")] = False,
    params: ParamsOpt = Path("params.yaml"),
    param: ParamPairs = None,
    pipeline_root: Annotated[Path, typer.Option(help="Where task outputs go.")] = Path(
        ".kfp/outputs"
    ),
    sweep: SweepOpt = False,
    runner: Annotated[
        str,
        typer.Option(
            help="subprocess: tasks in this environment; docker: each task in its image "
            "(kfp.image), MLflow reached over HTTP (MLFLOW_TRACKING_URI)."
        ),
    ] = "subprocess",
) -> None:
    """Run the whole pipeline locally (kfp.local); for a cluster use `pipeline submit`."""
    from pipelines.commands import run_local

    if not local:
        raise InputError("pipeline run needs --local (use `carinspect pipeline submit` for KFP)")
    uri = run_local(params, param or [], Path.cwd(), pipeline_root, sweep, runner)
    typer.echo(f"pipeline finished: registered {uri}")


@pipeline_app.command("submit")
def pipeline_submit(
    host: Annotated[
        str, typer.Option(help="Kubeflow Pipelines API, e.g. http://ml-pipeline-ui.kubeflow:80.")
    ],
    params: ParamsOpt = Path("params.yaml"),
    param: ParamPairs = None,
    experiment: Annotated[str | None, typer.Option(help="KFP experiment name.")] = None,
    run_name: Annotated[str | None, typer.Option(help="KFP run name.")] = None,
    sweep: SweepOpt = False,
) -> None:
    """Compile and submit a run of the training (or sweep) pipeline to Kubeflow Pipelines."""
    from pipelines.commands import submit

    run_id = submit(host, params, param or [], Path.cwd(), experiment, run_name, sweep)
    typer.echo(f"submitted run {run_id} to {host}")


@pipeline_app.command("trainjob")
def pipeline_trainjob(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the TrainJob as YAML; create nothing.")
    ] = False,
    params: ParamsOpt = Path("params.yaml"),
    param: ParamPairs = None,
    run_id: Annotated[
        str, typer.Option(help="Pipeline run id the job is named after (KFP_RUN_ID in a pod).")
    ] = "dry-run",
) -> None:
    """Show the Kubeflow Trainer TrainJob that multi-node training (kfp.train.nodes > 1) creates.

    Review it, or check it against your cluster: `... --dry-run | kubectl apply
    --dry-run=server -f -`. The train task creates the job itself during a pipeline run.
    """
    from pipelines.commands import trainjob_yaml

    if not dry_run:
        raise InputError(
            "pipeline trainjob needs --dry-run: the pipeline's train task creates TrainJobs"
        )
    typer.echo(trainjob_yaml(params, param or [], run_id), nl=False)


@webhook_app.command("add")
def webhook_add(
    url: Annotated[str, typer.Argument(help="Receiver, e.g. https://serving/webhooks/mlflow.")],
    name: Annotated[str, typer.Option(help="Webhook name in MLflow.")] = "carinspect-alias",
) -> None:
    """Have the MLflow server POST alias moves to URL, signed with CARINSPECT_WEBHOOK_SECRET."""
    from carinspect.config import Settings
    from carinspect.tracking.promotion import client_for
    from carinspect.tracking.webhooks import create_alias_webhook

    settings = Settings()
    if settings.webhook_secret is None:
        raise InputError("CARINSPECT_WEBHOOK_SECRET is not set: deliveries are signed with it")
    hook = create_alias_webhook(
        client_for(settings.mlflow_tracking_uri),
        name,
        url,
        settings.webhook_secret.get_secret_value(),
    )
    typer.echo(f"webhook {hook.webhook_id} ({hook.name}) -> {hook.url}")


@feedback_app.command("import")
def feedback_import(
    labels: Annotated[
        Path,
        typer.Argument(
            help="A CSV of sha256,label, or a folder of the photos sorted into <class>/."
        ),
    ],
    log: Annotated[str, typer.Option(help="The FEEDBACK_DIR serving kept photos in (or s3://).")],
    params: ParamsOpt = Path("params.yaml"),
    out: Annotated[
        Path | None, typer.Option(help="The feedback dataset folder (default: data.feedback).")
    ] = None,
) -> None:
    """Labelled served photos into the feedback dataset (a new DVC revision ingest reads)."""
    from carinspect.data.feedback import import_feedback

    folder = out or Path(_params(params).data.feedback or "data/feedback")
    r = import_feedback(labels, log, folder)
    typer.echo(
        f"{r.added} added, {r.relabelled} relabelled, {r.unchanged} unchanged: {r.folder} now "
        f"holds {r.classes}"
        + (f"; commit {r.dvc_file} to record this revision" if r.dvc_file else "")
    )


@store_app.command("check")
def store_check(db: DbOpt = Path("mlflow.db")) -> None:
    """Exit 2 when mlflow.db's artifact paths point into another (original) project folder."""
    from carinspect.tracking.store import check

    check(f"sqlite:///{db}")
    typer.echo(f"{db}: artifact paths are under {db.resolve().parent / 'mlruns'} or elsewhere")


@store_app.command("relocate")
def store_relocate(
    db: DbOpt = Path("mlflow.db"),
    old: Annotated[
        Path | None, typer.Option("--from", help="The folder the paths point into (detected).")
    ] = None,
) -> None:
    """Point a copied or moved store's artifact paths at the mlruns/ next to its database."""
    from carinspect.tracking.store import relocate

    moved = relocate(db, old)
    if moved.rows == 0:
        typer.echo(f"{db}: nothing to relocate")
    else:
        typer.echo(
            f"{db}: {moved.rows} artifact paths moved from {moved.old_root} to {moved.new_root}"
        )


@data_app.command("pull")
def data_pull(
    uri: Annotated[str, typer.Argument(help="s3://bucket/prefix to copy from.")],
    folder: Annotated[Path, typer.Argument(help="Local folder to copy into.")],
) -> None:
    """Copy every object under an S3 prefix into a folder (a TrainJob node's inputs)."""
    from carinspect.data.objects import download_tree

    typer.echo(f"{download_tree(uri, folder)} files from {uri} in {folder}")


@data_app.command("push")
def data_push(
    folder: Annotated[Path, typer.Argument(help="Local folder to copy from.")],
    uri: Annotated[str, typer.Argument(help="s3://bucket/prefix to copy to.")],
) -> None:
    """Copy every file under a folder to an S3 prefix (a TrainJob node's outputs)."""
    from carinspect.data.objects import upload_tree

    typer.echo(f"{upload_tree(folder, uri)} files from {folder} in {uri}")


@data_app.command("demo")
def data_demo(
    params: ParamsOpt = Path("params.yaml"),
    out: Annotated[Path, typer.Option(help="Folder to write <class>/<image> into.")] = Path(
        "data/demo"
    ),
    per_class: Annotated[int | None, typer.Option(help="Override data.demo.per_class.")] = None,
) -> None:
    """Write the generated demo dataset as a folder per class (what `data.source: demo` reads)."""
    from carinspect.data.demo import write_demo

    demo = _params(params).data.demo
    if per_class is not None:
        demo = demo.model_copy(update={"per_class": per_class})
    n = write_demo(demo, out)
    typer.echo(f"{n} files written to {out}")


def main() -> None:
    """Console-script entry point: bad input exits 2 with a one-paragraph message."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    bound_retries()  # an unreachable tracking server fails a command in seconds, not minutes
    try:
        code = app(standalone_mode=False)  # a command's typer.Exit(n) comes back as n
    except InputError as err:
        logger.error("%s", err)
        sys.exit(2)
    except OutputError as err:  # no space, read-only, busy: the path and the cause, one line
        logger.error("%s", err)
        sys.exit(1)
    except typer.Abort:
        sys.exit(130)
    except Terminated:  # SIGTERM: the stage cleaned up (staging removed, run ended KILLED)
        logger.error("stopped by SIGTERM")
        sys.exit(143)
    except Exception as err:  # click usage errors carry their own exit code
        if isinstance(err, _CLICK_ERROR):  # a usage error: the usage and one line, no traceback
            err.show()  # type: ignore[attr-defined]
            sys.exit(err.exit_code)  # type: ignore[attr-defined]
        if type(err).__name__ == "SignalException":  # torch's launcher, stopped by a signal:
            logger.error("stopped: %s", err)  # its workers ended their run KILLED
            sys.exit(128 + int(getattr(err, "sigval", 15)))
        if "mlflow" in sys.modules:  # only a command that used MLflow can fail in it
            from carinspect.config import Settings
            from carinspect.tracking.errors import describe

            message = describe(err, Settings().mlflow_tracking_uri)
            if message is not None:
                logger.error("%s", message)
                sys.exit(2)
        raise
    if isinstance(code, int) and code:
        sys.exit(code)
