"""The images: size on disk, and the time from `docker run` to /readyz, the serving image
against the pipeline image used as a server (same model, same flags, taking turns).

Both run as the Deployment runs its container (uid 10001, read-only root, a tmpfs /tmp) on the
host network, serving an exported model folder mounted read-only (MODEL_URI=/model), so the
figure is the image's own start-up: container start, Python imports, ONNX session, warm-up.

Needs a running dockerd (DOCKER_HOST), the images (`scripts/images.sh`) and an exported model
folder (`scripts/main.sh` writes models/export).

    python benchmarks/image_startup.py [--model models/export] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's containers/

from containers.build import IMAGES


def docker(*args: str) -> str:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=True).stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def startup(tag: str, model: Path, timeout: float = 180) -> float:
    """Seconds from `docker run` to the first 200 on /readyz."""
    port = free_port()
    start = time.perf_counter()
    cid = docker(
        "run", "-d", "--network", "host", "--user", "10001:10001", "--read-only",
        "--tmpfs", "/tmp:rw,mode=1777", "-v", f"{model.resolve()}:/model:ro",
        "-e", "MODEL_URI=/model", "-e", "CPU_LIMIT=2", tag,
        "carinspect", "serve", "--host", "127.0.0.1", "--port", str(port),
    ).strip()  # fmt: skip
    try:
        while not ready(f"http://127.0.0.1:{port}/readyz"):
            if time.perf_counter() - start > timeout:
                raise TimeoutError(f"{tag}: no /readyz in {timeout} s: {docker('logs', cid)}")
            time.sleep(0.05)
        return time.perf_counter() - start
    finally:
        subprocess.run(["docker", "rm", "-f", cid], capture_output=True, check=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=Path("models/export"))
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    if not (args.model / "model.onnx").is_file():
        sys.exit(f"{args.model}: no model.onnx (run scripts/main.sh, or pass --model)")
    names = ("serving", "pipeline")
    sizes = {}
    for name in names:
        inspected = json.loads(docker("image", "inspect", IMAGES[name].tag))[0]
        sizes[name] = inspected["Size"] / 1e6
    times: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(args.rounds):
        for name in names:  # taking turns: the machine's drift hits both alike
            times[name].append(startup(IMAGES[name].tag, args.model))
    print(f"{'image':<10} {'tag':<42} {'size MB':>8} {'run->readyz s (median, min-max)':>34}")
    for name in names:
        t = times[name]
        print(f"{name:<10} {IMAGES[name].tag:<42} {sizes[name]:>8.0f} "
              f"{statistics.median(t):>12.2f} ({min(t):.2f}-{max(t):.2f})")  # fmt: skip
    s, p = (statistics.median(times[n]) for n in names)
    print(f"size ratio pipeline/serving: {sizes['pipeline'] / sizes['serving']:.1f}x")
    print(f"start-up ratio pipeline/serving: {p / s:.2f}x (serving image starts in {s:.2f} s)")


if __name__ == "__main__":
    main()
