"""The server's peak memory under hostile uploads, against its idle and ordinary-photo peaks.

Each case gets a fresh `carinspect serve` (the Deployment's settings: defaults, CPU_LIMIT=2), so
the figures are the case's own. For each: the resident set at idle, then the peak (VmHWM) while
the case is answered, its status and time. Baselines measured in the same run:
- idle: the server after start-up and warm-up;
- idle + one phone photo: one 4000x3000 JPEG answered (the figure a pod's limit must cover
  whatever else happens);
- four of the worst decodable uploads at once: the largest 16-bit PNG that still decodes
  within DECODE_MEMORY_MB (the least bytes for the most memory), so each is answered.
Prints the ratio the issue sets as a goal: four-at-once peak / (idle + phone photo) peak <= 1.5,
and the Deployment limit that figure supports (docs/serving.md, "Memory per request").

    python benchmarks/hostile_uploads.py [--model models/export]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import start_server, stop_process  # noqa: E402
from tests.serving.hostile import (  # noqa: E402
    DECODE_BUDGET,
    cases,
    memory_kib,
    phone_photo,
    post_files,
    reset_peak,
    sixteen_bit_png,
    worst_decodable_side,
)


def _mib(kib: int) -> str:
    return f"{kib / 1024:7.0f} MiB"


def main() -> None:
    """Measure every case on a fresh server and print the table and the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "export")
    args = parser.parse_args()
    if not (args.model / "model.onnx").is_file():
        sys.exit(f"{args.model}: no model.onnx (run scripts/main.sh first, or pass --model)")
    env = {"MODEL_URI": str(args.model.resolve()), "CPU_LIMIT": "2", "HEADER_TIMEOUT_S": "2",
           "BODY_TIMEOUT_S": "2"}  # fmt: skip
    phone = phone_photo(4000, 3000)
    side = worst_decodable_side(DECODE_BUDGET)
    worst = sixteen_bit_png(side)

    def measure(name: str, send: object) -> tuple[int, int, str, float]:
        """(idle KiB, peak KiB, statuses, seconds) for one case on a fresh server."""
        with __import__("tempfile").TemporaryDirectory() as tmp:
            server = start_server(Path(tmp), env)
            try:
                time.sleep(1)
                idle = memory_kib(server.proc.pid, "VmRSS")
                reset_peak(server.proc.pid)
                started = time.perf_counter()
                statuses = send(server.url)  # type: ignore[operator]
                seconds = time.perf_counter() - started
                time.sleep(0.5)
                peak = memory_kib(server.proc.pid)
            finally:
                stop_process(server.proc)
        return idle, peak, str(statuses), seconds

    def one_phone(url: str) -> int:
        return post_files(url, "/predict", "file", [("phone.jpg", phone)])

    def four_worst(url: str) -> list[int]:
        with ThreadPoolExecutor(4) as pool:
            sent = [
                pool.submit(post_files, url, "/predict", "file", [(f"{i}.png", worst)])
                for i in range(4)
            ]
            return [f.result() for f in sent]

    rows = [("idle + one 4000x3000 phone photo", *measure("phone", one_phone))]
    rows.append((f"four 16-bit {side}x{side} PNGs at once", *measure("four", four_worst)))
    for case in cases():
        rows.append((case.name, *measure(case.name, case.send)))
    print(f"{'case':42s} {'idle':>11s} {'peak':>11s} {'+peak':>11s}  {'time':>6s}  status")
    for name, idle, peak, status, seconds in rows:
        print(
            f"{name:42s} {_mib(idle)} {_mib(peak)} {_mib(peak - idle)}  {seconds:5.2f}s  {status}"
        )
    phone_peak, four_peak = rows[0][2], rows[1][2]
    ratio = four_peak / phone_peak
    print(
        f"\nfour worst decodable at once / idle + phone photo: {_mib(four_peak).strip()} / "
        f"{_mib(phone_peak).strip()} = {ratio:.2f}x (goal <= 1.5x)"
    )
    worst_peak = max(r[2] for r in rows)
    print(f"highest peak of any case: {_mib(worst_peak).strip()}; a limit of 1.5x that is "
          f"{worst_peak * 1.5 / 1024:.0f} MiB")  # fmt: skip
    print(f"(cpus: {os.cpu_count()}, model: {args.model})")


if __name__ == "__main__":
    main()
