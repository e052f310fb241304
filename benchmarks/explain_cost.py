"""What explanations cost the server: req/s at concurrency 32 with ``?explain=true`` vs without.

Two `carinspect serve` processes on the same model, one asked for a heatmap with every answer
(the graph's class activation maps fetched with the batch, one PNG drawn per photo and sent as
base64) and one asked for answers only, driven by wrk in turns (``--rounds``) so the machine's
drift hits both alike. Prints req/s (median of the rounds), p50 and p99 of each and the ratio
(goal: explained >= 0.8x plain), with the size of an explained answer.

    python benchmarks/explain_cost.py [--model models/export] [--images DIR] [--seconds 20]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_throughput import ROOT, _images, turn_args, turns, wrk_script


def main() -> None:
    ap = turn_args(__doc__)
    ap.add_argument("--model", type=Path, default=ROOT / "models" / "export")
    args = ap.parse_args()
    card = args.model / "model.json"
    if not card.is_file() or '"output": "cam"' not in card.read_text():
        sys.exit(f"{args.model}: no model with class activation maps (run scripts/main.sh)")
    work = Path(tempfile.mkdtemp())
    images = _images(args.images, args.count)
    env = {"MODEL_URI": str(args.model), "MODEL_CACHE_DIR": str(work / "cache")}
    sides = {
        "plain": (env, wrk_script(images, work)),
        "explain=true": (env, wrk_script(images, work, "/predict?explain=true")),
    }
    runs = turns(sides, args.rounds, args.seconds)
    plain = statistics.median(run["rps"] for run in runs["plain"])
    explained = statistics.median(run["rps"] for run in runs["explain=true"])
    print(f"\nreq/s at c32 (median of {args.rounds}): plain {plain:.1f}, "
          f"explain=true {explained:.1f}")  # fmt: skip
    print(f"explain / plain = {explained / plain:.3f}x (goal >= 0.8x)")


if __name__ == "__main__":
    main()
