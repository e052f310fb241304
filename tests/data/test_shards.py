"""Shards: ingest writes them (local or S3), the index resolves splits.csv paths, the stream
hands every rank and worker a disjoint share, and a broken dataset stops before training."""

from __future__ import annotations

import json
import os
import tarfile
from collections import Counter
from pathlib import Path

import boto3
import numpy as np
import pytest
import torch

from carinspect.config import DataConfig, DemoConfig, IngestConfig, ModelConfig, SplitConfig
from carinspect.contracts.preprocess import PreprocessSpec
from carinspect.contracts.shards import ShardIndex
from carinspect.data.intake.manifest import read_manifest
from carinspect.data.loading.dataset import Sample, load_split
from carinspect.data.loading.samplers import ShardedEpochSampler
from carinspect.data.loading.streaming import ShardStream, stream_loader
from carinspect.data.storage.store import ShardError, ShardStore, open_store
from carinspect.stages import ingest, split
from carinspect.stages.ingest import IngestError

SPEC = PreprocessSpec.from_model(ModelConfig(img_size=32), 40)
DEMO = DemoConfig(per_class=30, broken=False, seed=1)


def _ingest(out: Path, shards: str = "", fmt: str = "shards", demo: DemoConfig = DEMO) -> Path:
    # 0.1 MiB at 40 px: several shards from 60 images
    data = DataConfig(source="demo", demo=demo, format=fmt, shards=shards)  # type: ignore[arg-type]
    ingest.run(data, IngestConfig(short_side=40, shard_mb=0.1), out)
    return out


@pytest.fixture(scope="module")
def sharded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _ingest(tmp_path_factory.mktemp("sharded") / "ingest")


def _indexed(root: Path, n: int | None = None) -> tuple[ShardStore, list[Sample], list[int]]:
    """The store, and samples whose label is their own index (to follow them through a
    stream), with their real classes beside."""
    store = open_store(root)
    assert isinstance(store, ShardStore)
    rows = read_manifest(root / "manifest.csv")[:n]
    classes = sorted({r.label for r in rows})
    samples = [Sample(root / r.path, i) for i, r in enumerate(rows)]
    return store, samples, [classes.index(r.label) for r in rows]


def test_ingest_packs_the_same_images_into_indexed_tar_shards(
    tmp_path: Path, sharded: Path
) -> None:
    files = _ingest(tmp_path / "files", fmt="files")
    index = ShardIndex.read(sharded / "images" / "shards.json")
    assert len(index.shards) >= 2 and index.images == 60 and index.location == ""
    assert sum(sum(s.classes["label"].values()) for s in index.shards) == 60
    # the same images, byte for byte, and the same data report
    by_sha = {r.sha256: r for r in read_manifest(files / "manifest.csv")}
    rows = read_manifest(sharded / "manifest.csv")
    store = open_store(sharded)
    for row, data in zip(rows, store.read_many([sharded / r.path for r in rows]), strict=True):
        assert row.path.startswith("images/shard-") and row.path.endswith(f"/{row.sha256}.png")
        assert data == (files / by_sha[row.sha256].path).read_bytes()
        assert row.label == by_sha[row.sha256].label
    assert not any(p.is_dir() for p in (sharded / "images").iterdir())  # no per-file cache left
    report = json.loads((sharded / "report.json").read_text())
    assert report["storage"] == {
        "format": "shards", "location": "images/", "shards": len(index.shards),
        "bytes": sum(s.bytes for s in index.shards),
    }  # fmt: skip
    # a plain tar any webdataset reader takes: <key>.png and <key>.json per image
    with tarfile.open(sharded / "images" / index.shards[0].name) as tar:
        names = tar.getnames()
        meta = json.loads(tar.extractfile(names[1]).read())  # type: ignore[union-attr]
    assert names[0].endswith(".png") and names[1] == names[0].replace(".png", ".json")
    assert meta["labels"]["label"] in {"clean", "dirty"}


def test_split_and_load_through_the_index(tmp_path: Path, sharded: Path) -> None:
    result = split.run(
        SplitConfig(train=0.6, val=0.2, test=0.2), sharded / "manifest.csv", tmp_path
    )
    train = load_split(result.splits, sharded, "train", ["clean", "dirty"])
    assert len(train) == 36 and all("shard-" in str(s.path) for s in train)


def test_every_image_once_per_epoch_across_ranks_and_workers(sharded: Path) -> None:
    store, samples, _ = _indexed(sharded, 48)
    epochs = []
    for epoch in (0, 1):
        seen: list[int] = []
        for rank in (0, 1):
            ds = ShardStream(store, samples, SPEC, 4, rank=rank, world_size=2, window=8, seed=5)
            ds.set_epoch(epoch)
            batches = [y.tolist() for _, y in stream_loader(ds, 2)]
            assert len(batches) == len(ds) // 4 == 6
            seen += [i for batch in batches for i in batch]
        assert sorted(seen) == list(range(48))
        epochs.append(seen)
    assert epochs[0] != epochs[1]  # reshuffled every epoch


def test_weighted_draw_matches_the_samplers_and_resume_continues_the_stream(
    sharded: Path,
) -> None:
    store, samples, classes = _indexed(sharded)
    imbalanced = [i for i, c in enumerate(classes) if c == 0] + [
        i for i, c in enumerate(classes) if c == 1
    ][:10]
    samples = [Sample(samples[i].path, n) for n, i in enumerate(imbalanced)]
    strata = [classes[i] for i in imbalanced]

    def run(rank: int, start: int = 0) -> list[list[int]]:
        ds = ShardStream(
            store, samples, SPEC, 4, rank=rank, world_size=2, window=8, seed=9,
            kind="weighted", strata=strata,
        )  # fmt: skip
        ds.set_epoch(2)
        if start:
            ds.start_at(start)
        return [y.tolist() for _, y in stream_loader(ds, 2)]

    streamed = [i for batch in run(0) + run(1) for i in batch]
    sampler = ShardedEpochSampler(strata, "weighted", 0, 2, 9)
    sampler.set_epoch(2)
    drawn = sampler.global_indices().tolist()
    # every image as often as the per-file sampler draws it (the whole draw fits in batches)
    assert Counter(streamed) == Counter(drawn)
    assert Counter(strata[i] for i in streamed) == Counter(strata[i] for i in drawn)
    full = run(1)
    for step in (1, 3, len(full) - 1):
        assert run(1, start=step) == full[step:]


def test_s3_shards_stream_and_resist_a_bad_index(tmp_path: Path, s3_endpoint: str) -> None:
    boto3.client("s3").create_bucket(Bucket="fleet")
    root = _ingest(tmp_path / "ingest", shards="s3://fleet/cars/v1")
    assert [p.name for p in (root / "images").iterdir()] == ["shards.json"]
    index = ShardIndex.read(root / "images" / "shards.json")
    assert index.location == "s3://fleet/cars/v1"
    # the bucket is the session's S3 server's: other tests write beside this prefix
    listed = boto3.client("s3").list_objects_v2(Bucket="fleet", Prefix="cars/v1/")["Contents"]
    keys = {o["Key"] for o in listed}
    assert keys == {f"cars/v1/{s.name}" for s in index.shards}
    store, samples, _ = _indexed(root, 24)
    store.verify()
    ds = ShardStream(store, samples, SPEC, 4, window=8)
    assert sorted([i for _, y in stream_loader(ds, 0) for i in y.tolist()]) == list(range(24))
    # a second ingest of the same data uploads nothing new and changes no shard
    _ingest(tmp_path / "again", shards="s3://fleet/cars/v1")
    assert ShardIndex.read(tmp_path / "again" / "images" / "shards.json") == index

    # a shard replaced by other bytes of the same size: its ETag (md5) gives it away, unread
    s3 = boto3.client("s3")
    key = f"cars/v1/{index.shards[0].name}"
    original = s3.get_object(Bucket="fleet", Key=key)["Body"].read()
    body = bytearray(original)
    body[len(body) // 2] ^= 0xFF
    s3.put_object(Bucket="fleet", Key=key, Body=bytes(body))
    with pytest.raises(
        ShardError,
        match=rf"shard {index.shards[0].name} in s3://fleet/cars/v1: its content \(md5 [0-9a-f]+\) is not the one indexed",
    ):
        open_store(root).verify()
    s3.put_object(Bucket="fleet", Key=key, Body=bytes(body[:-1024]))
    with pytest.raises(ShardError, match=r"bytes, the index says"):
        open_store(root).verify()
    s3.put_object(Bucket="fleet", Key=key, Body=original)
    open_store(root).verify()

    raw = json.loads((root / "images" / "shards.json").read_text())
    raw["shards"][1]["name"] = "shard-000001-000000000000.tar"
    (root / "images" / "shards.json").write_text(json.dumps(raw))
    with pytest.raises(
        ShardError,
        match=r"names shard shard-000001-000000000000\.tar, which is not in s3://fleet/cars/v1",
    ):
        open_store(root).verify()
    (root / "images" / "shards.json").write_text('{"format": "webdataset", "shards": []}')
    with pytest.raises(ShardError, match=r"shards\.json: (has no tasks|shards)"):
        open_store(root)


def test_s3_credentials_refused_name_the_prefix(
    tmp_path: Path, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import subprocess

    from tests.conftest import VENV_BIN, free_port, stop_process, wait_for_port

    boto3.client("s3").create_bucket(Bucket="locked")
    root = _ingest(tmp_path / "ingest", shards="s3://locked/cars")
    # a second moto server that checks credentials, as S3 does, against its (empty) IAM
    port = free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"}
    strict = subprocess.Popen(
        [str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for_port(port, strict)
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
        with pytest.raises(ShardError, match=r"s3://locked/cars: S3 refused these credentials"):
            open_store(root).verify()
        with pytest.raises(IngestError, match=r"data.shards: s3://locked/cars: S3 refused"):
            _ingest(tmp_path / "again", shards="s3://locked/cars")
        assert not (tmp_path / "again").exists()  # refused before anything was written
    finally:
        stop_process(strict)


def test_missing_and_corrupt_local_shards_are_named(tmp_path: Path) -> None:
    root = _ingest(tmp_path / "ingest")
    index = ShardIndex.read(root / "images" / "shards.json")
    first, second = (root / "images" / s.name for s in index.shards[:2])
    original = first.read_bytes()
    flipped = bytearray(original)
    flipped[len(flipped) // 2] ^= 0xFF
    first.write_bytes(bytes(flipped))
    with pytest.raises(ShardError, match=rf"shard {first.name} .*sha256 is not the one indexed"):
        open_store(root).verify()
    # an image read from the corrupt shard is refused too, naming it
    store, samples, _ = _indexed(root)
    rows = store.rows([s.path for s in samples])
    on_first = [s for s, r in zip(samples, rows, strict=True) if store.shard_of[r] == 0]
    with pytest.raises(ShardError, match=rf"shard {first.name} .*does not match its sha256"):
        store.read_many([s.path for s in on_first])
    first.write_bytes(original[:-512])
    with pytest.raises(ShardError, match=rf"shard {first.name} .* bytes, the index says"):
        open_store(root).verify()
    first.write_bytes(original)
    open_store(root).verify()
    second.unlink()
    with pytest.raises(ShardError, match=rf"names shard {second.name}, which is not in"):
        open_store(root).verify()


def _ddp_stream(rank: int, world: int, port: int, root: str, out: str) -> None:
    """One rank: its share of epoch 1, then the same share resumed at step 2."""
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        store, samples, classes = _indexed(Path(root))
        ds = ShardStream(
            store, samples, SPEC, 5, rank=rank, world_size=world, window=10, seed=1,
            kind="weighted", strata=classes,
        )  # fmt: skip
        ds.set_epoch(1)
        full = [y.tolist() for _, y in stream_loader(ds, 2)]
        ds.set_epoch(1)
        ds.start_at(2)
        resumed = [y.tolist() for _, y in stream_loader(ds, 2)]
        shares: list[object] = [None] * world
        torch.distributed.all_gather_object(shares, {"full": full, "resumed": resumed})
        if rank == 0:
            Path(out).write_text(json.dumps(shares))
    finally:
        torch.distributed.destroy_process_group()


def test_two_gloo_ranks_over_s3_shards(tmp_path: Path, s3_endpoint: str) -> None:
    from tests.conftest import free_port

    boto3.client("s3").create_bucket(Bucket="ddp")
    root = _ingest(tmp_path / "ingest", shards="s3://ddp/cars")
    out = tmp_path / "shares.json"
    torch.multiprocessing.spawn(
        _ddp_stream, args=(2, free_port(), str(root), str(out)), nprocs=2, join=True
    )
    shares = json.loads(out.read_text())
    _, _, classes = _indexed(root)
    sampler = ShardedEpochSampler(classes, "weighted", 0, 2, 1)
    sampler.set_epoch(1)
    drawn = sampler.global_indices().tolist()
    streamed = [i for batch in shares[0]["full"] + shares[1]["full"] for i in batch]
    assert len(shares[0]["full"]) == len(shares[1]["full"]) == 60 // 2 // 5  # equal steps
    assert Counter(streamed) == Counter(drawn)  # the sampler's draw, exactly, split in two
    for share in shares:
        assert share["resumed"] == share["full"][2:]
    assert np.mean([classes[i] for i in streamed]) == pytest.approx(
        np.mean([classes[i] for i in drawn])
    )
