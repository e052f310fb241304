"""The Kubeflow Pipelines pipeline: compile, run with kfp.local, submit, and the TrainJob.

The only part of carinspect that imports the top-level pipelines/ folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from carinspect.cli.app import ParamsOpt, SweepOpt, pipeline_app
from carinspect.errors import InputError

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
