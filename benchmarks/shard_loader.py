"""The training loader from shards (local disk; S3 with a per-request delay) against the
per-file cache, and a worker's memory while it streams 50,000 images.

Every loader is the one train builds: the params.yaml augmentations and preprocessing, batch
32, two DataLoader workers, one epoch of the train split, no model (the loader alone is
measured; a model only hides it). The per-file cache is read as train reads it with
``cache_images: false`` (decoded every epoch), the only form that exists past a node's RAM.
Each loader runs twice, in turn (files, shards, shards in S3, ..., again), and the ratios use
the means, to cancel the drift of a noisy machine. S3 is moto's server in its own process, with ``--latency-ms`` added to each
answer (benchmarks/slow_s3.py); "per-file S3" is the same cache with one object per image,
read with one GET each.

    python benchmarks/shard_loader.py [--images 4000] [--latency-ms 20] [--memory-images 50000]

Prints images/s of each loader, their ratio to the local per-file cache (goal: shards from S3
>= 0.9x), and the resident memory of the streaming workers over the 50,000-image epoch.
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch
from PIL import Image

from carinspect.config import DataConfig, DemoConfig, SplitConfig, load_params
from carinspect.contracts.preprocess import PreprocessSpec
from carinspect.data.loading.augment import build_augment
from carinspect.data.loading.dataset import ImageDataset, Sample, load_split, loader_for
from carinspect.data.loading.samplers import EpochTagged, ShardedEpochSampler
from carinspect.data.loading.streaming import ShardStream, stream_loader
from carinspect.data.storage.objects import S3Prefix, open_location
from carinspect.data.storage.shards import PackItem, write_shards
from carinspect.data.storage.store import IMAGES, ShardStore, open_store
from carinspect.stages import ingest, split

HERE = Path(__file__).resolve().parent
BATCH, WORKERS = 32, 2


class PerObjectS3:
    """The per-file cache uploaded to S3 as one object per image, read with one GET each."""

    def __init__(self, root: Path, uri: str) -> None:
        self.root, self.prefix = root, S3Prefix(uri)

    def read_many(self, paths: Sequence[Path], threads: int = 8) -> list[bytes]:
        out = []
        for p in paths:
            name = Path(p).relative_to(self.root).as_posix()
            response = self.prefix.client.get_object(
                Bucket=self.prefix.bucket, Key=self.prefix.prefix + name
            )
            out.append(response["Body"].read())
        return out


def slow_s3(latency_ms: float) -> tuple[subprocess.Popen[bytes], str]:
    """Start benchmarks/slow_s3.py; point boto3 at it."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "slow_s3.py"), "--port", str(port), "--latency-ms", str(latency_ms)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    os.environ.update(
        {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
         "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": url}
    )  # fmt: skip
    for _ in range(100):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, url
        time.sleep(0.1)
    raise RuntimeError("slow_s3.py did not start")


def epoch_rate(loader: Any, skip: int = 2) -> float:
    """Images/s over one epoch, the first ``skip`` batches (worker start-up) left out."""
    n, start = 0, None
    for i, (_, y) in enumerate(loader):
        if i == skip:
            start = time.perf_counter()
        elif i > skip:
            n += len(y)
    assert start is not None, "too few batches"
    return n / (time.perf_counter() - start)


def files_loader(samples: list[Sample], spec: PreprocessSpec, augment: Any, store: Any) -> Any:
    ds = ImageDataset(samples, spec, augment, seed=0, store=store)
    sampler = ShardedEpochSampler([0] * len(samples), "none", 0, 1, 0)
    return loader_for(ds, BATCH, EpochTagged(sampler), WORKERS, drop_last=True)


def shard_loader(root: Path, samples: list[Sample], spec: PreprocessSpec, augment: Any) -> Any:
    store = open_store(root)
    assert isinstance(store, ShardStore)
    store.verify()
    return stream_loader(ShardStream(store, samples, spec, BATCH, augment=augment), WORKERS)


def throughput(args: argparse.Namespace, work: Path) -> None:
    params = load_params(Path("params.yaml"))
    spec = PreprocessSpec.from_model(params.model, params.ingest.short_side)
    augment = build_augment(params.train.augment)
    import boto3

    boto3.client("s3").create_bucket(Bucket="bench")
    demo = DemoConfig(per_class=args.images // 2, broken=False, seed=3)
    dirs = {"files": work / "files", "shards": work / "shards", "s3": work / "s3"}
    ingest.run(DataConfig(source="demo", demo=demo), params.ingest, dirs["files"])
    ingest.run(DataConfig(source="demo", demo=demo, format="shards"), params.ingest, dirs["shards"])
    t = time.perf_counter()
    ingest.run(
        DataConfig(source="demo", demo=demo, format="shards", shards="s3://bench/shards"),
        params.ingest, dirs["s3"],
    )  # fmt: skip
    upload_s = time.perf_counter() - t
    splits = {}
    for name, root in dirs.items():
        splits[name] = split.run(
            SplitConfig(), root / "manifest.csv", work / f"split-{name}"
        ).splits
    # the per-file cache, one object per image, for the per-file-from-S3 row
    files_root = dirs["files"]
    per_object = S3Prefix("s3://bench/files")
    paths = sorted(p for p in (files_root / IMAGES).rglob("*.png"))
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(16) as pool:
        list(
            pool.map(lambda p: per_object.put_file(p.relative_to(files_root).as_posix(), p), paths)
        )
    classes = ["clean", "dirty"]
    train = {n: load_split(splits[n], root, "train", classes) for n, root in dirs.items()}
    index = open_store(dirs["s3"])
    assert isinstance(index, ShardStore)
    print(f"{len(train['files'])} training images of {args.images}; {len(index.shards)} shards "
          f"({sum(index.size) / 2**20:.0f} MiB) written to S3 in {upload_s:.1f} s of ingest; "
          f"S3 latency {args.latency_ms:.0f} ms per request")  # fmt: skip

    rates: dict[str, list[float]] = {}
    main_rows = [
        ("per-file cache, local disk", lambda: files_loader(train["files"], spec, augment, open_store(files_root))),
        ("shards, local disk", lambda: shard_loader(dirs["shards"], train["shards"], spec, augment)),
        ("shards, S3", lambda: shard_loader(dirs["s3"], train["s3"], spec, augment)),
    ]  # fmt: skip
    per_object = ("per-file, S3 (a GET per image)", lambda: files_loader(train["files"], spec, augment, PerObjectS3(files_root, "s3://bench/files")))  # fmt: skip
    # each measured twice, in turn (A B C D A B C), so that drift hits them alike
    rows = [*main_rows, per_object, *main_rows]
    for name, make in rows:
        rates.setdefault(name, []).append(epoch_rate(make()))
    base = float(np.mean(rates["per-file cache, local disk"]))
    print(f"\n{'loader':34} {'images/s':>9} {'x per-file local':>17}")
    for name, values in rates.items():
        rate = float(np.mean(values))
        spread = f" (runs {values[0]:.0f}, {values[1]:.0f})" if len(values) > 1 else ""
        print(f"{name:34} {rate:9.0f} {rate / base:16.2f}x{spread}")
    s3 = float(np.mean(rates["shards, S3"])) / base
    print(f"\ngoal: shards from S3 >= 0.9x the per-file local cache: {s3:.2f}x "
          f"({'met' if s3 >= 0.9 else 'NOT met'})")  # fmt: skip


def _png(i: int, rng: np.random.Generator) -> bytes:
    """A 96x72 photo-like image: a gradient with noise, so PNG cannot shrink it to nothing."""
    y, x = np.mgrid[0:72, 0:96]
    base = np.stack([(x * 2 + i) % 256, (y * 3 + i // 7) % 256, (x + y + i // 49) % 256], -1)
    noise = rng.integers(0, 48, size=(72, 96, 3))
    buf = io.BytesIO()
    Image.fromarray((base + noise).clip(0, 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def memory(args: argparse.Namespace, work: Path, server_pid: int) -> None:
    """One epoch over ``--memory-images`` generated images from local shards; worker RSS."""
    root = work / "memory"
    rng = np.random.default_rng(0)
    keys = [f"{i:064x}" for i in range(args.memory_images)]
    items = (
        PackItem(k, (lambda i=i: _png(i, rng)), {"label": "ab"[i % 2]}) for i, k in enumerate(keys)
    )
    t = time.perf_counter()
    index, where = write_shards(
        items, ["label"], 64 * 2**20, root / ".build", open_location("", root / IMAGES)
    )
    (root / IMAGES / "shards.json").write_text(index.model_dump_json())
    samples = [Sample(root / IMAGES / where[k] / f"{k}.png", i % 2) for i, k in enumerate(keys)]
    print(f"\nmemory: {len(keys)} generated images in {len(index.shards)} shards "
          f"({sum(s.bytes for s in index.shards) / 2**20:.0f} MiB), written in "
          f"{time.perf_counter() - t:.0f} s")  # fmt: skip
    store = open_store(root)
    assert isinstance(store, ShardStore)
    spec = PreprocessSpec.from_model(load_params(Path("params.yaml")).model, 128)
    stream = ShardStream(
        store,
        samples,
        spec,
        BATCH,
        augment=build_augment(load_params(Path("params.yaml")).train.augment),
    )
    me = psutil.Process()
    samples_rss: list[tuple[int, float, float]] = []  # (images seen, max USS, max RSS)
    done = threading.Event()
    seen = [0]

    def watch() -> None:
        while not done.wait(0.5):
            try:  # USS: the pages a worker owns alone (RSS also counts the parent's it reads)
                workers = [c for c in me.children() if c.pid != server_pid]  # not slow_s3.py
                full = [w.memory_full_info() for w in workers]
            except psutil.Error:
                continue
            if full:
                uss, rss = max(f.uss for f in full), max(f.rss for f in full)
                samples_rss.append((seen[0], uss / 2**20, rss / 2**20))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    start = time.perf_counter()
    for _, y in stream_loader(stream, WORKERS):
        seen[0] += len(y)
    done.set()
    watcher.join()
    seconds = time.perf_counter() - start

    def at(fraction: float) -> float:  # mean USS of the three samples nearest that point
        near = sorted(samples_rss, key=lambda s: abs(s[0] - fraction * len(keys)))[:3]
        return float(np.mean([s[1] for s in near]))

    peak = max(s[1] for s in samples_rss)
    print(f"streamed {seen[0]} images in {seconds:.0f} s ({seen[0] / seconds:.0f} images/s)")
    print(f"main process RSS {me.memory_info().rss / 2**20:.0f} MiB")
    print(f"{'images seen':>12} {'worker USS MiB':>15} {'worker RSS MiB':>15}")
    for n, w, r in samples_rss[:: max(1, len(samples_rss) // 10)] + samples_rss[-1:]:
        print(f"{n:12d} {w:15.1f} {r:15.1f}")
    print(f"worker USS: {at(0.05):.0f} MiB at 5% of the epoch, {at(0.5):.0f} at 50%, "
          f"{at(0.95):.0f} at 95%; second half {at(0.95) - at(0.5):+.1f} MiB (peak {peak:.0f})")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--images", type=int, default=4000)
    ap.add_argument("--latency-ms", type=float, default=20.0)
    ap.add_argument("--memory-images", type=int, default=50_000)
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--skip-throughput", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    server, _ = slow_s3(args.latency_ms)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            if not args.skip_throughput:
                throughput(args, Path(tmp))
            if not args.skip_memory:
                memory(args, Path(tmp), server.pid)
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
