"""The same-photos gate: candidate and champion answer one identical set, as each serves."""

import csv
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from carinspect.config import PromoteConfig
from carinspect.contracts.cards import read_card
from carinspect.serving import judge
from carinspect.tracking import promotion
from carinspect.tracking.audit import read_trail
from tests.conftest import REPO_ROOT, VENV_BIN, Prepared, Registry, registered_store
from tests.tracking.test_promotion import _register

GATE = PromoteConfig(metric="accuracy", split="test", tolerance=0.01, floor=0.0)


def test_the_set_is_the_test_split_and_the_golden_set_with_one_digest(
    prepared: Prepared, tmp_path: Path
) -> None:
    plain = judge.photo_set(prepared.ingest, prepared.splits, None)
    assert plain.parts == {"test split": len(plain.photos)} and plain.photos
    golden = tmp_path / "golden"
    (golden / "dirty").mkdir(parents=True)
    shutil.copy(prepared.ingest / plain.photos[0].name, golden / "dirty" / "a.png")
    both = judge.photo_set(prepared.ingest, prepared.splits, golden)
    assert both.parts == {"test split": len(plain.photos), "golden set": 1}
    assert both.digest != plain.digest
    assert judge.photo_set(prepared.ingest, prepared.splits, golden).digest == both.digest
    (golden / "dirty" / "a.png").rename(golden / "dirty" / "b.png")  # a name is not the photo
    assert judge.photo_set(prepared.ingest, prepared.splits, golden).digest == both.digest


def test_a_version_is_scored_as_it_serves(prepared: Prepared, upstream: dict[str, Path]) -> None:
    photos = judge.photo_set(prepared.ingest, prepared.splits, None)
    got = judge.score(upstream["export"], photos, "accuracy")
    assert got["photos"] == len(photos.photos) and 0.0 <= got["value"] <= 1.0
    card = read_card(upstream["export"] / "model.json")
    assert got["uncertain"] <= got["photos"] and card.classes
    for metric in ("balanced_accuracy", "macro_f1", "weighted_f1", "auroc_macro"):
        assert 0.0 <= judge.score(upstream["export"], photos, metric)["value"] <= 1.0


def test_the_gate_compares_the_same_photo_figures_and_records_them(
    tmp_path: Path, registry: Registry, upstream: dict[str, Path]
) -> None:
    client = MlflowClient(registry.uri)
    name = "same-photos"
    v1 = _register(tmp_path, registry, upstream, name, accuracy=0.99)
    client.set_registered_model_alias(name, "champion", v1)
    v2 = _register(tmp_path, registry, upstream, name, accuracy=0.50)

    def judged(candidate: float, champion: float) -> promotion.Judge:
        def run(version: str, current: str | None) -> dict:
            return {"digest": "sha256:" + "ab" * 32, "photos": 40, "parts": {"test split": 40},
                    "candidate": {"version": version, "metric": "accuracy", "value": candidate},
                    "champion": {"version": current, "metric": "accuracy", "value": champion}}  # fmt: skip

        return run

    # on the recorded tags v2 (0.50) loses to v1 (0.99); on the same photos it is the better one
    move = promotion.promote(client, name, GATE, v2, "tester", judge=judged(0.9, 0.8))
    assert move is not None and move.to_version == v2
    (entry,) = [m for m in read_trail(client, name, "champion") if m.to_version == v2]
    assert entry.gate["same_photos"]["digest"].startswith("sha256:abab")
    assert entry.gate["candidate"] == 0.9 and entry.gate["champion"] == 0.8
    v3 = _register(tmp_path, registry, upstream, name, accuracy=0.98)  # great on its own split
    with pytest.raises(promotion.GateRefused, match=r"same-photos accuracy 0\.7000 < 0\.8900"):
        promotion.promote(client, name, GATE, v3, "tester", judge=judged(0.7, 0.9))


def test_promote_judges_on_this_projects_photos_and_refuses_foreign_data(
    tmp_path: Path, upstream: dict[str, Path], prepared: Prepared
) -> None:
    uri = registered_store(tmp_path, upstream)
    shutil.copytree(prepared.ingest, tmp_path / "data" / "ingest")
    shutil.copytree(prepared.splits.parent, tmp_path / "data" / "split")
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "CARINSPECT_USER": "tester",
           "MODEL_CACHE_DIR": str(tmp_path / "cache")}  # fmt: skip

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(VENV_BIN / "carinspect"), *args, "--params", str(REPO_ROOT / "params.yaml")],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip

    manifest = tmp_path / "data" / "ingest" / "manifest.csv"
    original = manifest.read_text()
    manifest.write_text(original + "\n")  # other data than version 1 trained on
    foreign = cli("promote", "--force", "--reason", "test")
    assert foreign.returncode == 2 and "is not version 1's" in foreign.stderr, foreign.stderr
    manifest.write_text(original)
    done = cli("promote", "--force", "--reason", "two-epoch model below the floor")
    assert done.returncode == 0, done.stderr
    gate = json.loads(done.stdout.splitlines()[-1])
    judged = gate["same_photos"]
    tests = sum(1 for r in csv.DictReader(prepared.splits.open()) if r["split"] == "test")
    assert judged["photos"] == tests and judged["parts"] == {"test split": tests}
    assert judged["candidate"]["version"] == "1" and judged["champion"] is None
    assert gate["candidate"] == judged["candidate"]["value"]
    status = cli("status")
    assert "champion same-photos gate: not passed (force: two-epoch model" in status.stdout
