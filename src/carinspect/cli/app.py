"""The ``carinspect`` Typer app: its groups, the options its commands share, and the entry point.

The commands live in one module per audience (stages, registry, inference, pipeline, admin),
which register themselves on this app; :func:`main` turns errors into exit codes and one line.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated

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
labels_app = typer.Typer(
    help="The labels of the data: the audit for wrong ones.", no_args_is_help=True
)
app.add_typer(labels_app, name="labels")
review_app = typer.Typer(
    help="Kept photos reviewed in Label Studio: push them as tasks, pull the labels back.",
    no_args_is_help=True,
)
app.add_typer(review_app, name="review")
store_app = typer.Typer(
    help="The embedded MLflow store (mlflow.db + mlruns/).", no_args_is_help=True
)
app.add_typer(store_app, name="store")
DbOpt = Annotated[Path, typer.Option("--db", help="The embedded store's database file.")]

# each stage's output at its default place (stages/spec.py): the default paths of the options
INGEST = IngestDir(SPEC["ingest"].out)
SPLIT = SplitDir(SPEC["split"].out)
TRAIN = TrainDir(SPEC["train"].out)
EVALUATE = EvaluateDir(SPEC["evaluate"].out)
THRESHOLD = ThresholdDir(SPEC["threshold"].out)
EXPORT = ExportDir(SPEC["export"].out)

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


def read_params(path: Path) -> Params:
    """params.yaml at ``path``, validated."""
    return load_params(path)


def run_id_from(run_json: Path | None, required: bool = False) -> str | None:
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
