import json
import subprocess
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from carinspect.config import Settings, load_params
from carinspect.modeling.checkpoint import load_checkpoint
from carinspect.modeling.factory import ModelError
from carinspect.stages import train
from carinspect.stages.train import TrainError
from carinspect.training.cpu import bf16_in_hardware
from tests.conftest import VENV_BIN, Prepared, tiny_params

METRIC_COLUMNS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_macro_f1", "lr")


def run_train(params_path: Path, prepared: Prepared, out: Path, **kw: object) -> train.TrainResult:
    p = load_params(params_path)
    return train.run(
        p.model, p.train, p.mlflow, Settings(), prepared.ingest, prepared.splits, out, **kw
    )  # type: ignore[arg-type]


def the_only_run(tracking_uri: str, experiment: str = "carinspect") -> mlflow.entities.Run:
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None
    found = client.search_runs([exp.experiment_id])
    assert len(found) == 1, f"expected one run, found {len(found)}"
    return found[0]


def check_run(run: mlflow.entities.Run, epochs: int) -> None:
    assert run.data.params["model.name"] == "test_resnet"
    assert run.data.params["train.batch_size"] in ("4", "8")
    assert json.loads(run.data.params["train.augment"])[0]["name"] == "HorizontalFlip"
    for key in ("train_loss", "val_accuracy", "val_macro_f1", "lr", "images_per_s"):
        assert key in run.data.metrics
    tags = run.data.tags
    assert tags["data.digest"].startswith("sha256:")
    assert tags["data.source"] == "demo"
    assert tags["git.commit"] and tags["git.dirty"] in ("true", "false", "unknown")
    assert tags["classes"] == "clean,dirty"
    assert run.info.status == "FINISHED"
    client = MlflowClient()
    history = client.get_metric_history(run.info.run_id, "val_macro_f1")
    assert [m.step for m in history] == list(range(1, epochs + 1))
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "data/ingest")}
    assert "data/ingest/report.json" in artifacts


def test_one_epoch_through_the_cli(
    tmp_path: Path, prepared: Prepared, sqlite_tracking: str
) -> None:
    params = tiny_params(tmp_path)
    out = tmp_path / "train"
    proc = subprocess.run(
        [str(VENV_BIN / "carinspect"), "train", "--params", str(params), "--ingest", str(prepared.ingest),
         "--splits", str(prepared.splits), "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "best epoch 1/1" in proc.stdout
    state = load_checkpoint(out / "best.pt")
    assert state["classes"] == ["clean", "dirty"]
    assert state["preprocess"]["img_size"] == 32
    assert state["config"]["model"]["name"] == "test_resnet"
    for key in ("optimizer", "scheduler", "sampler", "rng", "early_stopping"):
        assert key in load_checkpoint(out / "last.pt")
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["val_macro_f1"] <= 1.0 and metrics["best_epoch"] == 1
    run_info = json.loads((out / "run.json").read_text())
    mlflow.set_tracking_uri(sqlite_tracking)
    run = the_only_run(sqlite_tracking)
    assert run.info.run_id == run_info["run_id"] == state["mlflow_run_id"]
    check_run(run, epochs=1)
    # train.amp: bf16 on a CPU that has it, with the precision gate's figure; fp32 elsewhere
    bf16 = bf16_in_hardware()
    assert run.data.tags["precision"] == ("bf16" if bf16 else "fp32")
    assert ("amp_flip_rate" in metrics) == bf16 and metrics.get("amp_flip_rate", 0) <= 0.05
    assert ("amp_flip_rate" in run.data.metrics) == bf16


def test_resume_reaches_the_same_result(
    tmp_path: Path, prepared: Prepared, sqlite_tracking: str
) -> None:
    params = tiny_params(tmp_path, train__epochs=3, train__workers=1)
    full = run_train(params, prepared, tmp_path / "full")
    first = run_train(params, prepared, tmp_path / "resumed", stop_after=1)
    assert first.epochs_run == 1
    resumed = run_train(params, prepared, tmp_path / "resumed", resume=True)
    assert resumed.epochs_run == 3 and resumed.run_id == first.run_id

    def curve(out: Path) -> list[list[str]]:
        lines = [line.split(",") for line in (out / "history.csv").read_text().splitlines()]
        cols = [lines[0].index(c) for c in ("epoch", *METRIC_COLUMNS)]
        return [[row[c] for c in cols] for row in lines[1:]]

    assert curve(tmp_path / "full") == curve(tmp_path / "resumed")
    a = load_checkpoint(tmp_path / "full" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "resumed" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert full.metrics == {**resumed.metrics, "images_per_s": full.metrics["images_per_s"],
                            "epoch_seconds": full.metrics["epoch_seconds"]}  # fmt: skip


def test_ddp_two_cpu_processes(tmp_path: Path, prepared: Prepared, sqlite_tracking: str) -> None:
    """Through the CLI, as dvc.yaml and a multi-GPU pod run it: the spawned ranks log too."""
    params = tiny_params(tmp_path, train__epochs=2, train__batch_size=4, train__sampler="weighted")
    out = subprocess.run(
        [str(VENV_BIN / "carinspect"), "train", "--params", str(params), "--ingest", str(prepared.ingest),
         "--splits", str(prepared.splits), "--out", str(tmp_path / "ddp"), "--nproc", "2"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    # rank 0's per-epoch progress, once per epoch (not once per rank)
    assert out.stderr.count("carinspect.stages.train: epoch 1/2: loss") == 1, out.stderr
    assert out.stderr.count("carinspect.stages.train: epoch 2/2: loss") == 1, out.stderr
    ddp_metrics = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert ddp_metrics["epochs_run"] == 2
    assert ("amp_flip_rate" in ddp_metrics) == bf16_in_hardware()  # gathered over both ranks
    state = load_checkpoint(tmp_path / "ddp" / "last.pt")
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    mlflow.set_tracking_uri(sqlite_tracking)
    run = the_only_run(sqlite_tracking)  # one run, not one per rank
    assert run.data.tags["world_size"] == "2"
    check_run(run, epochs=2)


def test_tracking_against_a_real_mlflow_server(
    tmp_path: Path, prepared: Prepared, mlflow_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.chdir(tmp_path)
    params = tiny_params(tmp_path, mlflow__experiment="server-test")
    result = run_train(params, prepared, tmp_path / "out")
    mlflow.set_tracking_uri(mlflow_server)
    run = the_only_run(mlflow_server, "server-test")
    assert run.info.run_id == result.run_id
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # proxied by the server
    check_run(run, epochs=1)


def test_unknown_model_lists_close_matches(tmp_path: Path, prepared: Prepared) -> None:
    params = tiny_params(tmp_path, model__name="resnet1Ot")
    with pytest.raises(
        ModelError, match=r"'resnet1Ot' is not a timm model; close matches: .*resnet10t"
    ):
        run_train(params, prepared, tmp_path / "out")


def test_batch_larger_than_dataset(tmp_path: Path, prepared: Prepared) -> None:
    params = tiny_params(tmp_path, train__batch_size=512)
    with pytest.raises(
        TrainError,
        match=r"train.batch_size 512 x 1 process\(es\) is larger than the \d+ training images",
    ):
        run_train(params, prepared, tmp_path / "out")


def test_missing_split_file_and_resume_without_checkpoint(
    tmp_path: Path, prepared: Prepared
) -> None:
    p = load_params(tiny_params(tmp_path))
    with pytest.raises(TrainError, match=r"split file .*nope.csv not found"):
        train.run(
            p.model,
            p.train,
            p.mlflow,
            Settings(),
            prepared.ingest,
            tmp_path / "nope.csv",
            tmp_path / "o",
        )
    with pytest.raises(TrainError, match=r"--resume: .*last.pt not found"):
        train.run(
            p.model,
            p.train,
            p.mlflow,
            Settings(),
            prepared.ingest,
            prepared.splits,
            tmp_path / "o",
            resume=True,
        )


def test_bad_augmentation_fails_by_name(tmp_path: Path, prepared: Prepared) -> None:
    params = tiny_params(tmp_path, train__augment=[{"name": "HorizontalFlipp"}])
    out = subprocess.run(
        [str(VENV_BIN / "carinspect"), "train", "--params", str(params), "--ingest", str(prepared.ingest),
         "--splits", str(prepared.splits), "--out", str(tmp_path / "o"), "--nproc", "2"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 2
    assert (
        "train.augment[0]: 'HorizontalFlipp' is not an albumentations transform; did you mean HorizontalFlip?"
        in out.stderr
    )


def test_layer_decay_gives_the_head_the_full_lr_and_earlier_layers_less() -> None:
    from carinspect.config import ModelConfig, TrainConfig
    from carinspect.modeling.factory import build_model, classifier_keys

    model = build_model(ModelConfig(name="test_resnet"), 3)
    flat = train.build_optimizer(model, TrainConfig(lr=0.01))
    assert {g["lr"] for g in flat.param_groups} == {0.01}
    decayed = train.build_optimizer(model, TrainConfig(lr=0.01, layer_decay=0.5))
    lrs = {id(p): g["lr"] for g in decayed.param_groups for p in g["params"]}
    params = dict(model.named_parameters())
    head = [params[k] for k in classifier_keys(model)]
    stem = params["conv1.0.weight"]
    assert all(lrs[id(p)] == pytest.approx(0.01) for p in head)
    assert lrs[id(stem)] < lrs[id(head[0])] * 0.5  # several groups below the head
    assert len({round(v, 12) for v in lrs.values()}) > 2


def test_one_epoch_with_layer_decay(
    tmp_path: Path, prepared: Prepared, sqlite_tracking: str
) -> None:
    params = tiny_params(tmp_path, train__layer_decay=0.7)
    result = run_train(params, prepared, tmp_path / "out")
    groups = load_checkpoint(tmp_path / "out" / "last.pt")["optimizer"]["param_groups"]
    assert len({g["lr"] for g in groups}) > 1  # the decayed rates survive in the checkpoint
    assert result.epochs_run == 1


def _curve(out: Path) -> list[list[str]]:
    lines = [line.split(",") for line in (out / "history.csv").read_text().splitlines()]
    cols = [lines[0].index(c) for c in ("epoch", *METRIC_COLUMNS)]
    return [[row[c] for c in cols] for row in lines[1:]]


def resumes_inside_an_epoch(tmp_path: Path, prepared: Prepared) -> None:
    """Stopped mid-epoch and resumed: the same weights and the same curve as one run."""
    params = tiny_params(tmp_path, train__epochs=2, train__workers=1, train__batch_size=4,
                         train__checkpoint_steps=2)  # fmt: skip
    run_train(params, prepared, tmp_path / "full")
    per_epoch = len(_train_images(prepared)) // 4
    cut = per_epoch + 2  # two steps into the second epoch
    first = run_train(params, prepared, tmp_path / "resumed", stop_after_steps=cut)
    assert first.epochs_run == 1
    state = load_checkpoint(tmp_path / "resumed" / "last.pt")
    assert (state["epoch"], state["step"]) == (0, 2)
    resumed = run_train(params, prepared, tmp_path / "resumed", resume=True)
    assert resumed.epochs_run == 2 and resumed.run_id == first.run_id
    assert _curve(tmp_path / "full") == _curve(tmp_path / "resumed")
    a = load_checkpoint(tmp_path / "full" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "resumed" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def _train_images(prepared: Prepared) -> list[str]:
    lines = prepared.splits.read_text().splitlines()[1:]
    return [line for line in lines if ",train," in line]


def test_resume_inside_an_epoch(tmp_path: Path, prepared: Prepared, sqlite_tracking: str) -> None:
    resumes_inside_an_epoch(tmp_path, prepared)


def test_stopped_inside_the_first_epoch_leaves_a_place_to_resume(
    tmp_path: Path, prepared: Prepared, sqlite_tracking: str
) -> None:
    params = tiny_params(tmp_path, train__epochs=1, train__batch_size=4)
    out = subprocess.run(
        [str(VENV_BIN / "carinspect"), "train", "--params", str(params), "--ingest", str(prepared.ingest),
         "--splits", str(prepared.splits), "--out", str(tmp_path / "t"), "--stop-after-steps", "2"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "stopped inside the first epoch" in out.stdout
    state = load_checkpoint(tmp_path / "t" / "last.pt")
    assert (state["epoch"], state["step"], state["history"]) == (-1, 2, [])
    assert not (tmp_path / "t" / "best.pt").exists()
    resumed = run_train(params, prepared, tmp_path / "t", resume=True)
    assert resumed.epochs_run == 1 and (tmp_path / "t" / "best.pt").is_file()
