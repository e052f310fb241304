"""bf16 against fp32 training on the CPU: the demo recipe run by `carinspect train` both ways.

The same params (``--params``, the demo's by default), data and seed, once with ``train.amp:
true`` (bf16 autocast where the CPU has AVX-512 BF16 or AMX) and once with ``train.amp: false``,
in turns (``--rounds``) so the machine's drift hits both alike. Prints the training images/s of
each (median over the epochs after the first, which warms caches and workers), the ratio (goal
>= 1.3x) and the best val macro-F1 of each (goal: within 0.02), with the CPU's name and flags.

    python benchmarks/bf16_train.py [--params params.yaml] [--epochs 15] [--rounds 2]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from int8 import _cpu
from serve_throughput import ROOT

from carinspect.training.cpu import bf16_in_hardware


def _train(params: dict, amp: bool, epochs: int, work: Path, args: argparse.Namespace) -> dict:
    """One `carinspect train` run; its precision, median images/s and best val macro-F1."""
    side = work / ("bf16" if amp else "fp32")
    side.mkdir(parents=True, exist_ok=True)
    params = json.loads(json.dumps(params))
    params["train"].update({"amp": amp, "epochs": epochs})
    params["train"]["early_stopping"]["patience"] = epochs  # both run every epoch
    (side / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}"}
    cli = str(Path(sys.executable).parent / "carinspect")
    subprocess.run(
        [cli, "train", "--params", str(side / "params.yaml"), "--ingest", str(args.ingest),
         "--splits", str(args.splits), "--out", str(side / "train")],
        check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    rows = list(csv.DictReader((side / "train" / "history.csv").open()))
    metrics = json.loads((side / "train" / "metrics.json").read_text())
    return {
        "rate": statistics.median(float(r["images_per_s"]) for r in rows[1:]),
        "f1": float(metrics["val_macro_f1"]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument("--ingest", type=Path, default=ROOT / "data" / "ingest")
    ap.add_argument("--splits", type=Path, default=ROOT / "data" / "split" / "splits.csv")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    if not args.splits.is_file():
        sys.exit(f"{args.splits}: no splits (run scripts/main.sh, or pass --ingest/--splits)")
    print(f"CPU: {_cpu()}")
    if not bf16_in_hardware():
        sys.exit("this CPU has neither AVX-512 BF16 nor AMX: train.amp keeps fp32 here")
    params = yaml.safe_load(args.params.read_text())
    work = Path(tempfile.mkdtemp())
    found: dict[bool, list[dict]] = {True: [], False: []}
    for r in range(args.rounds):
        for amp in (False, True):
            run = _train(params, amp, args.epochs, work / f"round{r}", args)
            found[amp].append(run)
            print(f"round {r + 1} {'bf16' if amp else 'fp32'}: {run['rate']:6.1f} img/s, "
                  f"best val macro-F1 {run['f1']:.3f}")  # fmt: skip
    rate = {amp: statistics.median(x["rate"] for x in runs) for amp, runs in found.items()}
    f1 = {amp: statistics.median(x["f1"] for x in runs) for amp, runs in found.items()}
    print(
        f"\ntraining images/s (median of {args.rounds}): fp32 {rate[False]:.1f}, "
        f"bf16 {rate[True]:.1f}; bf16 / fp32 = {rate[True] / rate[False]:.2f}x (goal >= 1.3x)"
    )
    print(f"best val macro-F1: fp32 {f1[False]:.3f}, bf16 {f1[True]:.3f}; "
          f"difference {abs(f1[True] - f1[False]):.3f} (goal <= 0.02)")  # fmt: skip


if __name__ == "__main__":
    main()
