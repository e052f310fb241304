"""The label audit on demo photos with labels flipped on purpose: it finds them, drops nothing."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from carinspect.config import AuditConfig
from carinspect.contracts.feedback import parse_record
from carinspect.contracts.folders import AuditDir
from carinspect.stages import audit
from tests.conftest import Prepared


def _flip(splits: Path, out: Path, share: float, seed: int = 3) -> set[str]:
    """splits.csv with ``share`` of the train and val labels swapped; the paths flipped."""
    rows = list(csv.DictReader(splits.open()))
    rng = np.random.default_rng(seed)
    pool = [i for i, r in enumerate(rows) if r["split"] in ("train", "val")]
    chosen = rng.choice(pool, size=int(len(pool) * share), replace=False)
    other = {"clean": "dirty", "dirty": "clean"}
    for i in chosen:
        rows[i]["label"] = other[rows[i]["label"]]
    with out.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return {rows[i]["path"] for i in chosen}


def _train_and_val(splits: Path) -> set[str]:
    return {r["path"] for r in csv.DictReader(splits.open()) if r["split"] in ("train", "val")}


def test_the_audit_reports_doubtful_labels_and_drops_nothing(
    prepared: Prepared, upstream: dict[str, Path], tmp_path: Path
) -> None:
    flipped = _flip(prepared.splits, tmp_path / "splits.csv", share=0.15)
    cfg = AuditConfig(folds=4, features="checkpoint")
    result = audit.run(cfg, upstream["best"], prepared.ingest, tmp_path / "splits.csv",
                       tmp_path / "audit")  # fmt: skip
    found = {d.path for d in result.suspects}
    # a 2-epoch model on 40 px photos describes them poorly, so the count is loose here; what is
    # found on informative features is tests/evaluation/test_label_audit.py's and, on real
    # photos, benchmarks/label_audit.py's
    assert found & flipped and found <= {r for r in _train_and_val(tmp_path / "splits.csv")}
    assert [d.quality for d in result.suspects] == sorted(d.quality for d in result.suspects)
    out = AuditDir(tmp_path / "audit")
    rows = list(csv.DictReader(out.suspects.open()))
    assert len(rows) == len(result.suspects) and {r["path"] for r in rows} == found
    assert all(r["given"] != r["suggested"] for r in rows)
    metrics = json.loads(out.metrics.read_text())
    assert metrics["photos"] == result.photos and metrics["suspects"] == len(found)
    assert out.sheet.is_file() and "suspects.png" in out.report_md.read_text()
    splits_after = (tmp_path / "splits.csv").read_text()
    assert all(p in splits_after for p in found)  # reported, never dropped

    log = audit.write_review_log(result, prepared.ingest, tmp_path / "review")
    records = [parse_record(p.read_bytes(), str(p)) for p in log.rglob("*.json")]
    assert len(records) == len(result.suspects)
    assert {r.reasons[0].kind for r in records} == {"label_issue"}
    assert all(r.labels["label"] != r.answer["given"] for r in records)


def test_the_dvc_stage_is_a_no_op_unless_enabled(
    prepared: Prepared, upstream: dict[str, Path], tmp_path: Path
) -> None:
    result = audit.run(AuditConfig(enabled=False), upstream["best"], prepared.ingest,
                       prepared.splits, tmp_path / "audit", only_if_enabled=True)  # fmt: skip
    assert not result.enabled
    out = AuditDir(tmp_path / "audit")
    assert json.loads(out.metrics.read_text()) == {"enabled": False}
    assert out.sheet.is_file() and out.suspects.is_file()  # dvc.yaml's outputs exist either way


def test_pretrained_features_without_pretrained_weights_are_refused(
    prepared: Prepared, upstream: dict[str, Path], tmp_path: Path
) -> None:
    with pytest.raises(audit.AuditError, match=r"audit\.features: pretrained, but the checkpoint"):
        audit.run(AuditConfig(features="pretrained"), upstream["best"], prepared.ingest,
                  prepared.splits, tmp_path / "audit")  # fmt: skip
    assert not (tmp_path / "audit").exists()
