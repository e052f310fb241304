"""`carinspect review push|pull`: the kept photos through Label Studio and back."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from carinspect.cli.app import ParamsOpt, read_params, review_app

UrlOpt = Annotated[
    str, typer.Option(envvar="LABEL_STUDIO_URL", help="The Label Studio server (LABEL_STUDIO_URL).")
]
TokenOpt = Annotated[
    str,
    typer.Option(
        envvar="LABEL_STUDIO_API_KEY", show_default=False,
        help="A personal access token (Account & Settings; LABEL_STUDIO_API_KEY).",
    ),
]  # fmt: skip
ProjectOpt = Annotated[str, typer.Option(help="The Label Studio project's title.")]
LogOpt = Annotated[str, typer.Option(help="The FEEDBACK_DIR serving kept photos in (or s3://).")]
PROJECT = "carinspect review"


@review_app.command("push")
def review_push(
    log: LogOpt,
    url: UrlOpt = "http://localhost:8080",
    token: TokenOpt = "",
    project: ProjectOpt = PROJECT,
    local_root: Annotated[
        Path | None,
        typer.Option(
            envvar="LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT",
            help="Label Studio's LOCAL_FILES_DOCUMENT_ROOT, for a folder log (it must be under it).",
        ),
    ] = None,
    most: Annotated[
        int | None, typer.Option(min=1, help="Push at most this many new photos (best first).")
    ] = None,
) -> None:
    """Kept photos as Label Studio tasks, most worth a look first, the model's answer pre-filled."""
    from carinspect.review.client import LabelStudio
    from carinspect.review.loop import push

    with LabelStudio(url, token) as ls:
        r = push(ls, log, project, local_root, most)
    typer.echo(
        f"{r.added} task(s) added to project {r.title!r} ({r.already} already there): {r.url}"
    )


@review_app.command("pull")
def review_pull(
    log: LogOpt,
    url: UrlOpt = "http://localhost:8080",
    token: TokenOpt = "",
    project: ProjectOpt = PROJECT,
    params: ParamsOpt = Path("params.yaml"),
    out: Annotated[
        Path | None, typer.Option(help="The feedback dataset folder (default: data.feedback).")
    ] = None,
    resolve: Annotated[
        str,
        typer.Option(
            help="Two annotations of a photo that disagree: refuse (name the task), or majority "
            "(the label most gave; a tie is refused).",
        ),
    ] = "refuse",
    golden_share: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Share of the reviewed photos (by content hash) kept out of training, in the "
            "golden set (promote.golden) the promotion gate judges on.",
        ),
    ] = 0.0,
) -> None:
    """Finished annotations into the feedback dataset (one DVC revision; skipped tasks ignored)."""
    from carinspect.errors import InputError
    from carinspect.review.client import LabelStudio
    from carinspect.review.loop import pull

    if resolve not in ("refuse", "majority"):
        raise InputError(f"--resolve {resolve!r}: expected refuse or majority")
    folder = out or Path(read_params(params).data.feedback or "data/feedback")
    golden = (Path(read_params(params).promote.golden), golden_share) if golden_share else None
    with LabelStudio(url, token) as ls:
        r = pull(ls, project, log, folder, resolve, golden=golden)
    typer.echo(r.describe())
