"""The sweep pipeline: trials in a ParallelFor, the best one on to the registry."""

import os
import subprocess
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from carinspect.config import load_params
from carinspect.stages.tune import sample_configs
from pipelines.commands import compile_pipeline
from pipelines.sweep import SWEEP_FILE
from tests.conftest import REPO_ROOT, VENV_BIN
from tests.pipelines.test_pipeline import TINY


def test_committed_sweep_is_current_and_fans_out(tmp_path: Path) -> None:
    fresh = compile_pipeline(REPO_ROOT / "params.yaml", tmp_path / "sweep.yaml", sweep=True)
    committed = REPO_ROOT / SWEEP_FILE
    assert committed.read_text() == fresh.read_text(), (
        f"{SWEEP_FILE} is stale: run `carinspect pipeline compile --sweep` and commit it"
    )
    spec, platform = yaml.safe_load_all(committed.read_text())
    tasks = spec["root"]["dag"]["tasks"]
    loop = tasks["for-loop-1"]
    assert loop["parameterIterator"]["items"]["inputParameter"].endswith("sample-trials-Output")
    trial = spec["components"]["comp-for-loop-1"]["dag"]["tasks"]["train"]
    assert {"model_cfg", "train_cfg", "parent_run_id"} <= set(trial["inputs"]["parameters"])
    pick = tasks["pick-best"]["inputs"]["artifacts"]["trials"]
    assert pick["taskOutputArtifact"]["producerTask"] == "for-loop-1"  # dsl.Collected
    assert tasks["evaluate"]["inputs"]["artifacts"]["model"]["taskOutputArtifact"] == {
        "outputArtifactKey": "best", "producerTask": "pick-best",
    }  # fmt: skip
    # every trial lands on the GPU node pool like the training pipeline's train task
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert "nvidia.com/gpu.present" in str(executors["exec-train"]["nodeSelector"])


def test_sampled_configs_are_seeded_and_valid() -> None:
    params = load_params(REPO_ROOT / "params.yaml")
    first, again = sample_configs(params, "p1"), sample_configs(params, "p1")
    assert first == again and len(first) == params.tune.trials
    assert {item["parent_run_id"] for item in first} == {"p1"}
    assert len({item["train_cfg"] for item in first}) == len(first)  # distinct draws
    lr = params.tune.space["train.lr"]
    for item in first:
        trained = yaml.safe_load(item["train_cfg"])
        assert lr.low <= trained["lr"] <= lr.high


@pytest.mark.slow
def test_local_sweep_runs_trials_in_parallel_and_registers_the_best(tmp_path: Path) -> None:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    args = [str(VENV_BIN / "carinspect"), "pipeline", "run", "--local", "--sweep",
            "--params", str(REPO_ROOT / "params.yaml"), "--pipeline-root", str(tmp_path / "kfp"),
            "--param", "tune.trials=2", "--param", "model.name=test_resnet"]  # fmt: skip
    for pair in TINY:
        args += ["--param", pair]
    done = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "pipeline finished: registered models:/carinspect/1" in done.stdout
    run_dir = next((tmp_path / "kfp").iterdir())
    assert sorted(p.name for p in run_dir.glob("for-loop-1-iteration-*")) == [
        "for-loop-1-iteration-0", "for-loop-1-iteration-1",
    ]  # fmt: skip
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("carinspect").experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("stage") == "tune"]
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(trials) == 2 and parent.info.status == "FINISHED"
    assert parent.data.tags["best.run_id"] in {t.info.run_id for t in trials}
    version = client.get_model_version("carinspect", "1")
    assert version.run_id == parent.data.tags["best.run_id"]  # the best trial was registered
