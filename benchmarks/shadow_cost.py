"""What shadow traffic costs: req/s and latency of `carinspect serve` with SHADOW on vs off.

One exported model (a main job's ``models/export``) is registered twice in a fresh embedded
MLflow store, as the champion and the challenger. The same server then runs without shadow,
with ``SHADOW=challenger SHADOW_PERCENT=25`` and with every request shadowed, taking turns for ``--rounds`` rounds, each driven by wrk at concurrency 32
for ``--seconds``; the median round's req/s and the pooled p50/p99 are printed with the ratio.
With shadow on, every photo is decoded and inferred twice on the same CPUs (the challenger's
answer is computed after the client's), so on a CPU-bound machine the ratio is the price of a
second opinion per request.

    python benchmarks/shadow_cost.py [--export models/export] [--images ../shared/data/...]

Needs wrk (`apt-get install wrk`). Figures move with the machine: compare the ratio.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_throughput import _images, _start, _stop, drive, pooled, wrk_script

ROOT = Path(__file__).resolve().parents[1]
NAME = "carinspect"


def _store(export: Path, where: Path) -> str:
    """An embedded store with the export registered twice: champion 1, challenger 2."""
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{where / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(export), "export")
        source = mlflow.get_artifact_uri("export")
    client = MlflowClient(uri)
    client.create_registered_model(NAME)
    for alias in ("champion", "challenger"):
        version = client.create_model_version(NAME, source, run_id=run.info.run_id).version
        client.set_registered_model_alias(NAME, alias, version)
    return uri


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--export", type=Path, default=ROOT / "models" / "export")
    parser.add_argument("--images", type=Path, default=None, help="a folder of photos")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install wrk")
    if not (args.export / "model.onnx").is_file():
        sys.exit(f"{args.export}: no model.onnx (run scripts/main.sh first)")
    where = Path(tempfile.mkdtemp())
    uri = _store(args.export, where)
    images = _images(args.images, 64)
    script = wrk_script(images, where)
    venv = Path(sys.executable).parent
    port = 18000 + os.getpid() % 1000
    common = {
        "MODEL_URI": f"models:/{NAME}@champion",
        "MLFLOW_TRACKING_URI": uri,
        "MODEL_CACHE_DIR": str(where / "cache"),
    }
    modes = {
        "shadow off": {},
        "shadow 25%": {"SHADOW": "challenger", "SHADOW_PERCENT": "25"},
        "shadow on": {"SHADOW": "challenger"},
    }
    runs: dict[str, list[dict]] = {m: [] for m in modes}
    for _ in range(args.rounds):
        for mode, extra in modes.items():
            proc = _start(
                [str(venv / "carinspect"), "serve", "--port", str(port)],
                {**common, **extra},
                port,
            )
            try:
                drive(port, script, 32, 2)  # warm up
                runs[mode].append(drive(port, script, 32, args.seconds))
            finally:
                _stop(proc)
    print(f"{len(images)} photos, {sum(map(len, images)) / len(images) / 1024:.0f} KiB on "
          f"average; concurrency 32, {args.rounds} rounds of {args.seconds} s")  # fmt: skip
    print(f"{'':12s}{'req/s':>8s}{'p50 ms':>9s}{'p99 ms':>9s}{'failed':>8s}")
    figures = {mode: pooled(r) for mode, r in runs.items()}
    for mode, f in figures.items():
        print(f"{mode:12s}{f['rps']:8.1f}{f['p50']:9.1f}{f['p99']:9.1f}{f['failed']:8.0f}")
    off = figures["shadow off"]["rps"]
    print(f"req/s with shadow on / off: {figures['shadow on']['rps'] / off:.2f}x; "
          f"with SHADOW_PERCENT=25 / off: {figures['shadow 25%']['rps'] / off:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
