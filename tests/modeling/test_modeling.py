from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from carinspect.config import ModelConfig, TrainConfig
from carinspect.modeling.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from carinspect.modeling.factory import ModelError, build_model
from carinspect.modeling.losses import FocalLoss, build_loss, class_weight_tensor
from carinspect.modeling.weights import WeightsError


def test_build_and_drop_rates() -> None:
    model = build_model(ModelConfig(name="test_resnet", drop_rate=0.2, drop_path_rate=0.1), 3)
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 3)


def test_unknown_model() -> None:
    with pytest.raises(ModelError, match=r"close matches: .*resnet18"):
        build_model(ModelConfig(name="resnet_18"), 2)


def test_local_weights_file(tmp_path: Path) -> None:
    source = build_model(ModelConfig(name="test_resnet"), 1000)
    path = tmp_path / "weights.pth"
    torch.save(source.state_dict(), path)
    loaded = build_model(ModelConfig(name="test_resnet", pretrained=True, weights=str(path)), 2)
    assert torch.equal(loaded.state_dict()["conv1.0.weight"], source.state_dict()["conv1.0.weight"])
    assert loaded.state_dict()["fc.weight"].shape[0] == 2  # new head for our classes
    with pytest.raises(WeightsError, match="file not found"):
        build_model(
            ModelConfig(name="test_resnet", pretrained=True, weights=str(tmp_path / "x")), 2
        )


def test_focal_with_gamma_zero_is_cross_entropy() -> None:
    logits, target = torch.randn(16, 3), torch.randint(0, 3, (16,))
    assert torch.allclose(
        FocalLoss(gamma=0.0)(logits, target), F.cross_entropy(logits, target), atol=1e-6
    )
    w = torch.tensor([1.0, 2.0, 0.5])
    assert torch.allclose(
        FocalLoss(0.0, w)(logits, target), F.cross_entropy(logits, target, weight=w), atol=1e-6
    )
    smooth = FocalLoss(0.0, label_smoothing=0.1)(logits, target)
    assert torch.allclose(smooth, F.cross_entropy(logits, target, label_smoothing=0.1), atol=1e-6)


def test_class_weights() -> None:
    w = class_weight_tensor("auto", [0, 0, 0, 1], 2)
    assert w is not None and torch.allclose(w, torch.tensor([4 / 6, 4 / 2]))
    assert class_weight_tensor("none", [0, 1], 2) is None
    with pytest.raises(ValueError, match="3 values for 2 classes"):
        class_weight_tensor([1.0, 2.0, 3.0], [0, 1], 2)
    loss = build_loss(TrainConfig(loss="focal", class_weights="auto"), [0, 0, 1], 2)
    assert isinstance(loss, FocalLoss)


def test_checkpoint_round_trip_and_errors(tmp_path: Path) -> None:
    state = {"model": {"w": torch.ones(2)}, "classes": ["a", "b"], "config": {}, "epoch": 0}
    save_checkpoint(state, tmp_path / "c.pt")
    assert torch.equal(load_checkpoint(tmp_path / "c.pt")["model"]["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]
    (tmp_path / "bad.pt").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "none.pt")
