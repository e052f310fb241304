"""What tracing costs the server: req/s at concurrency 32 with spans exported vs tracing off.

Two `carinspect serve` processes on the same model, one with OTEL_EXPORTER_OTLP_ENDPOINT set
(every request traced: a server span and its decode, queue wait, inference and hand-off spans,
batched and sent over OTLP/HTTP to a collector stand-in in this process that reads each export
and answers 200) and one without, driven by wrk in turns (``--rounds``) so the machine's drift
hits both alike. Prints req/s (median of the rounds), p50 and p99 of each and the ratio
(goal: traced >= 0.95x untraced).

    python benchmarks/tracing_cost.py [--model models/export] [--images DIR] [--seconds 20]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_throughput import ROOT, _images, turn_args, turns, wrk_script


class _Collector(BaseHTTPRequestHandler):
    """Reads an OTLP/HTTP export and answers 200, as a collector does (spans counted)."""

    exports = 0

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        _Collector.exports += 1
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def main() -> None:
    ap = turn_args(__doc__)
    ap.add_argument("--model", type=Path, default=ROOT / "models" / "export")
    args = ap.parse_args()
    if not (args.model / "model.onnx").is_file():
        sys.exit(f"{args.model}: no model.onnx (run scripts/main.sh, or pass --model)")
    collector = ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{collector.server_port}"
    work = Path(tempfile.mkdtemp())
    script = wrk_script(_images(args.images, args.count), work)
    base = {"MODEL_URI": str(args.model), "MODEL_CACHE_DIR": str(work / "cache")}
    sides = {"off": (base, script),
             "traced": ({**base, "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint}, script)}  # fmt: skip
    runs = turns(sides, args.rounds, args.seconds)
    rps = {side: [run["rps"] for run in found] for side, found in runs.items()}
    collector.shutdown()
    assert _Collector.exports > 0, "the traced server sent no spans"
    off, traced = statistics.median(rps["off"]), statistics.median(rps["traced"])
    print(f"\nreq/s at c32 (median of {args.rounds}): off {off:.1f}, traced {traced:.1f}; "
          f"{_Collector.exports} OTLP exports received")  # fmt: skip
    print(f"traced / off = {traced / off:.3f}x (goal >= 0.95x)")


if __name__ == "__main__":
    main()
