"""Utilities: the demo dataset, DVC pull/push, feedback import, webhooks, the MLflow store."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from carinspect.cli.app import (
    DbOpt,
    ParamsOpt,
    data_app,
    feedback_app,
    read_params,
    store_app,
    webhook_app,
)
from carinspect.errors import InputError


@webhook_app.command("add")
def webhook_add(
    url: Annotated[str, typer.Argument(help="Receiver, e.g. https://serving/webhooks/mlflow.")],
    name: Annotated[str, typer.Option(help="Webhook name in MLflow.")] = "carinspect-alias",
) -> None:
    """Have the MLflow server POST alias moves and rollout steps to URL, signed (WEBHOOK_SECRET)."""
    from carinspect.config import Settings
    from carinspect.tracking.promotion import client_for
    from carinspect.tracking.webhooks import create_registry_webhook

    settings = Settings()
    if settings.webhook_secret is None:
        raise InputError("CARINSPECT_WEBHOOK_SECRET is not set: deliveries are signed with it")
    hook = create_registry_webhook(
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
    from carinspect.data.intake.feedback import import_feedback

    folder = out or Path(read_params(params).data.feedback or "data/feedback")
    r = import_feedback(labels, log, folder)
    typer.echo(r.describe())


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
    from carinspect.data.storage.objects import download_tree

    typer.echo(f"{download_tree(uri, folder)} files from {uri} in {folder}")


@data_app.command("push")
def data_push(
    folder: Annotated[Path, typer.Argument(help="Local folder to copy from.")],
    uri: Annotated[str, typer.Argument(help="s3://bucket/prefix to copy to.")],
) -> None:
    """Copy every file under a folder to an S3 prefix (a TrainJob node's outputs)."""
    from carinspect.data.storage.objects import upload_tree

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
    from carinspect.data.intake.demo import write_demo

    demo = read_params(params).data.demo
    if per_class is not None:
        demo = demo.model_copy(update={"per_class": per_class})
    n = write_demo(demo, out)
    typer.echo(f"{n} files written to {out}")
