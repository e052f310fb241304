"""The label audit on demo photos with labels flipped on purpose: it finds them, drops nothing."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from carinspect.config import AuditConfig, DataConfig, DemoConfig, IngestConfig
from carinspect.contracts.feedback import parse_record
from carinspect.contracts.folders import AuditDir, IngestDir
from carinspect.data.intake.demo import demo_files
from carinspect.data.intake.feedback import import_feedback
from carinspect.data.intake.manifest import read_manifest
from carinspect.errors import InputError
from carinspect.review.suspects import write_review_log
from carinspect.stages import audit, ingest
from carinspect.stages.audit import Doubt
from tests.conftest import Prepared


def flip_labels(splits: Path, out: Path, share: float, seed: int = 3) -> set[str]:
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
    flipped = flip_labels(prepared.splits, tmp_path / "splits.csv", share=0.15)
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

    data = DataConfig(source="demo", demo=DemoConfig(per_class=24, broken=False))  # prepared's
    log = write_review_log(result, data, tmp_path / "review")
    records = [parse_record(p.read_bytes(), str(p)) for p in log.rglob("*.json")]
    assert len(records) == len(result.suspects)
    assert {r.reasons[0].kind for r in records} == {"label_issue"}
    assert all(r.labels["label"] != r.answer["given"] for r in records)
    assert {r.sha256 for r in records} == {d.sha256 for d in result.suspects}  # source bytes


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


def _folder_source(root: Path, wrong: int) -> tuple[Path, list[str]]:
    """Demo photos in class folders, the first ``wrong`` dirty ones filed under clean."""
    files = demo_files(DemoConfig(per_class=6, seed=5, broken=False))
    misfiled = []
    for f in files:
        label = f.label
        if f.label == "dirty" and len(misfiled) < wrong:
            label = "clean"
            misfiled.append(f"{root}/{label}/{f.name}")
        (root / label).mkdir(parents=True, exist_ok=True)
        (root / label / f.name).write_bytes(f.make())
    return root, misfiled


def test_a_suspect_corrected_in_review_is_relabelled_by_ingest_not_dropped(tmp_path: Path) -> None:
    source, misfiled = _folder_source(tmp_path / "source", wrong=2)
    data = DataConfig(source=str(source))
    ingest.run(data, IngestConfig(short_side=40), tmp_path / "ingest")
    rows = {r.source: r for r in read_manifest(IngestDir(tmp_path / "ingest").manifest)}
    doubts = [Doubt("label", "train", s, rows[s].path, "clean", "dirty", 0.1, rows[s].sha256)
              for s in misfiled]  # fmt: skip
    result = audit.AuditResult(tmp_path / "audit", len(rows), doubts, "pretrained",
                               {"label": ["clean", "dirty"]})  # fmt: skip
    log = write_review_log(result, data, tmp_path / "review")
    # the reviewer corrects the first suspect and confirms the second's given label
    verdicts = tmp_path / "verdicts.csv"
    verdicts.write_text(f"sha256,label\n{rows[misfiled[0]].sha256},dirty\n"
                        f"{rows[misfiled[1]].sha256},clean\n")  # fmt: skip
    import_feedback(verdicts, str(log), tmp_path / "feedback", dvc=False)

    again = ingest.run(DataConfig(source=str(source), feedback=str(tmp_path / "feedback")),
                       IngestConfig(short_side=40), tmp_path / "ingest2")  # fmt: skip
    after = read_manifest(again.manifest)
    assert len(after) == len(rows)  # no photo lost, none added twice
    by_sha = {r.sha256: r for r in after}
    corrected, confirmed = (by_sha[rows[s].sha256] for s in misfiled)
    assert corrected.label == "dirty" and "/photos/dirty/" in corrected.source
    assert confirmed.label == "clean" and confirmed.source == misfiled[1]
    report = json.loads(again.report.read_text())
    assert report["dropped_by_reason"] == {"relabelled_in_review": 1, "exact_duplicate": 1}


def test_suspects_whose_source_changed_since_ingest_are_refused(tmp_path: Path) -> None:
    source, misfiled = _folder_source(tmp_path / "source", wrong=1)
    data = DataConfig(source=str(source))
    ingest.run(data, IngestConfig(short_side=40), tmp_path / "ingest")
    row = next(r for r in read_manifest(IngestDir(tmp_path / "ingest").manifest)
               if r.source == misfiled[0])  # fmt: skip
    doubt = Doubt("label", "train", row.source, row.path, "clean", "dirty", 0.1, row.sha256)
    result = audit.AuditResult(tmp_path / "audit", 12, [doubt], "pretrained",
                               {"label": ["clean", "dirty"]})  # fmt: skip
    Path(misfiled[0]).write_bytes(Path(misfiled[0]).read_bytes() + b"\0")
    with pytest.raises(InputError, match=rf"{misfiled[0]} changed since it was ingested"):
        write_review_log(result, data, tmp_path / "review")
    Path(misfiled[0]).unlink()
    with pytest.raises(InputError, match=rf"no longer holds {misfiled[0]}"):
        write_review_log(result, data, tmp_path / "review")
    assert not (tmp_path / "review").exists()
