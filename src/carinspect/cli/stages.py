"""One command per pipeline stage, what dvc.yaml calls.

Each reads its params.yaml section and paths and prints the stage's result in a line or two;
stages never read params.yaml themselves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from carinspect.cli.app import (
    EVALUATE,
    EXPORT,
    INGEST,
    SPLIT,
    THRESHOLD,
    TRAIN,
    CheckpointOpt,
    IngestOpt,
    OutOpt,
    ParamsOpt,
    RunOpt,
    SplitsOpt,
    app,
    labels_app,
    read_params,
    run_id_from,
)
from carinspect.contracts.folders import AuditDir
from carinspect.errors import InputError
from carinspect.stages.spec import SPEC


@app.command()
def ingest(
    params: ParamsOpt = Path("params.yaml"),
    out: Annotated[
        Path, typer.Option(help="Output folder: images/, manifest.csv, report.*")
    ] = INGEST.root,
    source: Annotated[
        str | None,
        typer.Option(help="Override data.source (folder, CSV, COCO, s3://, dvc://, demo)."),
    ] = None,
) -> None:
    """Decode and validate every image of data.source into a resized cache + manifest.csv."""
    from carinspect.stages import ingest as stage

    cfg = read_params(params)
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
    manifest: Annotated[Path, typer.Option(help="manifest.csv from ingest.")] = INGEST.manifest,
    out: Annotated[Path, typer.Option(help="Output folder: splits.csv, report.*")] = SPLIT.root,
) -> None:
    """Assign images to train/val/test: stratified, near-duplicates and groups kept together."""
    from carinspect.data.intake.manifest import read_manifest
    from carinspect.stages import split as stage
    from carinspect.stages.threshold import check_rule

    cfg = read_params(params)
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
    ingest: IngestOpt = INGEST.root,
    splits: SplitsOpt = SPLIT.splits,
    out: Annotated[
        Path, typer.Option(help="Output folder: checkpoints, metrics, history.")
    ] = TRAIN.root,
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

    cfg = read_params(params)
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
    checkpoint: CheckpointOpt = TRAIN.best,
    ingest: IngestOpt = INGEST.root,
    splits: SplitsOpt = SPLIT.splits,
    run_json: RunOpt = TRAIN.run_ref,
    out: OutOpt = EVALUATE.root,
) -> None:
    """Metrics, plots, calibration and predictions on val and test; logged to the training run."""
    from carinspect.config import Settings
    from carinspect.stages import evaluate as stage

    run_id = run_id_from(run_json)
    cfg = read_params(params).evaluate
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
    ingest: IngestOpt = INGEST.root,
    splits: SplitsOpt = SPLIT.splits,
    out: OutOpt = Path("models/tune"),
) -> None:
    """Search the `tune.space` params with Optuna (run again to continue a cut-off sweep)."""
    from carinspect.config import Settings
    from carinspect.stages import tune as stage

    result = stage.run(read_params(params), Settings(), ingest, splits, out)
    counts = ", ".join(f"{n} {k}" for k, n in result.counts.items())
    typer.echo(
        f"best trial {result.best_trial}: {read_params(params).tune.objective} "
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
    ] = EVALUATE.predictions,
    run_json: RunOpt = TRAIN.run_ref,
    out: OutOpt = THRESHOLD.root,
) -> None:
    """Choose the operating threshold and uncertainty band on val; report val and test."""
    from carinspect.config import Settings
    from carinspect.stages import threshold as stage

    run_id = run_id_from(run_json)
    from carinspect.stages.summary import describe_rule

    spec = stage.run(read_params(params).threshold, Settings(), predictions, out, run_id).spec
    for task, rule in (spec.get("tasks") or {"": spec}).items():
        typer.echo(f"{task}: {describe_rule(rule)}" if task else describe_rule(rule))


@app.command()
def export(
    params: ParamsOpt = Path("params.yaml"),
    checkpoint: CheckpointOpt = TRAIN.best,
    calibration: Annotated[
        Path, typer.Option(help="calibration.json from evaluate.")
    ] = EVALUATE.calibration,
    threshold_json: Annotated[
        Path, typer.Option("--threshold", help="threshold.json.")
    ] = THRESHOLD.rule,
    ingest: IngestOpt = INGEST.root,
    splits: SplitsOpt = SPLIT.splits,
    run_json: RunOpt = TRAIN.run_ref,
    out: OutOpt = EXPORT.root,
) -> None:
    """Export to ONNX (+ model.json) after a parity check against the checkpoint on val images."""
    from carinspect.config import Settings
    from carinspect.stages import export as stage

    run_id = run_id_from(run_json)
    result = stage.run(
        read_params(params).export,
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
    ] = EXPORT.root,
    metrics: Annotated[Path, typer.Option(help="metrics.json from evaluate.")] = EVALUATE.metrics,
    run_json: RunOpt = TRAIN.run_ref,
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

    run_id = run_id_from(run_json, required=True)
    if run_id is None:
        raise InputError("--run: the training run's run.json is needed to register")
    cfg = read_params(params).register_
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


@labels_app.command("audit")
def labels_audit(
    params: ParamsOpt = Path("params.yaml"),
    checkpoint: CheckpointOpt = TRAIN.best,
    ingest: IngestOpt = INGEST.root,
    splits: SplitsOpt = SPLIT.splits,
    out: Annotated[
        Path, typer.Option(help="Output folder: suspects.csv, report.md, metrics.json.")
    ] = SPEC["audit"].out,
    only_if_enabled: Annotated[
        bool, typer.Option(help="Do nothing but say so unless audit.enabled (dvc.yaml's stage).")
    ] = False,
    push: Annotated[
        bool, typer.Option(help="Push the suspects to Label Studio for review (review push).")
    ] = False,
    url: Annotated[str, typer.Option(envvar="LABEL_STUDIO_URL", help="With --push.")] = (
        "http://localhost:8080"
    ),
    token: Annotated[
        str, typer.Option(envvar="LABEL_STUDIO_API_KEY", show_default=False, help="With --push.")
    ] = "",
    local_root: Annotated[
        Path | None,
        typer.Option(
            envvar="LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT",
            help="With --push: Label Studio's LOCAL_FILES_DOCUMENT_ROOT (LOG must be under it).",
        ),
    ] = None,
    log: Annotated[
        Path,
        typer.Option(help="With --push: where the suspects' photos are kept for review (grows)."),
    ] = Path("data/review/audit"),
) -> None:
    """Train and val photos whose given label looks wrong (cross-validated, cleanlab); drops none."""
    from carinspect.stages import audit as stage

    p = read_params(params)
    cfg = p.audit
    result = stage.run(cfg, checkpoint, ingest, splits, out, only_if_enabled=only_if_enabled)
    if not result.enabled:
        typer.echo("label audit off (audit.enabled: false)")
        return
    typer.echo(
        f"{len(result.suspects)} of {result.photos} train and val photos have a doubtful label "
        f"(features: {result.features}); page: {AuditDir(out).report_md}"
    )
    if push:
        from carinspect.review.client import LabelStudio
        from carinspect.review.loop import push as push_log
        from carinspect.review.suspects import write_review_log

        write_review_log(result, p.data, log)
        with LabelStudio(url, token) as ls:
            r = push_log(ls, str(log), "carinspect label audit", local_root)
        typer.echo(f"{r.added} suspect(s) added to project {r.title!r}: {r.url}")
