"""Whether a checkpoint left behind continues this training (train resumes by default)."""

from __future__ import annotations

from pathlib import Path

import torch

from carinspect.config import MlflowConfig, ModelConfig, TrainConfig
from carinspect.training.resume import resumable


def _config(epochs: int = 5) -> dict[str, object]:
    return {
        "model": ModelConfig().model_dump(),
        "train": TrainConfig(epochs=epochs).model_dump(),
        "mlflow": MlflowConfig().model_dump(),
    }


def _save(path: Path, **state: object) -> Path:
    base = {"model": {}, "classes": ["a", "b"], "config": _config(), "data": "sha256:d",
            "epoch": 1, "step": 0,
            "early_stopping": {"best": 0.5, "best_epoch": 1, "bad_epochs": 0},
            "mlflow_run_id": None}  # fmt: skip
    torch.save({**base, **state}, path)
    return path


def test_only_an_unfinished_checkpoint_of_the_same_training_and_data_resumes(
    tmp_path: Path,
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    last = _save(tmp_path / "last.pt")
    ok, why = resumable(last, _config(), "sha256:d", uri)
    assert ok and "continues at epoch 3 of 5" in why
    assert resumable(last, _config(epochs=9), "sha256:d", uri) == (
        False, f"{last} was trained with other model/train/mlflow params",
    )  # fmt: skip
    assert not resumable(last, _config(), "sha256:other", uri)[0]
    done = _save(tmp_path / "done.pt", epoch=4)
    assert resumable(done, _config(), "sha256:d", uri) == (
        False, f"{done} is of a finished training",
    )  # fmt: skip
    assert resumable(tmp_path / "none.pt", _config(), "sha256:d", uri)[0] is False


def test_a_foreign_or_torn_checkpoint_starts_over_instead_of_failing(tmp_path: Path) -> None:
    torn = tmp_path / "torn.pt"
    torn.write_bytes(b"PK\x03\x04 not a whole checkpoint")
    ok, why = resumable(torn, _config(), "sha256:d", "sqlite:///x.db")
    assert not ok and "cannot be read" in why
    foreign = tmp_path / "timm.pt"
    torch.save({"state_dict": {"fc.weight": torch.zeros(2, 2)}}, foreign)  # another codebase's
    ok, why = resumable(foreign, _config(), "sha256:d", "sqlite:///x.db")
    assert not ok and "cannot be read" in why and "lacks 'model'" in why
