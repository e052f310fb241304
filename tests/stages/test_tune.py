"""carinspect tune: Optuna trials of the real train stage, nested MLflow runs, pruning, resume."""

import csv
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient

from carinspect.config import Settings, load_params
from carinspect.stages import train, tune
from carinspect.stages.tune import TuneError
from tests.conftest import Prepared, tiny_params

# `lr` (the learning rate train logs per epoch) as the objective makes the pruning decision
# deterministic: a trial drawing a lower train.lr reports a lower value at every epoch, so the
# median pruner must stop it once one trial with a higher lr has finished.
SWEEP = {
    "trials": 4,
    "objective": "lr",
    "direction": "maximize",
    "sampler": "random",
    "pruner": "median",
    "prune_after": 1,
    "seed": 2,
    "space": {
        "train.lr": {"type": "choice", "values": [0.01, 0.001, 0.0001]},
        "model.drop_rate": {"type": "uniform", "low": 0.0, "high": 0.2},
    },
}


def sweep_params(tmp_path: Path, **tune_overrides: object) -> Path:
    path = tiny_params(tmp_path, train__epochs=3)
    raw = yaml.safe_load(path.read_text())
    raw["tune"] = {**SWEEP, **tune_overrides}
    path.write_text(yaml.safe_dump(raw))
    return path


def test_a_sweep_prunes_nests_its_runs_and_resumes(
    tmp_path: Path, prepared: Prepared, sqlite_tracking: str
) -> None:
    p = load_params(sweep_params(tmp_path, trials=2))
    out = tmp_path / "tune"
    # a sweep cut off mid-trial leaves a RUNNING trial behind: it is failed, not waited for
    storage = f"sqlite:///{(out / 'optuna.db').resolve()}"
    out.mkdir()
    stale = optuna.create_study(study_name="carinspect", storage=storage, direction="maximize")
    stale.ask()

    first = tune.run(p, Settings(), prepared.ingest, prepared.splits, out)
    assert first.counts["fail"] == 1 and first.counts["complete"] >= 1
    p4 = load_params(sweep_params(tmp_path, trials=4))
    done = tune.run(p4, Settings(), prepared.ingest, prepared.splits, out)  # continues
    assert done.parent_run_id == first.parent_run_id
    assert done.counts["complete"] + done.counts["pruned"] == 4  # the failed one is not counted
    assert done.counts["fail"] == 1
    table = list(csv.DictReader((out / "trials.csv").open()))
    assert [r["trial"] for r in table] == ["0", "1", "2", "3", "4"]
    assert done.counts["pruned"] >= 1, table  # pruning was exercised
    finished = [float(r["train.lr"]) for r in table if r["state"] == "complete"]
    pruned = [float(r["train.lr"]) for r in table if r["state"] == "pruned"]
    assert all(lr < max(finished) for lr in pruned)  # the lower-lr trials were the ones stopped
    assert all(int(r["epochs"]) < 3 for r in table if r["state"] == "pruned")  # stopped early
    assert done.best_params["train.lr"] == max(finished)
    drawn = [(r["train.lr"], r["model.drop_rate"]) for r in table if r["state"] != "fail"]
    assert len(set(drawn)) == len(drawn)  # the resumed half drew new values, not a replay

    best = yaml.safe_load(done.overlay.read_text())
    assert best["train"]["lr"] == done.best_params["train.lr"]
    # the overlay feeds a final training (what `dvc exp run -S ...` does through params.yaml)
    final = tune.with_values(p4, done.best_params)
    trained = train.run(
        final.model, final.train, final.mlflow, Settings(), prepared.ingest, prepared.splits,
        tmp_path / "final",
    )  # fmt: skip
    logged = MlflowClient(sqlite_tracking).get_run(trained.run_id).data.params
    assert float(logged["train.lr"]) == done.best_params["train.lr"]
    assert "model" in best and "-S train.lr=" in done.command
    assert done.command.startswith("dvc exp run -S ")
    client = MlflowClient(sqlite_tracking)
    parent = client.get_run(done.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["stage"] == "tune"
    assert parent.data.metrics["best_lr"] == pytest.approx(done.best_value)
    assert parent.data.tags["best.train.lr"] == str(done.best_params["train.lr"])
    assert parent.data.params["tune.objective"] == "lr"
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{done.parent_run_id}'"
    )
    assert len(children) == 4  # every trial that trained is a nested run
    states = sorted(r.info.status for r in children)
    assert "KILLED" in states and "FINISHED" in states  # pruned trials end KILLED
    assert {r.data.params["train.epochs"] for r in children} == {"3"}


def test_bad_sweeps_fail_before_training(tmp_path: Path, prepared: Prepared) -> None:
    bad_key = load_params(
        sweep_params(
            tmp_path, space={"train.learning_rate": {"type": "uniform", "low": 0, "high": 1}}
        )
    )
    with pytest.raises(TuneError, match=r"tune.space key 'train.learning_rate' is not a params"):
        tune.run(bad_key, Settings(), prepared.ingest, prepared.splits, tmp_path / "a")
    bad_value = load_params(
        sweep_params(tmp_path, space={"train.batch_size": {"type": "int", "low": -4, "high": 8}})
    )
    with pytest.raises(TuneError, match=r"train.batch_size"):
        tune.run(bad_value, Settings(), prepared.ingest, prepared.splits, tmp_path / "b")
    good = load_params(sweep_params(tmp_path))
    with pytest.raises(TuneError, match=r"split file .*missing.csv not found"):
        tune.run(good, Settings(), prepared.ingest, tmp_path / "missing.csv", tmp_path / "c")
    assert not (tmp_path / "c").exists()  # refused before anything was written
    with pytest.raises(Exception, match=r"only model.\* and train.\* keys"):
        load_params(
            sweep_params(tmp_path, space={"split.seed": {"type": "int", "low": 1, "high": 3}})
        )
    with pytest.raises(Exception, match="loguniform needs low > 0"):
        load_params(
            sweep_params(tmp_path, space={"train.lr": {"type": "loguniform", "low": 0, "high": 1}})
        )
