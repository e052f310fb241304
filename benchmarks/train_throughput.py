"""Training throughput: the real Dataset + DataLoader on the ingest cache vs in-memory tensors.

Same model, batch size, image size, optimizer and device, measured side by side in one run
(the in-memory baseline before and after the loader run, averaged, to cancel drift). Prints
images/s of both, their ratio (goal: >= 0.9 at the default image size) and peak memory.

    python benchmarks/train_throughput.py [--params params.yaml] [--steps 80] [--device cuda --bf16 --channels-last]
"""

from __future__ import annotations

import argparse
import itertools
import resource
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from carinspect.config import load_params
from carinspect.contracts.preprocess import PreprocessSpec
from carinspect.data.loading.augment import build_augment
from carinspect.data.loading.dataset import ImageDataset, class_names, load_split, loader_for
from carinspect.data.loading.samplers import EpochTagged, ShardedEpochSampler
from carinspect.modeling.factory import build_model


def step_fn(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    device: torch.device,
    dtype: torch.dtype | None,
    channels_last: bool,
):
    loss_fn = nn.CrossEntropyLoss()

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def timed(
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    step,
    steps: int,
    warmup: int,
    batch_size: int,
    device: torch.device,
) -> float:
    for x, y in itertools.islice(batches, warmup):
        step(x, y)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    n = 0
    for x, y in itertools.islice(batches, steps):
        step(x, y)
        n += len(y)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--ingest", type=Path, default=Path("data/ingest"))
    ap.add_argument("--splits", type=Path, default=Path("data/split/splits.csv"))
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--bf16", action="store_true", help="autocast to bfloat16 (CUDA)")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--workers", type=int, default=None, help="default: train.workers")
    args = ap.parse_args()

    params = load_params(args.params)
    cfg, mcfg = params.train, params.model
    workers = cfg.workers if args.workers is None else args.workers
    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.bf16 else None
    torch.manual_seed(0)
    classes = class_names(args.splits)
    model = build_model(mcfg, len(classes)).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    step = step_fn(model, opt, device, dtype, args.channels_last)
    spec = PreprocessSpec.from_model(mcfg)
    bs, size = cfg.batch_size, spec.img_size

    samples = load_split(args.splits, args.ingest, "train", classes)
    dataset = ImageDataset(samples, spec, build_augment(cfg.augment), seed=0)
    if cfg.cache_images:
        dataset.preload()
    sampler = ShardedEpochSampler(dataset.labels(), cfg.sampler, seed=0)

    loader = loader_for(dataset, bs, EpochTagged(sampler), workers, drop_last=True)

    def loader_batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for epoch in itertools.count():
            sampler.set_epoch(epoch)
            yield from loader

    x = torch.randn(bs, 3, size, size)
    y = torch.randint(0, len(classes), (bs,))

    def memory_batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            yield x, y

    before = timed(memory_batches(), step, args.steps, args.warmup, bs, device)
    real = timed(loader_batches(), step, args.steps, args.warmup, bs, device)
    after = timed(memory_batches(), step, args.steps, args.warmup, bs, device)
    baseline = (before + after) / 2

    rss_main = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rss_workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(
        f"model {mcfg.name} at {size} px, batch {bs}, device {device}, "
        f"{'bf16' if dtype else 'fp32'}{', channels_last' if args.channels_last else ''}, "
        f"{workers} DataLoader workers, {len(samples)} cached training images"
        f"{' (decoded in RAM)' if cfg.cache_images else ''}"
    )
    print(f"in-memory tensors : {baseline:7.1f} images/s (before {before:.1f}, after {after:.1f})")
    print(f"Dataset+DataLoader: {real:7.1f} images/s")
    print(f"ratio             : {real / baseline:7.3f}  (goal >= 0.9)")
    print(f"peak RSS          : main {rss_main:.0f} MiB, largest worker {rss_workers:.0f} MiB")
    if device.type == "cuda":
        print(f"peak CUDA memory  : {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
