"""The registry: promote (through the gate), rollback, status and the list of versions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from carinspect.cli.app import ParamsOpt, app, read_params
from carinspect.config import Params

VersionOpt = Annotated[
    str | None, typer.Option("--version", help="Model version (default: the challenger).")
]
ReasonOpt = Annotated[str | None, typer.Option(help="Why: recorded in the audit trail.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def registry_of(params: Path) -> tuple[Params, Any, str]:
    """Params, an MlflowClient on MLFLOW_TRACKING_URI, and who is acting."""
    from carinspect.config import Settings
    from carinspect.tracking.audit import actor
    from carinspect.tracking.promotion import client_for

    settings = Settings()
    return read_params(params), client_for(settings.mlflow_tracking_uri), actor(settings.user)


def same_photos_judge(p: Params, client: Any, name: str) -> Any:
    """The same-photos judge where this project holds the data (promote.same_photos), else None.

    The candidate's test split is this project's data/split: its data must be the candidate's
    (the version's ``data.digest`` tag), or the figures would be on some other split.
    """
    from carinspect.cli.app import INGEST, SPLIT

    if not p.promote.same_photos or not SPLIT.splits.is_file():
        return None

    def judge(version: str, champion: str | None) -> dict[str, Any]:
        from carinspect.serving import judge as same
        from carinspect.serving.model_store import ModelStore
        from carinspect.serving.settings import ServeSettings

        recorded = client.get_model_version(name, version).tags.get("data.digest")
        here = same.manifest_digest(INGEST.root)
        if recorded and recorded != here:
            raise same.JudgeError(
                f"{INGEST.manifest}: this project's data ({here[:19]}...) is not version "
                f"{version}'s ({recorded[:19]}...), so its test split is not here: check out the "
                "version's revision (git checkout, dvc checkout), or set promote.same_photos: false"
            )
        photos = same.photo_set(INGEST.root, SPLIT.splits, Path(p.promote.golden) / "photos")

        def scored(v: str) -> dict[str, Any]:
            _, folder = ModelStore(ServeSettings(MODEL_URI=f"models:/{name}/{v}")).fetch()
            return {"version": v, **same.score(folder, photos, p.promote.metric)}

        return {"digest": photos.digest, "photos": len(photos.photos), "parts": photos.parts,
                "candidate": scored(version),
                "champion": scored(champion) if champion else None}  # fmt: skip

    return judge


def same_photos_verdict(trail: list[Any], champion: str | None) -> str:
    """Whether the champion came in through the same-photos gate, in a few words."""
    move = next((m for m in reversed(trail) if m.to_version == champion), None)
    if champion is None or move is None:
        return "no record of how it became champion"
    judged = move.gate.get("same_photos")
    if move.action != "promote":
        return f"not passed ({move.action}: {move.reason})"
    if not judged:
        return "not judged on the same photos (compared on recorded metrics)"
    theirs = judged.get("champion")
    against = f" vs version {theirs['version']} {theirs['value']:.4f}" if theirs else ""
    mine = judged["candidate"]
    return (
        f"passed on {judged['photos']} photos ({judged['digest'][:19]}...): "
        f"{mine['metric']} {mine['value']:.4f}{against}"
    )


@app.command()
def promote(
    params: ParamsOpt = Path("params.yaml"),
    version: VersionOpt = None,
    force: Annotated[bool, typer.Option(help="Move the alias even if the gate fails.")] = False,
    reason: ReasonOpt = None,
) -> None:
    """Move alias champion to a version (default: the challenger) if it passes the gate."""
    from carinspect.tracking import promotion

    p, client, by = registry_of(params)
    name = p.register_.model_name
    move = promotion.promote(
        client, name, p.promote, version, by,
        candidate_alias=p.register_.alias, force=force, reason=reason,
        judge=same_photos_judge(p, client, name),
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

    p, client, by = registry_of(params)
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

    p, client, _ = registry_of(params)
    name, alias = p.register_.model_name, p.promote.alias
    reconcile(client, name, alias, observer="carinspect status")
    aliases = {k: str(v) for k, v in (get_registered(client, name).aliases or {}).items()}
    trail = read_trail(client, name, alias)[-last:] if last else []
    judged = same_photos_verdict(read_trail(client, name, alias), aliases.get(alias))
    if as_json:
        doc = {"model": name, "aliases": aliases, "same_photos": judged,
               "trail": [asdict(m) for m in trail]}  # fmt: skip
        typer.echo(json.dumps(doc, indent=2))
        return
    typer.echo(f"model {name}")
    for k, v in sorted(aliases.items()):
        typer.echo(f"  {k}: version {v}")
    if aliases.get(alias):
        typer.echo(f"  {alias} same-photos gate: {judged}")
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

    p, client, _ = registry_of(params)
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
