"""`carinspect rollout`: a canary's share of traffic, kept in the registry and stepped by analysis."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer

from carinspect.cli.app import ParamsOpt, app
from carinspect.cli.registry import JsonOpt, ReasonOpt, registry_of, same_photos_judge
from carinspect.config import Params
from carinspect.errors import InputError

rollout_app = typer.Typer(
    help="Progressive delivery: the canary's share in the registry, stepped by Prometheus "
    "analysis, promoted through the gate or rolled back.",
    no_args_is_help=True,
)
app.add_typer(rollout_app, name="rollout")

ScheduleOpt = Annotated[
    str | None,
    typer.Option(help="Shares in percent, rising, e.g. 5,25,50,100 (default: rollout.schedule)."),
]
PrometheusOpt = Annotated[
    str | None,
    typer.Option(help="Prometheus URL (default: PROMETHEUS_URL, else rollout.prometheus_url)."),
]


def _schedule(text: str | None, p: Params) -> list[float]:
    if text is None:
        return list(p.rollout.schedule)
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"--schedule {text!r}: not a comma-separated list of numbers") from None


@rollout_app.command("start")
def rollout_start(
    params: ParamsOpt = Path("params.yaml"),
    schedule: ScheduleOpt = None,
    reason: ReasonOpt = None,
) -> None:
    """Start rolling out the canary alias's version at the schedule's first share."""
    from carinspect.tracking import rollout as state

    p, client, by = registry_of(params)
    started = state.start(
        client, p.register_.model_name, p.rollout.alias, _schedule(schedule, p), by,
        champion_alias=p.promote.alias, reason=reason or "",
    )  # fmt: skip
    typer.echo(started.describe())


@rollout_app.command("status")
def rollout_status(
    params: ParamsOpt = Path("params.yaml"),
    last: Annotated[int, typer.Option(help="Trail entries to show.", min=0)] = 10,
    as_json: JsonOpt = False,
) -> None:
    """The latest rollout of the model (running or ended) and its trail."""
    from carinspect.tracking import rollout as state

    p, client, _ = registry_of(params)
    name = p.register_.model_name
    recorded = state.recorded(client, name)
    latest = next((r for r in recorded if r.status == "running"), None) or (
        recorded[0] if recorded else None
    )
    trail = state.history(client, name, latest.id)[-last:] if latest and last else []
    if as_json:
        doc = {"model": name, "rollout": latest.model_dump() if latest else None,
               "share": latest.share if latest else 0.0, "trail": [asdict(e) for e in trail]}  # fmt: skip
        typer.echo(json.dumps(doc, indent=2))
        return
    if latest is None:
        typer.echo(f"{name}: no rollout recorded")
        return
    typer.echo(latest.describe())
    for entry in trail:
        typer.echo(f"  {entry.describe()}")
        for figure in entry.analysis:
            typer.echo(f"    {figure['name']} = {figure['value']} (limit {figure['limit']})")


@rollout_app.command("abort")
def rollout_abort(params: ParamsOpt = Path("params.yaml"), reason: ReasonOpt = None) -> None:
    """Share back to 0 now: the champion answers every request (within one poll)."""
    from carinspect.tracking import rollout as state

    p, client, by = registry_of(params)
    name = p.register_.model_name
    running = state.running(client, name)
    if running is None:
        raise InputError(f"{name} has no rollout in progress")
    ended = state.abort(client, running, by, reason or "aborted by hand")
    typer.echo(ended.describe())


@rollout_app.command("run")
def rollout_run(
    params: ParamsOpt = Path("params.yaml"),
    prometheus: PrometheusOpt = None,
    once: Annotated[
        bool, typer.Option(help="One look, then exit (a CronJob's schedule does the waiting).")
    ] = False,
    interval: Annotated[
        float | None, typer.Option(help="Seconds between looks (default: rollout.interval_s).")
    ] = None,
) -> None:
    """Look at the analysis until the rollout ends: hold, step, promote or abort (exit 1)."""
    from carinspect.delivery.analysis import Prometheus
    from carinspect.delivery.runner import Look, run
    from carinspect.tracking import promotion

    p, client, by = registry_of(params)
    name = p.register_.model_name
    cfg = p.rollout
    if interval is not None:
        cfg = cfg.model_copy(update={"interval_s": interval})
    url = prometheus or os.environ.get("PROMETHEUS_URL") or cfg.prometheus_url

    def promote(r: Any) -> Any:
        return promotion.promote(
            client, name, p.promote, r.version, by, candidate_alias=cfg.alias,
            reason=f"rollout {r.id} passed its analysis at every step",
            judge=same_photos_judge(p, client, name),
        )  # fmt: skip

    def said(result: Look) -> None:
        typer.echo(result.describe())

    with Prometheus(url, cfg.timeout_s) as prom:
        last = run(client, name, cfg, prom, by, promote, said, max_looks=1 if once else None)
    if last.verdict == "abort":
        raise typer.Exit(1)
