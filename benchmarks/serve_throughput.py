"""Serving throughput: `carinspect serve` against the in-process limit and a naive server.

All measured in one run on the same images and model:
- in-process limit: decode + preprocess + batched onnxruntime in one Python process (the
  honest ceiling of an HTTP service on this machine, see ../shared/BENCHMARKS.md), with the
  server's arrangement of threads (one decoding thread per CPU filling the next batch while
  onnxruntime runs this one), measured before each round at 32 so that it sees the same minutes
  of this machine as the servers; once, the same on one thread, one step after the other, and
  onnxruntime alone on the preprocessed tensors;
- the real server (`carinspect serve`, dynamic batching) and a naive FastAPI app (a sync route,
  one onnxruntime call per request, as the seed services do), each started as its own process
  and driven by wrk from another process at concurrency 1, 8, 32 and 64, taking turns
  (``--rounds``) so that the machine's drift hits both alike: req/s is the median over the
  rounds, p50 and p99 are of all the rounds' requests pooled. Rounds at 32 last at least
  ``--tail-seconds`` (20): wrk opens its 32 connections at once, and that first burst of
  uploads waits longer than any request in steady state; in a 6-second round at 4000x3000
  (~400 requests) its ~5 slowest requests are the p99, so short rounds measure the ramp, not
  saturation.
Prints req/s, p50 and p99 per concurrency and the ratios the serving issues set as goals:
server req/s at 32 >= 0.85x the in-process limit and >= 3x naive; p99 at 32 <= 4x p50 at 1
(photos as they are) or <= 1.5x p50 at 32 (phone photos).

``--phone`` measures what a ride-hailing app uploads: the folder's photos re-encoded by this
script at phone sizes (2000x1500 and 4000x3000, JPEG quality 90), one full comparison per size.
The naive server decodes every upload at full resolution, as the seed services did; carinspect
(and the in-process limit) decode through ``decode_image``, which reduces a JPEG in the decoder.

``--baseline-src DIR`` adds a third server: ``carinspect serve`` from another checkout's src/ (e.g.
``git worktree add /tmp/before HEAD~1``), in the same rounds, to price a change to the request
path (the ratio of this tree's server to the baseline's is printed).

Needs wrk (`apt-get install wrk`) and an exported model folder (model.onnx + model.json: run
`scripts/main.sh` first, or pass --model).

    python benchmarks/serve_throughput.py [--model models/export] [--images DIR] [--seconds 6] [--rounds 3]
    python benchmarks/serve_throughput.py --phone --images ../shared/data/car-integrity-indrive
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from carinspect.data.decoding.images import ImageLimits
from carinspect.serving.inference import pixels_for
from carinspect.serving.loaded import ModelRef
from carinspect.serving.opening import open_model
from carinspect.serving.settings import ServeSettings

ROOT = Path(__file__).resolve().parents[1]
BOUNDARY = "----carinspect-bench"
CONCURRENCY = (1, 8, 32, 64)
LUA = """
local bodies = {}
for i = 1, %(n)d do
  local f = io.open(string.format("%(dir)s/%%d.bin", i), "rb")
  bodies[i] = f:read("*all")
  f:close()
end
-- Requests are formatted once: formatting a 1-3 MB request per call cost wrk ~0.2 ms of CPU
-- per request, taken from the two cores the server shares with it.
local prepared = {}
init = function(args)
  for i = 1, #bodies do
    prepared[i] = wrk.format("POST", "%(path)s",
      {["Content-Type"] = "multipart/form-data; boundary=%(boundary)s"}, bodies[i])
  end
end
local next_request = 0
request = function()
  next_request = next_request %% #prepared + 1
  return prepared[next_request]
end
done = function(summary, latency, requests)
  local e = summary.errors
  local q = {}
  for i = 1, %(quantiles)d do
    q[i] = latency:percentile((i - 0.5) * 100 / %(quantiles)d)
  end
  io.write(string.format('RESULT {"requests": %%d, "duration_us": %%d, "errors": %%d, ' ..
    '"non2xx": %%d, "quantiles_us": [%%s]}\\n', summary.requests, summary.duration,
    e.connect + e.read + e.write + e.timeout, e.status, table.concat(q, ",")))
end
"""
QUANTILES = 1000  # latency quantiles wrk reports per run, so rounds pool into one distribution


def _images(folder: Path | None, limit: int) -> list[bytes]:
    """Photos from ``folder`` (recursively), else generated demo cars."""
    if folder is not None and folder.is_dir():
        files = sorted(
            p for p in folder.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"}
        )
        if files:
            step = max(1, len(files) // limit)
            return [p.read_bytes() for p in files[::step][:limit]]
    from carinspect.config import DemoConfig
    from carinspect.data.intake.demo import write_demo

    tmp = Path(tempfile.mkdtemp())
    write_demo(DemoConfig(per_class=limit // 2, broken=False), tmp)
    return [p.read_bytes() for p in sorted(tmp.rglob("*.*"))[:limit]]


def phone_photos(images: list[bytes], size: tuple[int, int]) -> list[bytes]:
    """``images`` re-encoded as a phone would send them: ``size`` (landscape), JPEG quality 90."""
    out = []
    for data in images:
        img = Image.open(io.BytesIO(data)).convert("RGB")
        buf = io.BytesIO()
        img.resize(size, Image.Resampling.BICUBIC).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def wrk_script(images: list[bytes], where: Path, path: str = "/predict") -> Path:
    """The multipart bodies of ``images`` and the wrk script that posts them in turn to ``path``."""
    _bodies(images, where)
    script = where / f"post{re.sub(r'[^A-Za-z0-9]+', '_', path)}.lua"
    script.write_text(LUA % {"n": len(images), "dir": str(where), "boundary": BOUNDARY,
                             "quantiles": QUANTILES, "path": path})  # fmt: skip
    return script


def turn_args(doc: str) -> argparse.ArgumentParser:
    """The options of a benchmark that serves the same photos two ways in turns (:func:`turns`)."""
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install wrk")
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--images", type=Path, default=ROOT.parent / "shared" / "data" /
                    "car-integrity-indrive")  # fmt: skip
    ap.add_argument("--count", type=int, default=64)
    ap.add_argument("--seconds", type=int, default=20, help="per server and round, at 32")
    ap.add_argument("--rounds", type=int, default=3)
    return ap


def turns(
    sides: dict[str, tuple[dict[str, str], Path]], rounds: int, seconds: int, concurrency: int = 32
) -> dict[str, list[dict[str, Any]]]:
    """Each side's own `carinspect serve` (its env), driven by wrk with its script, in turns.

    A fresh server per side and round, warmed by a 3-second burst first (the first burst of
    ``concurrency`` uploads is not steady state); the machine's drift hits every side alike.
    Prints each round's req/s, p50 and p99; returns the runs by side.
    """
    cli = str(Path(sys.executable).parent / "carinspect")
    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
    for r in range(rounds):
        for side, (env, script) in sides.items():
            port = _free_port()
            proc = _start([cli, "serve", "--port", str(port)], env, port)
            try:
                drive(port, script, concurrency, 3)
                run = drive(port, script, concurrency, seconds)
            finally:
                _stop(proc)
            assert run["failed"] == 0, (side, run["failed"])
            runs[side].append(run)
            print(f"round {r + 1} {side:>14s}: {run['rps']:7.1f} req/s  p50 {run['p50']:6.1f} ms  "
                  f"p99 {run['p99']:6.1f} ms", flush=True)  # fmt: skip
    return runs


def _bodies(images: list[bytes], where: Path) -> None:
    for i, data in enumerate(images, 1):
        head = (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{i}.jpg"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        (where / f"{i}.bin").write_bytes(head + data + f"\r\n--{BOUNDARY}--\r\n".encode())


class InProcess:
    """Images/s in one process, batch 32, with the server's thread settings.

    ``one_thread``: decode + preprocess, then onnxruntime, one after the other. ``all_cores``:
    the server's arrangement without HTTP: a pool of one decoding thread per CPU fills the next
    batch while onnxruntime runs this one (the honest ceiling of the server). ``ort``:
    onnxruntime alone on preprocessed tensors.
    """

    def __init__(self, model_dir: Path) -> None:
        self.settings = ServeSettings()
        self.model = open_model(ModelRef.parse(str(model_dir)), None, model_dir, self.settings)
        self.limits = ImageLimits()

    def _pixels(self, data: bytes) -> np.ndarray:
        return pixels_for(data, self.model, self.limits)

    def one_thread(self, images: list[bytes], rounds: int = 3) -> float:
        """Decode, preprocess and infer batches of 32 on this thread."""
        chunks = [images[i : i + 32] for i in range(0, len(images), 32)] * rounds
        start = time.perf_counter()
        for chunk in chunks:
            self.model.probabilities(np.stack([self._pixels(d) for d in chunk]))
        return len(images) * rounds / (time.perf_counter() - start)

    def all_cores(self, images: list[bytes], seconds: float) -> float:
        """The server's arrangement without HTTP, for at least ``seconds``."""
        chunks = [images[i : i + 32] for i in range(0, len(images), 32)]
        done = 0
        with ThreadPoolExecutor(self.settings.decoders) as pool:
            start = time.perf_counter()
            coming = [pool.submit(self._pixels, d) for d in chunks[0]]
            k = 0
            while True:
                batch = np.stack([f.result() for f in coming])
                k += 1
                elapsed = time.perf_counter() - start
                if elapsed < seconds:
                    coming = [pool.submit(self._pixels, d) for d in chunks[k % len(chunks)]]
                self.model.probabilities(batch)
                done += len(batch)
                if elapsed >= seconds:
                    return done / (time.perf_counter() - start)

    def ort(self, images: list[bytes], rounds: int = 12) -> float:
        """onnxruntime alone on a batch of 32 preprocessed tensors."""
        tensors = np.stack([self._pixels(d) for d in images[:32]])
        start = time.perf_counter()
        for _ in range(rounds):
            self.model.probabilities(tensors)
        return rounds * len(tensors) / (time.perf_counter() - start)


def _start(cmd: list[str], env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        cmd, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2):
                return proc
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"{' '.join(cmd)} did not become ready")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()


def drive(port: int, script: Path, concurrency: int, seconds: int) -> dict[str, Any]:
    """wrk at ``concurrency`` for ``seconds``: req/s, p50 and p99 in ms, failures, and the
    latency distribution as ``QUANTILES`` evenly spaced quantiles (ms) for pooling rounds."""
    out = subprocess.run(
        ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", "--timeout", "30s", "-s",
         str(script), f"http://127.0.0.1:{port}/predict"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    line = next(x for x in out.splitlines() if x.startswith("RESULT "))
    r = json.loads(line.removeprefix("RESULT "))
    quantiles = np.asarray(r["quantiles_us"], dtype=float) / 1000
    return {
        "rps": r["requests"] / (r["duration_us"] / 1e6),
        "p50": float(np.percentile(quantiles, 50)),
        "p99": float(np.percentile(quantiles, 99)),
        "failed": r["errors"] + r["non2xx"],
        "requests": r["requests"],
        "quantiles": quantiles,
    }


def pooled(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Req/s (median over rounds) and p50/p99 of all rounds' requests taken together.

    A round's p99 is its few slowest requests (at 4000x3000, 6 s is ~400 requests: the 4th
    slowest), so one scheduling hiccup decides it; pooling the rounds, each quantile weighted
    by its round's request count, gives the tail of every request sent.
    """
    latencies = np.concatenate([r["quantiles"] for r in runs])
    weights = np.concatenate([np.full(QUANTILES, r["requests"] / QUANTILES) for r in runs])
    order = np.argsort(latencies)
    cumulative = np.cumsum(weights[order]) / weights.sum()
    p50, p99 = (float(latencies[order][np.searchsorted(cumulative, q)]) for q in (0.5, 0.99))
    return {
        "rps": float(np.median([r["rps"] for r in runs])),
        "p50": p50,
        "p99": p99,
        "failed": float(sum(r["failed"] for r in runs)),
    }


def compare(
    model_dir: Path,
    images: list[bytes],
    seconds_at: Callable[[int], int],
    rounds: int,
    phone: bool,
    baseline_src: Path | None = None,
) -> None:
    """One full comparison on ``images``: in-process figures, both servers, the ratios."""
    print(f"\n{len(images)} images, {sum(map(len, images)) / len(images) / 1024:.0f} KiB on "
          f"average; model {model_dir}")  # fmt: skip
    inproc = InProcess(model_dir)
    print(f"in-process, decode + preprocess + batched onnxruntime, one thread: "
          f"{inproc.one_thread(images):7.1f} images/s\n"
          f"onnxruntime alone, batch 32, preprocessed tensors:                "
          f"{inproc.ort(images):7.1f} images/s")  # fmt: skip

    script = wrk_script(images, Path(tempfile.mkdtemp()))
    venv = Path(sys.executable).parent
    servers = {
        "carinspect serve": (
            [str(venv / "carinspect"), "serve", "--port", "{port}"],
            {"MODEL_URI": str(model_dir)},
        ),
        "naive FastAPI": (
            [str(venv / "uvicorn"), "naive_server:app", "--app-dir", str(ROOT / "benchmarks"),
             "--port", "{port}", "--log-level", "warning"],
            {"MODEL_DIR": str(model_dir)},
        ),
    }  # fmt: skip
    if baseline_src is not None:
        serve = "import sys; from carinspect.cli import main; sys.argv[0] = 'carinspect'; main()"
        servers["baseline serve"] = (
            [sys.executable, "-c", serve, "serve", "--port", "{port}"],
            {"MODEL_URI": str(model_dir), "PYTHONPATH": str(baseline_src.resolve())},
        )
    # The servers run side by side (the idle one waits) and take turns, `rounds` times per
    # concurrency: this machine's speed drifts by 20% over minutes, so measuring one server
    # after the other would compare two different machines. Medians over the rounds.
    ports: dict[str, int] = {}
    procs: list[subprocess.Popen[bytes]] = []
    results: dict[str, dict[int, dict[str, float]]] = {}
    limit_runs: list[float] = []
    try:
        for name, (cmd, env) in servers.items():
            ports[name] = _free_port()
            procs.append(_start([c.replace("{port}", str(ports[name])) for c in cmd], env,
                                ports[name]))  # fmt: skip
            drive(ports[name], script, 8, 2)  # warm-up
        for c in CONCURRENCY:
            runs: dict[str, list[dict[str, Any]]] = {name: [] for name in servers}
            for _ in range(rounds):
                if c == 32:  # the limit in the same minutes as the servers it is compared with
                    limit_runs.append(inproc.all_cores(images, seconds_at(c) / 2))
                for name in servers:
                    runs[name].append(drive(ports[name], script, c, seconds_at(c)))
            for name, rs in runs.items():
                results.setdefault(name, {})[c] = pooled(rs)
    finally:
        for proc in procs:
            _stop(proc)
    print(f"\n{'server':18} {'conc':>4} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'failed':>6}")
    for name, per in results.items():
        for c, r in per.items():
            print(
                f"{name:18} {c:4d} {r['rps']:8.1f} {r['p50']:8.1f} {r['p99']:8.1f} {r['failed']:6.0f}"
            )
    full = statistics.median(limit_runs)
    print(f"\nin-process limit, decoding on every core beside onnxruntime: {full:.1f} images/s "
          f"(median; before each round at 32: {', '.join(f'{x:.1f}' for x in limit_runs)})")  # fmt: skip
    ours, naive = results["carinspect serve"], results["naive FastAPI"]
    print(
        f"server req/s at 32 / in-process limit: {ours[32]['rps'] / full:.2f}x (goal >= 0.85)\n"
        f"server req/s at 32 / naive at 32:      {ours[32]['rps'] / naive[32]['rps']:.2f}x "
        "(goal >= 3)"
    )
    if "baseline serve" in results:
        base = results["baseline serve"]
        print(f"server req/s at 32 / baseline at 32:   {ours[32]['rps'] / base[32]['rps']:.2f}x "
              f"(at 8: {ours[8]['rps'] / base[8]['rps']:.2f}x)")  # fmt: skip
    if phone:
        print(f"server p99 at 32 / p50 at 32:          {ours[32]['p99'] / ours[32]['p50']:.2f}x "
              "(goal <= 1.5)")  # fmt: skip
    else:
        print(f"server p99 at 32 / p50 at 1:           {ours[32]['p99'] / ours[1]['p50']:.2f}x "
              "(goal <= 4)")  # fmt: skip


def main() -> None:
    """Run the comparison (once, or per phone size) and print the tables and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "export")
    default_images = ROOT.parent / "shared" / "data" / "car-integrity-indrive"
    parser.add_argument("--images", type=Path, default=default_images)
    parser.add_argument("--count", type=int, default=64, help="distinct images to send")
    parser.add_argument("--seconds", type=int, default=6, help="per concurrency level and round")
    parser.add_argument(
        "--tail-seconds", type=int, default=20, help="at least this long at 32 (the tail's level)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="turns per server")
    parser.add_argument("--phone", action="store_true", help="re-encode at phone sizes first")
    parser.add_argument(
        "--sizes", default="2000x1500,4000x3000", help="phone sizes, WxH comma-separated"
    )
    parser.add_argument(
        "--baseline-src", type=Path, help="another checkout's src/: its server joins the rounds"
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install wrk")
    if not (args.model / "model.onnx").is_file():
        sys.exit(f"{args.model}: no model.onnx (run scripts/main.sh, or pass --model)")
    images = _images(args.images, args.count)

    def seconds_at(concurrency: int) -> int:
        return max(args.seconds, args.tail_seconds) if concurrency == 32 else args.seconds

    if not args.phone:
        compare(args.model, images, seconds_at, args.rounds, False, args.baseline_src)
        return
    for size in args.sizes.split(","):
        w, h = (int(x) for x in size.split("x"))
        print(f"\n=== phone photos at {w}x{h}, JPEG quality 90 ===")
        photos = phone_photos(images, (w, h))
        compare(args.model, photos, seconds_at, args.rounds, True, args.baseline_src)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


if __name__ == "__main__":
    main()
