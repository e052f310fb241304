"""tune: an Optuna search over model.* and train.* params, every trial a nested MLflow run.

Each trial calls the train stage's ``run`` with the trial's values applied to params.yaml, on the
same ingest cache and split, in its own folder ``out/trials/<number>``. The trial reports
``tune.objective`` (a val metric train records per epoch) after every epoch, so the pruner
(``median`` or successive ``halving``) can stop an unpromising trial once it has run
``tune.prune_after`` epochs. Trials are MLflow runs nested under one parent run, which records
the space and, at the end, the best value and params.

The study lives in ``tune.storage`` (default: SQLite ``out/optuna.db``), so running the stage
again continues an interrupted sweep: finished trials are kept, a trial cut off mid-way is
marked failed, and only the missing trials run (completed and pruned trials count towards
``tune.trials``; failed ones do not). Output folder ``out``: ``best_params.yaml``
(the best trial's values, nested like params.yaml), ``trials.csv``, ``report.json``,
``metrics.json``, ``optuna.db`` and ``trials/``.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from carinspect.config import (
    ConfigError,
    Params,
    SearchDim,
    Settings,
    TuneConfig,
    parse_params,
    set_dotted,
)
from carinspect.errors import InputError
from carinspect.io import write_json_atomic, write_text_atomic

logger = logging.getLogger(__name__)
PARENT_ATTR = "mlflow_parent_run_id"


class TuneError(InputError):
    """The sweep cannot run as configured."""


@dataclass(frozen=True)
class TuneResult:
    """The best trial and where the sweep's files are."""

    out: Path
    best_value: float
    best_params: dict[str, Any]
    best_trial: int
    parent_run_id: str
    counts: dict[str, int]
    overlay: Path
    command: str


def suggest(trial: Any, key: str, dim: SearchDim) -> Any:
    """The trial's value for ``key`` from its distribution."""
    if dim.type == "choice":
        return trial.suggest_categorical(key, dim.values)
    assert dim.low is not None and dim.high is not None  # checked by SearchDim
    if dim.type == "int":
        return trial.suggest_int(key, int(dim.low), int(dim.high))
    return trial.suggest_float(key, dim.low, dim.high, log=dim.type == "loguniform")


def with_values(params: Params, values: dict[str, Any]) -> Params:
    """``params`` with dotted ``values`` applied, validated like params.yaml itself."""
    raw = params.model_dump(mode="json", by_alias=True)
    for key, value in values.items():
        set_dotted(raw, key, value)
    try:
        return parse_params(raw, "tune.space")
    except ConfigError as err:
        raise TuneError(str(err)) from None


def _probe(params: Params) -> None:
    """Refuse a space whose keys or values params.yaml would refuse, before any trial runs."""
    for key, dim in params.tune.space.items():
        node: Any = params.model_dump(by_alias=True)
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                raise TuneError(f"tune.space key {key!r} is not a params.yaml key")
            node = node[part]
        probes: list[Any] = list(dim.values) if dim.values is not None else [dim.low, dim.high]
        for value in probes:
            if dim.type == "int":
                value = int(value)
            with_values(params, {key: value})


def _study(cfg: TuneConfig, out: Path | None) -> Any:
    """The study in ``tune.storage`` (default ``out/optuna.db``); ``out`` None: in memory."""
    import optuna

    storage = None
    held = 0
    if out is not None:
        storage = cfg.storage or f"sqlite:///{(out / 'optuna.db').resolve()}"
        # A resumed sweep must not replay the first run's draws: the seed moves on with the
        # number of trials the study already holds (still reproducible from the same history).
        with contextlib.suppress(KeyError):  # KeyError: no such study yet
            held = len(optuna.load_study(study_name=cfg.study, storage=storage).trials)
    seed = cfg.seed + held
    sampler = (
        optuna.samplers.TPESampler(seed=seed)
        if cfg.sampler == "tpe"
        else optuna.samplers.RandomSampler(seed=seed)
    )
    pruner: Any = optuna.pruners.NopPruner()
    if cfg.pruner == "median":
        pruner = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=cfg.prune_after)
    elif cfg.pruner == "halving":
        pruner = optuna.pruners.SuccessiveHalvingPruner(min_resource=max(1, cfg.prune_after))
    return optuna.create_study(
        study_name=cfg.study,
        storage=storage,
        sampler=sampler,
        pruner=pruner,
        direction=cfg.direction,
        load_if_exists=True,
    )


def _parent_run(study: Any, params: Params, settings: Settings) -> str:
    """The sweep's MLflow run: created once, found again through the study on resume."""
    from mlflow.tracking import MlflowClient

    from carinspect.tracking.store import check

    known = study.user_attrs.get(PARENT_ATTR)
    if known:
        check(settings.mlflow_tracking_uri)
        MlflowClient(settings.mlflow_tracking_uri).update_run(known, status="RUNNING")
        return str(known)
    parent = create_parent_run(params, settings)
    study.set_user_attr(PARENT_ATTR, parent)
    return parent


def create_parent_run(params: Params, settings: Settings) -> str:
    """A new MLflow run for a sweep, recording its space; trials nest under it."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from carinspect.tracking.store import check

    check(settings.mlflow_tracking_uri)
    client = MlflowClient(settings.mlflow_tracking_uri)
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    experiment = mlflow.set_experiment(params.mlflow.experiment)
    run = client.create_run(
        experiment.experiment_id,
        run_name=f"tune-{params.tune.study}",
        tags={"stage": "tune", "tune.study": params.tune.study},
    )
    cfg = params.tune
    client.log_batch(
        run.info.run_id,
        params=[
            mlflow.entities.Param(f"tune.{k}", str(v))
            for k, v in cfg.model_dump(mode="json", exclude={"space"}).items()
        ]
        + [
            mlflow.entities.Param(f"tune.space.{k}", str(d.model_dump(exclude_none=True)))
            for k, d in cfg.space.items()
        ],
    )
    return str(run.info.run_id)


def sample_configs(params: Params, parent_run_id: str = "") -> list[dict[str, Any]]:
    """``tune.trials`` configurations drawn up front from the sampler (seeded), no feedback.

    For sweeps whose trials run in parallel (the KFP sweep): each item names its trial and
    holds its model and train sections, as the pipeline's section inputs carry them (one-line
    sorted JSON).
    """
    import json

    import optuna

    cfg = params.tune
    _probe(params)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = _study(cfg, None)
    out = []
    for number in range(cfg.trials):
        trial = study.ask()
        values = {key: suggest(trial, key, dim) for key, dim in cfg.space.items()}
        p = with_values(params, values)
        out.append(
            {
                "trial": number,
                "parent_run_id": parent_run_id,
                "values": json.dumps(values, sort_keys=True),
                "model_cfg": p.model.model_dump_json(),
                "train_cfg": p.train.model_dump_json(),
            }
        )
    return out


def best_trial_dir(objective: str, maximise: bool, train_dirs: list[Path]) -> tuple[int, float]:
    """Index and value of the trial folder whose history.csv is best on ``objective``."""
    from carinspect.contracts.folders import TrainDir

    scores = []
    for folder in train_dirs:
        found = TrainDir(folder)
        found.require(found.history)
        with found.history.open(newline="") as fh:
            rows = tuple({k: float(v) for k, v in r.items()} for r in csv.DictReader(fh))
        scores.append(_best_of(rows, objective, maximise))
    pick = max if maximise else min
    best = pick(range(len(scores)), key=lambda i: scores[i])
    return best, scores[best]


def _best_of(history: tuple[dict[str, float], ...], key: str, maximise: bool) -> float:
    values = [h[key] for h in history if key in h]
    if not values:
        raise TuneError(
            f"tune.objective {key!r} is not a metric train records; it records "
            f"{sorted(history[0]) if history else []}"
        )
    return max(values) if maximise else min(values)


def run(
    params: Params,
    settings: Settings,
    ingest_dir: Path,
    splits: Path,
    out: Path,
) -> TuneResult:
    """Run (or continue) the sweep and write the best params; see the module docstring."""
    import optuna

    from carinspect.stages import train

    cfg = params.tune
    _probe(params)
    if not Path(splits).is_file():
        raise TuneError(f"split file {splits} not found (run `dvc repro split` first)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = _study(cfg, out)
    for stale in study.get_trials(states=(optuna.trial.TrialState.RUNNING,)):
        logger.warning("trial %d was cut off mid-way (an interrupted sweep): failed", stale.number)
        study.tell(stale.number, state=optuna.trial.TrialState.FAIL)
    parent = _parent_run(study, params, settings)
    counted = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    done = study.get_trials(states=counted)  # a failed trial is retried, not counted
    remaining = max(0, cfg.trials - len(done))
    if done:
        logger.info("study %s: %d trials done, %d to go", cfg.study, len(done), remaining)
    maximise = cfg.direction == "maximize"

    def objective(trial: optuna.Trial) -> float:
        values = {key: suggest(trial, key, dim) for key, dim in cfg.space.items()}
        p = with_values(params, values)
        p = p.model_copy(
            update={"mlflow": p.mlflow.model_copy(update={"run_name": f"trial-{trial.number}"})}
        )

        def report(epoch: int, stats: dict[str, float]) -> bool:
            if cfg.objective not in stats:
                raise TuneError(
                    f"tune.objective {cfg.objective!r} is not a metric train records; it "
                    f"records {sorted(stats)}"
                )
            trial.report(stats[cfg.objective], epoch)
            return epoch >= cfg.prune_after and trial.should_prune()

        started = time.perf_counter()
        result = train.run(
            p.model, p.train, p.mlflow, settings, ingest_dir, splits,
            out / "trials" / f"{trial.number:03d}", nproc=1, parent_run_id=parent,
            on_epoch=report,
        )  # fmt: skip
        trial.set_user_attr("mlflow_run_id", result.run_id)
        trial.set_user_attr("seconds", round(time.perf_counter() - started, 1))
        trial.set_user_attr("epochs_run", result.epochs_run)
        if result.stopped_by_hook:
            raise optuna.TrialPruned()
        return _best_of(result.history, cfg.objective, maximise)

    study.optimize(objective, n_trials=remaining, catch=())
    return _finish(study, params, settings, out, parent)


def _finish(study: Any, params: Params, settings: Settings, out: Path, parent: str) -> TuneResult:
    """Write best_params.yaml, trials.csv and the reports; close the parent run."""
    import optuna
    from mlflow.tracking import MlflowClient

    cfg = params.tune
    completed = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    if not completed:
        raise TuneError(f"study {cfg.study}: no trial completed, so there are no best params")
    best = study.best_trial
    nested: dict[str, Any] = {}
    for key, value in best.params.items():
        set_dotted(nested, key, value)
    header = "# carinspect tune: the best trial's values (an overlay on params.yaml)\n"
    overlay = out / "best_params.yaml"
    write_text_atomic(overlay, header + yaml.safe_dump(nested, sort_keys=True))
    counts = {
        state.name.lower(): len(study.get_trials(states=(state,)))
        for state in (
            optuna.trial.TrialState.COMPLETE,
            optuna.trial.TrialState.PRUNED,
            optuna.trial.TrialState.FAIL,
        )
    }
    write_text_atomic(out / "trials.csv", _trials_csv(study, cfg))
    seconds = [t.user_attrs.get("seconds", 0.0) for t in study.trials if t.state.is_finished()]
    report = {
        "study": cfg.study,
        "objective": cfg.objective,
        "direction": cfg.direction,
        "best_value": best.value,
        "best_trial": best.number,
        "best_params": best.params,
        "best_run_id": best.user_attrs.get("mlflow_run_id"),
        "trials": counts,
        "seconds_per_trial": round(sum(seconds) / max(1, len(seconds)), 1),
        "mlflow_parent_run_id": parent,
    }
    write_json_atomic(out / "report.json", report)
    write_json_atomic(
        out / "metrics.json",
        {"best_value": best.value, **{f"trials_{k}": v for k, v in counts.items()}},
    )
    client = MlflowClient(settings.mlflow_tracking_uri)
    for key, value in best.params.items():
        client.set_tag(parent, f"best.{key}", str(value))
    client.log_artifact(parent, str(overlay))
    finish_parent_run(
        settings, parent, cfg.objective, best.value, str(best.user_attrs.get("mlflow_run_id"))
    )
    command = "dvc exp run " + " ".join(f"-S {k}={v}" for k, v in best.params.items())
    logger.info(
        "best trial %d: %s %.4f with %s", best.number, cfg.objective, best.value, best.params
    )
    return TuneResult(
        out, best.value, dict(best.params), best.number, parent, counts, overlay, command
    )


def finish_parent_run(
    settings: Settings, parent: str, objective: str, value: float, best_run_id: str
) -> None:
    """Record the best trial on the sweep's run and close it."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(settings.mlflow_tracking_uri)
    client.log_metric(parent, f"best_{objective}", value)
    client.set_tag(parent, "best.run_id", best_run_id)
    client.set_terminated(parent, "FINISHED")


def _trials_csv(study: Any, cfg: TuneConfig) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    keys = list(cfg.space)
    writer.writerow(["trial", "state", cfg.objective, *keys, "epochs", "seconds", "mlflow_run_id"])
    for t in study.trials:
        writer.writerow(
            [t.number, t.state.name.lower(), "" if t.value is None else f"{t.value:.6f}"]
            + [t.params.get(k, "") for k in keys]
            + [t.user_attrs.get(a, "") for a in ("epochs_run", "seconds", "mlflow_run_id")]
        )
    return buf.getvalue()
