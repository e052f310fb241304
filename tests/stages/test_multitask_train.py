"""Two heads on one backbone: the loss over labelled images only, training, resume and DDP."""

import json
import subprocess
from pathlib import Path

import mlflow
import pytest
import torch
from torch import nn

from carinspect.config import TrainConfig
from carinspect.contracts.tasks import MISSING, TaskSpec, tasks_of_checkpoint
from carinspect.modeling.checkpoint import load_checkpoint
from carinspect.modeling.losses import MultiTaskLoss, build_task_loss
from carinspect.stages.train import TrainError
from tests.conftest import VENV_BIN, Prepared, tiny_params
from tests.stages.test_train import run_train, the_only_run

TASKS = [
    TaskSpec(name="cleanliness", classes=["clean", "dirty"]),
    TaskSpec(name="damage", classes=["damaged", "intact", "written_off"]),
]


def test_the_loss_ignores_unlabelled_images_and_keeps_every_weight_in_the_graph() -> None:
    torch.manual_seed(0)
    logits = torch.randn(4, 5, requires_grad=True)
    target = torch.tensor([[0, 2], [1, MISSING], [MISSING, 0], [1, MISSING]])
    loss = build_task_loss(TrainConfig(task_weights={"damage": 0.5}), TASKS, [[0, 1], [0, 2]])
    assert isinstance(loss, MultiTaskLoss)
    ce = nn.functional.cross_entropy
    expected = ce(logits[[0, 1, 3], :2], target[[0, 1, 3], 0]) + 0.5 * ce(
        logits[[0, 2], 2:], target[[0, 2], 1]
    )
    assert torch.allclose(loss(logits, target), expected)

    learned = build_task_loss(TrainConfig(task_weighting="uncertainty"), TASKS, [[0], [0]])
    no_damage = torch.tensor([[0, MISSING], [1, MISSING]])
    value = learned(logits[:2], no_damage)
    value.backward()
    assert torch.allclose(value, ce(logits[:2, :2], no_damage[:, 0]))  # log-vars start at 0
    grads = [p.grad for p in learned.parameters()]
    assert len(grads) == 1 and grads[0] is not None  # DDP needs a gradient for every param
    assert learned.task_weights() == {"cleanliness": 1.0, "damage": 1.0}

    with pytest.raises(ValueError, match=r"task_weights names \['weather'\]"):
        build_task_loss(TrainConfig(task_weights={"weather": 2.0}), TASKS, [[0], [0]])
    with pytest.raises(ValueError, match="class_weights as a list fits one task"):
        build_task_loss(TrainConfig(class_weights=[1.0, 2.0]), TASKS, [[0], [0]])


def test_two_heads_train_resume_and_record_each_task(
    tmp_path: Path, prepared_tasks: Prepared, sqlite_tracking: str
) -> None:
    params = tiny_params(
        tmp_path, train__epochs=3, train__task_weighting="uncertainty", train__sampler="weighted",
        train__sampler_task="damage",
    )  # fmt: skip
    full = run_train(params, prepared_tasks, tmp_path / "full")
    state = load_checkpoint(full.last)
    assert [t.name for t in tasks_of_checkpoint(state)] == ["cleanliness", "damage"]
    assert tasks_of_checkpoint(state)[1].classes == ["damaged", "intact"]
    assert state["model"]["fc.weight"].shape[0] == 4  # one 2-way head per task
    assert state["loss"]["log_vars"].shape == (2,)
    for key in ("val_cleanliness_accuracy", "val_damage_macro_f1", "task_weight_damage"):
        assert key in full.metrics
    assert full.metrics["val_accuracy"] == pytest.approx(
        (full.metrics["val_cleanliness_accuracy"] + full.metrics["val_damage_accuracy"]) / 2
    )
    run = the_only_run(sqlite_tracking)
    assert run.data.tags["tasks"] == "cleanliness(clean,dirty); damage(damaged,intact)"
    assert "val_damage_loss" in run.data.metrics

    run_train(params, prepared_tasks, tmp_path / "resumed", stop_after=2)
    run_train(params, prepared_tasks, tmp_path / "resumed", resume=True)
    a, b = load_checkpoint(full.last), load_checkpoint(tmp_path / "resumed" / "last.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert torch.equal(a["loss"]["log_vars"], b["loss"]["log_vars"])  # learned weights resumed

    single = tiny_params(tmp_path, train__sampler_task="weather")
    with pytest.raises(TrainError, match=r"train\.sampler_task 'weather' is not one of the tasks"):
        run_train(single, prepared_tasks, tmp_path / "bad")


def test_two_heads_under_ddp(
    tmp_path: Path, prepared_tasks: Prepared, sqlite_tracking: str
) -> None:
    """Two CPU ranks with learned task weights: the weights are averaged like DDP's gradients."""
    params = tiny_params(
        tmp_path, train__epochs=1, train__batch_size=4, train__task_weighting="uncertainty"
    )
    out = subprocess.run(
        [str(VENV_BIN / "carinspect"), "train", "--params", str(params),
         "--ingest", str(prepared_tasks.ingest), "--splits", str(prepared_tasks.splits),
         "--out", str(tmp_path / "ddp"), "--nproc", "2"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    state = load_checkpoint(tmp_path / "ddp" / "last.pt")
    assert state["world_size"] == 2 and float(state["loss"]["log_vars"].abs().sum()) > 0
    metrics = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert 0.0 <= metrics["val_damage_accuracy"] <= 1.0
    mlflow.set_tracking_uri(sqlite_tracking)
    assert the_only_run(sqlite_tracking).data.tags["world_size"] == "2"
