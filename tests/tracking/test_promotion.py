"""Promotion gate, audit trail and rollback, embedded and against a real mlflow server."""

import json
import shutil
from pathlib import Path

import mlflow
import onnx
import pytest
from mlflow.tracking import MlflowClient

from carinspect.config import PromoteConfig, RegisterConfig, Settings
from carinspect.contracts.base import ContractError
from carinspect.stages import register
from carinspect.tracking import promotion
from carinspect.tracking.audit import read_trail, reconcile
from carinspect.tracking.promotion import GateRefused, PromotionError
from carinspect.tracking.registry import list_versions
from tests.conftest import Registry, distinct_export

GATE = PromoteConfig(metric="accuracy", split="test", tolerance=0.01, floor=0.65)


def _register(
    tmp_path: Path,
    registry: Registry,
    upstream: dict[str, Path],
    name: str,
    accuracy: float,
    export: Path | None = None,
) -> str:
    """Register the upstream export as a new version whose recorded test accuracy is given."""
    metrics = json.loads(upstream["metrics"].read_text())
    metrics["test"]["accuracy"] = accuracy
    folder = tmp_path / f"evaluate-{accuracy}"  # an evaluate folder: metrics.json + verdict.json
    folder.mkdir(exist_ok=True)
    shutil.copy(upstream["metrics"].parent / "verdict.json", folder)
    path = folder / "metrics.json"
    path.write_text(json.dumps(metrics))
    if export is None:  # another model each time (register is once per run and ONNX file)
        export = distinct_export(upstream["export"], tmp_path / f"export-{accuracy}", str(accuracy))
    v = register.run(
        RegisterConfig(model_name=name, require_better=False),
        Settings(),
        export,
        path,
        registry.run_id,
        tmp_path / "registered.json",
    )
    return v.version


def _champion(client: MlflowClient, name: str) -> str:
    return str(client.get_model_version_by_alias(name, "champion").version)


def test_gate_force_outside_move_and_rollback(
    tmp_path: Path, registry: Registry, upstream: dict[str, Path]
) -> None:
    client = MlflowClient(registry.uri)
    name = f"gate-{tmp_path.name[-10:]}"
    assert _register(tmp_path, registry, upstream, name, 0.90) == "1"
    first = promotion.promote(client, name, GATE, None, "alice")
    assert first is not None and (first.from_version, first.to_version) == (None, "1")
    assert first.gate["candidate"] == pytest.approx(0.90) and first.gate["serving_files"] == "ok"
    assert _champion(client, name) == "1"

    assert _register(tmp_path, registry, upstream, name, 0.80) == "2"
    with pytest.raises(
        GateRefused, match=r"test accuracy 0\.8000 < 0\.8900 \(champion version 1 has 0\.9000"
    ):
        promotion.promote(client, name, GATE, None, "bob")
    assert _champion(client, name) == "1"
    with pytest.raises(PromotionError, match="--force needs --reason"):
        promotion.promote(client, name, GATE, "2", "bob", force=True)

    forced = promotion.promote(
        client, name, GATE, "2", "bob", force=True, reason="hotfix for the night shift"
    )
    assert forced is not None and forced.action == "force"
    assert "hotfix for the night shift" in forced.reason and "0.8000 < 0.8900" in forced.reason
    assert _champion(client, name) == "2"

    client.set_registered_model_alias(name, "champion", "1")  # what the MLflow UI does
    noticed = reconcile(client, name, "champion", observer="test")
    assert noticed is not None and (noticed.from_version, noticed.to_version) == ("2", "1")
    assert noticed.action == "external" and noticed.by == "unknown"
    assert reconcile(client, name, "champion", observer="test") is None  # recorded once

    trail = read_trail(client, name, "champion")
    assert [(m.from_version, m.to_version, m.action, m.by) for m in trail] == [
        (None, "1", "promote", "alice"),
        ("1", "2", "force", "bob"),
        ("2", "1", "external", "unknown"),
    ]
    assert trail[1].gate["required"] == pytest.approx(0.89)

    back = promotion.rollback(client, name, "champion", "carol")
    assert (back.from_version, back.to_version, back.action) == ("1", "2", "rollback")
    assert _champion(client, name) == "2"
    assert promotion.rollback(client, name, "champion", "carol").to_version == "1"
    with pytest.raises(PromotionError, match="no earlier champion"):
        promotion.rollback(client, name, "champion", "carol")

    rows = list_versions(client, name)
    assert [(r.version, r.aliases) for r in rows] == [("2", ["challenger"]), ("1", ["champion"])]
    assert rows[0].metrics["test.accuracy"] == pytest.approx(0.80)
    assert {"data.digest", "git.commit", "params.hash"} <= rows[0].lineage.keys()


def test_floor_and_incomplete_versions_are_refused(
    tmp_path: Path, registry: Registry, upstream: dict[str, Path]
) -> None:
    client = MlflowClient(registry.uri)
    name = f"floor-{tmp_path.name[-10:]}"
    _register(tmp_path, registry, upstream, name, 0.50)
    with pytest.raises(GateRefused, match=r"test accuracy 0\.5000 < floor 0\.6500"):
        promotion.promote(client, name, GATE, None, "alice")

    broken = tmp_path / "export-no-decision"
    shutil.copytree(upstream["export"], broken)
    meta = json.loads((broken / "model.json").read_text())
    del meta["decision"]
    (broken / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ContractError, match=r"model\.json has no decision"):
        _register(tmp_path, registry, upstream, name, 0.95, export=broken)  # register refuses it
    # a version registered by another tool with the same card is refused by the gate, by the
    # same rules
    mlflow.set_tracking_uri(registry.uri)
    with mlflow.start_run(experiment_id=client.get_run(registry.run_id).info.experiment_id):
        info = mlflow.onnx.log_model(
            onnx.load(str(broken / "model.onnx")),
            name="model",
            extra_files=[str(broken / "model.json")],
        )
    version = mlflow.register_model(info.model_uri, name).version
    client.set_model_version_tag(name, version, "metrics.test.accuracy", "0.95")
    with pytest.raises(GateRefused, match=r"model\.json has no decision"):
        promotion.promote(client, name, GATE, version, "alice")
    with pytest.raises(PromotionError, match="has no version '99'"):
        promotion.promote(client, name, GATE, "99", "alice")
    assert "champion" not in client.get_registered_model(name).aliases  # nothing moved


def test_a_version_on_other_classes_is_refused_naming_both(
    tmp_path: Path, registry: Registry, upstream: dict[str, Path]
) -> None:
    client = MlflowClient(registry.uri)
    name = f"classes-{tmp_path.name[-10:]}"
    first = _register(tmp_path, registry, upstream, name, 0.90)
    promotion.promote(client, name, GATE, first, "alice")
    second = _register(tmp_path, registry, upstream, name, 0.97)
    # what register writes for a model trained on another project's photos
    client.set_model_version_tag(name, second, "classes", "pickup,sedan,van")
    with pytest.raises(GateRefused) as refused:
        promotion.promote(client, name, GATE, second, "bob")
    message = str(refused.value)
    assert f"version {second} answers pickup,sedan,van" in message
    assert f"champion version {first} answers clean,dirty" in message
    assert "0.9700 <" not in message  # scores on other classes are not compared
    assert _champion(client, name) == first
