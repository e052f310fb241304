"""INT8 against FP32 through the server: req/s at concurrency 32, small photos and phone photos.

The model's checkpoint is exported again with ``export.quantize: int8`` (the real export stage,
into a temporary folder: the FP32 graph and the INT8 one beside it), then two `carinspect serve`
processes answer the same photos, one with ``MODEL_PRECISION=int8`` and one with ``fp32``, driven
by wrk in turns (``--rounds``). Once with the photos as they are and once re-encoded at 2000x1500
(JPEG quality 90), as a phone uploads them. Prints req/s (median of the rounds), p50 and p99 and
the INT8 / FP32 ratio for each, with the CPU's name and flags. The gate is loosened for the
export (this measures speed; benchmarks/int8.py counts the decisions that differ).

    python benchmarks/int8_serving.py [--params params.yaml] [--images DIR] [--seconds 20]
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from int8 import _cpu
from serve_throughput import ROOT, _images, phone_photos, turn_args, turns, wrk_script


def _export_int8(params: Path, work: Path) -> Path:
    """`carinspect export` of the main job's checkpoint with the INT8 switch on; its folder."""
    p = yaml.safe_load(params.read_text())
    p["export"].update({"quantize": "int8", "int8_max_flip_rate": 1.0,
                        "int8_max_recall_drop": 1.0})  # fmt: skip
    (work / "params.yaml").write_text(yaml.safe_dump(p))
    out = work / "export"
    models = ROOT / "models"
    subprocess.run(
        [str(Path(sys.executable).parent / "carinspect"), "export", "--params",
         str(work / "params.yaml"), "--checkpoint", str(models / "train" / "best.pt"),
         "--calibration", str(models / "evaluate" / "calibration.json"),
         "--threshold", str(models / "threshold" / "threshold.json"),
         "--ingest", str(ROOT / "data" / "ingest"),
         "--splits", str(ROOT / "data" / "split" / "splits.csv"), "--out", str(out),
         "--run", str(work / "no-run.json")],  # not the main job's MLflow run
        check=True, cwd=ROOT, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    gate = json.loads((out / "model.json").read_text())["int8"]
    print(
        f"INT8 graph: {gate['decision_flips']} of {gate['images']} val decisions differ from FP32"
    )
    return out


def main() -> None:
    ap = turn_args(__doc__)
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    args = ap.parse_args()
    if not (ROOT / "models" / "train" / "best.pt").is_file():
        sys.exit("no models/train/best.pt: run scripts/main.sh first")
    print(f"CPU: {_cpu()}")
    work = Path(tempfile.mkdtemp())
    model = _export_int8(args.params, work)
    small = _images(args.images, args.count)
    for name, images in (("photos as they are", small),
                         ("2000x1500 phone photos", phone_photos(small, (2000, 1500)))):  # fmt: skip
        folder = work / name.split()[0]
        folder.mkdir()
        script = wrk_script(images, folder)
        base = {"MODEL_URI": str(model), "MODEL_CACHE_DIR": str(work / "cache")}
        print(f"\n{name}: {len(images)}, {sum(map(len, images)) / len(images) / 1024:.0f} KiB "
              "on average")  # fmt: skip
        runs = turns({precision: ({**base, "MODEL_PRECISION": precision}, script)
                      for precision in ("fp32", "int8")}, args.rounds, args.seconds)  # fmt: skip
        rps = {side: statistics.median(run["rps"] for run in found) for side, found in runs.items()}
        print(f"req/s at c32 (median of {args.rounds}): fp32 {rps['fp32']:.1f}, int8 "
              f"{rps['int8']:.1f}; int8 / fp32 = {rps['int8'] / rps['fp32']:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
