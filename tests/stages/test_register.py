from pathlib import Path

import mlflow
import pytest
import yaml
from mlflow.tracking import MlflowClient

from carinspect.config import RegisterConfig, Settings
from carinspect.contracts.folders import MissingStageOutput
from carinspect.stages import register
from tests.conftest import Registry, distinct_export


def test_register_is_once_per_export_and_a_new_export_is_version_2(
    tmp_path: Path, registry: Registry, upstream: dict[str, Path]
) -> None:
    run_id = registry.run_id
    name = f"cars-{tmp_path.name[-12:]}"
    cfg = RegisterConfig(model_name=name, require_better=False)
    status = MlflowClient().get_run(run_id).info.status
    first = register.run(
        cfg, Settings(), upstream["export"], upstream["metrics"], run_id, tmp_path / "r1.json"
    )
    again = register.run(  # a rerun (after a kill before the alias moved): the same version
        cfg, Settings(), upstream["export"], upstream["metrics"], run_id, tmp_path / "r1b.json"
    )
    other = distinct_export(upstream["export"], tmp_path / "export2")
    second = register.run(cfg, Settings(), other, upstream["metrics"], run_id, tmp_path / "r2.json")
    assert (first.version, again.version, second.version) == ("1", "1", "2")
    client = MlflowClient()
    assert len(client.search_model_versions(f"name = '{name}'")) == 2
    assert client.get_run(run_id).info.status == status  # never reopened
    mv = client.get_model_version_by_alias(name, "challenger")
    assert str(mv.version) == "2"  # int from SQLite, str over REST: compare as text
    assert mv.tags["export.sha256"].startswith("sha256:")
    for key in (
        "data.digest",
        "git.commit",
        "params.hash",
        "metrics.test.accuracy",
        "decision",
        "classes",
    ):
        assert key in mv.tags, key
    assert (tmp_path / "r2.json").read_text().count('"version": "2"') == 1
    files = mlflow.artifacts.download_artifacts(
        f"models:/{name}@challenger", dst_path=str(tmp_path / "dl")
    )
    assert (Path(files) / "model.onnx").is_file() and (
        Path(files) / "extra_files" / "model.json"
    ).is_file()
    assert not list(Path(files).glob("*.data"))  # one self-contained ONNX file
    # what was checked, not what might be: the parity check ran on CPU
    assert mv.tags["onnx.checked_providers"] == "CPUExecutionProvider"
    assert float(mv.tags["onnx.parity.fp32.max_abs_diff"]) < 1e-4
    assert mv.tags["onnx.run_artifacts"] == f"runs:/{run_id}/export"
    # the tag is true on both stores: the server's run had no export copy, register added it
    assert "export/model.onnx" in {a.path for a in client.list_artifacts(run_id, "export")}
    assert client.get_run(run_id).data.params["register.model_name"] == name
    flavor = yaml.safe_load((Path(files) / "MLmodel").read_text())["flavors"]["onnx"]
    assert flavor["providers"] == ["CPUExecutionProvider"]


def test_missing_export(tmp_path: Path, upstream: dict[str, Path]) -> None:
    with pytest.raises(
        MissingStageOutput, match=r"model\.onnx not found: it is written by the export"
    ):
        register.run(
            RegisterConfig(require_better=False),
            Settings(),
            tmp_path,
            upstream["metrics"],
            "x",
            tmp_path / "r.json",
        )


def test_a_model_not_shown_better_than_the_baseline_is_not_registered(
    tmp_path: Path, registry: Registry, upstream: dict[str, Path]
) -> None:
    """The two-epoch upstream model on ten test photos: its verdict fails, with the figures."""
    name = f"verdict-{tmp_path.name[-12:]}"
    verdict = (upstream["metrics"].parent / "verdict.json").read_text()
    assert '"problems": []' not in verdict.replace("\n", "").replace("  ", "")
    with pytest.raises(register.NoBetterThanBaseline) as refused:
        register.run(
            RegisterConfig(model_name=name), Settings(), upstream["export"], upstream["metrics"],
            registry.run_id, tmp_path / "r.json",
        )  # fmt: skip
    message = str(refused.value)
    assert "than always answering" in message and "on 10 photos" in message
    assert "register.require_better: false" in message
    assert not (tmp_path / "r.json").exists()
    assert not MlflowClient().search_model_versions(f"name = '{name}'")

    allowed = register.run(
        RegisterConfig(model_name=name, require_better=False), Settings(), upstream["export"],
        upstream["metrics"], registry.run_id, tmp_path / "r.json",
    )  # fmt: skip
    tag = MlflowClient().get_model_version(name, allowed.version).tags["verdict"]
    assert tag.startswith("failed: ") and "always answering" in tag
