import csv
import json
from pathlib import Path

import numpy as np
import pytest

from carinspect.config import Settings, ThresholdConfig
from carinspect.stages import threshold
from carinspect.stages.threshold import ThresholdError


def write_predictions(path: Path, classes: list[str], n: int = 400, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["split", "path", "label", "predicted", *(f"p_{c}" for c in classes)])
        for i in range(n):
            y = int(rng.integers(len(classes)))
            logits = rng.normal(0, 1, len(classes))
            logits[y] += 2.0
            p = np.exp(logits) / np.exp(logits).sum()
            w.writerow(
                [
                    "val" if i % 2 else "test",
                    f"images/{i}.png",
                    classes[y],
                    classes[int(p.argmax())],
                    *(f"{v:.6f}" for v in p),
                ]
            )
    return path


def test_binary_operating_point(tmp_path: Path) -> None:
    preds = write_predictions(tmp_path / "predictions.csv", ["clean", "dirty"])
    cfg = ThresholdConfig(
        positive_class="clean", target_precision=0.9, target_coverage=0.85, bootstrap=200
    )
    result = threshold.run(cfg, Settings(), preds, tmp_path / "out")
    spec = json.loads((tmp_path / "out" / "threshold.json").read_text())
    assert spec == result.spec
    assert spec["task"] == "binary" and spec["t_high"] == spec["threshold"] >= spec["t_low"]
    assert spec["splits"]["val"]["precision"] >= 0.9
    assert spec["splits"]["val"]["coverage"] == pytest.approx(0.85, abs=0.01)
    lo, hi = spec["splits"]["test"]["ci95"]["precision"]
    assert lo <= spec["splits"]["test"]["precision"] <= hi
    assert (tmp_path / "out" / "figures" / "threshold.png").stat().st_size > 1000
    # the curve of the positive answer: at the chosen threshold it shows val's precision
    assert sorted(p.name for p in (tmp_path / "out" / "plots").iterdir()) == ["clean.csv"]
    rows = read_curve(tmp_path / "out" / "plots" / "clean.csv")
    at = min((r for r in rows if r["threshold"] >= spec["threshold"]), key=lambda r: r["threshold"])
    assert at["precision"] == pytest.approx(spec["val_precision_at_threshold"], abs=1e-6)


def read_curve(path: Path) -> list[dict[str, float]]:
    with path.open(newline="") as fh:
        rows = [{k: float(v) for k, v in r.items()} for r in csv.DictReader(fh)]
    assert rows and list(rows[0]) == ["threshold", "precision", "recall", "coverage"]
    return rows


def test_unreachable_target_fails_or_falls_back(tmp_path: Path) -> None:
    preds = write_predictions(tmp_path / "predictions.csv", ["clean", "dirty"], n=60)
    with preds.open("a") as fh:  # the most confident "clean" of val is in fact dirty
        fh.write("val,images/x.png,dirty,clean,0.999999,0.000001\n")
    cfg = ThresholdConfig(
        positive_class="clean", target_precision=1.0, bootstrap=0, allow_fallback=False
    )
    with pytest.raises(ThresholdError, match=r"out of reach on val: the best achievable is 0\.\d+"):
        threshold.run(cfg, Settings(), preds, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    spec = threshold.run(
        cfg.model_copy(update={"allow_fallback": True}), Settings(), preds, tmp_path / "out"
    ).spec
    assert spec["fallback"] is True


def test_fixed_band_and_bad_positive_class(tmp_path: Path) -> None:
    preds = write_predictions(tmp_path / "predictions.csv", ["clean", "dirty"])
    cfg = ThresholdConfig(
        positive_class="clean", target_precision=0.8, band_low=0.3, band_high=0.7, bootstrap=0
    )
    spec = threshold.run(cfg, Settings(), preds, tmp_path / "out").spec
    assert (spec["t_low"], spec["t_high"]) == (0.3, 0.7)
    with pytest.raises(
        ThresholdError, match=r"positive_class 'shiny' is not one of \['clean', 'dirty'\]"
    ):
        threshold.run(ThresholdConfig(positive_class="shiny"), Settings(), preds, tmp_path / "o2")


def test_multiclass(tmp_path: Path) -> None:
    preds = write_predictions(tmp_path / "predictions.csv", ["minor", "moderate", "severe"])
    cfg = ThresholdConfig(min_confidence=0.5, per_class={"severe": 0.8}, bootstrap=100)
    spec = threshold.run(cfg, Settings(), preds, tmp_path / "out").spec
    assert spec["task"] == "multiclass" and 0 < spec["splits"]["val"]["coverage"] < 1
    # what dvc.yaml declares exists: a curve per predicted class and the figure
    out = tmp_path / "out"
    assert sorted(p.name for p in (out / "plots").iterdir()) == [
        "minor.csv", "moderate.csv", "severe.csv",
    ]  # fmt: skip
    assert (out / "figures" / "threshold.png").stat().st_size > 1000
    # severe's curve at 0.8 shows what per_class={"severe": 0.8} does to severe answers on val
    rows = read_curve(out / "plots" / "severe.csv")
    at = min((r for r in rows if r["threshold"] >= 0.8), key=lambda r: r["threshold"])
    with preds.open(newline="") as fh:
        val = [r for r in csv.DictReader(fh) if r["split"] == "val"]
    answered = [r for r in val if r["predicted"] == "severe" and float(r["p_severe"]) >= 0.8]
    assert at["coverage"] == pytest.approx(len(answered) / len(val))
    assert at["precision"] == pytest.approx(
        sum(r["label"] == "severe" for r in answered) / len(answered)
    )
    with pytest.raises(ThresholdError, match="unknown classes"):
        threshold.run(
            ThresholdConfig(per_class={"totalled": 0.9}), Settings(), preds, tmp_path / "o2"
        )


def test_missing_predictions(tmp_path: Path) -> None:
    with pytest.raises(ThresholdError, match="predictions file not found"):
        threshold.run(ThresholdConfig(), Settings(), tmp_path / "none.csv", tmp_path / "out")
