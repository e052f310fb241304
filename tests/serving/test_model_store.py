"""Model store pieces in-process: URIs, overrides, providers, warm-up checks; predict CLI."""

import json
import os
import shutil
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from carinspect.data.decoding.images import ImageLimits
from carinspect.data.intake.manifest import read_splits
from carinspect.serving.inference import pixels_for
from carinspect.serving.loaded import ModelLoadError, ModelRef
from carinspect.serving.model_store import ModelStore
from carinspect.serving.opening import apply_overrides, open_model, provider_options
from carinspect.serving.settings import ServeSettings
from tests.conftest import VENV_BIN, Prepared, registered_store
from tests.serving.conftest import image_bytes


def test_model_uris() -> None:
    assert ModelRef.parse("models:/cars@champion") == ModelRef(
        "models:/cars@champion", name="cars", alias="champion"
    )
    assert ModelRef.parse("models:/cars/3").version == "3"
    assert ModelRef.parse("/srv/model").folder == Path("/srv/model")
    for bad in ("models:/cars", "models:/cars/latest", "models:/@x", "models:/a/b/c"):
        with pytest.raises(ModelLoadError, match="expected models:/<name>@<alias>"):
            ModelRef.parse(bad)


def test_threshold_overrides() -> None:
    rule = {
        "task": "binary",
        "positive_class": "clean",
        "threshold": 0.3,
        "t_low": 0.1,
        "t_high": 0.3,
    }
    assert apply_overrides(rule, ServeSettings(THRESH=0.5)) | {} == {
        **rule, "threshold": 0.5, "t_high": 0.5,
    }  # fmt: skip
    both = apply_overrides(rule, ServeSettings(T_LOW=0.2, T_HIGH=0.9))
    assert (both["t_low"], both["t_high"]) == (0.2, 0.9)
    assert apply_overrides(rule, ServeSettings(THRESH=0.05))["t_low"] == 0.05  # band stays ordered
    multi = apply_overrides(
        {"task": "multiclass", "min_confidence": 0.0}, ServeSettings(THRESH=0.6)
    )
    assert multi["min_confidence"] == 0.6
    with pytest.raises(ValueError, match=r"T_LOW=0\.8 is above T_HIGH=0\.2"):
        ServeSettings(T_LOW=0.8, T_HIGH=0.2)


@pytest.mark.parametrize("provider", ["CUDAExecutionProvider", "TensorrtExecutionProvider"])
def test_a_required_provider_that_is_not_active_refuses_the_model(
    upstream: dict[str, Path], provider: str, tmp_path: Path
) -> None:
    import onnxruntime as ort

    if provider in ort.get_available_providers():
        pytest.skip(f"{provider} is available here")
    folder = upstream["export"]
    settings = ServeSettings(
        ORT_PROVIDERS=f"{provider},CPUExecutionProvider", MODEL_CACHE_DIR=tmp_path
    )
    with pytest.raises(ModelLoadError, match=f"{provider} was asked for"):
        open_model(ModelRef.parse(str(folder)), None, folder, settings)


def test_tensorrt_gets_an_engine_cache_and_its_precision(tmp_path: Path) -> None:
    wanted = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    settings = ServeSettings(MODEL_CACHE_DIR=tmp_path, ORT_TRT_FP16=True)
    trt, *rest = provider_options(wanted, settings)
    assert rest == wanted[1:] and trt[0] == wanted[0]
    assert (
        trt[1]["trt_engine_cache_path"] == str(tmp_path / "tensorrt") and trt[1]["trt_fp16_enable"]
    )
    assert (tmp_path / "tensorrt").is_dir()
    chosen = ServeSettings(ORT_TRT_CACHE_DIR=tmp_path / "engines")
    assert provider_options(wanted[:1], chosen)[0][1]["trt_engine_cache_path"] == str(
        tmp_path / "engines"
    )


@pytest.mark.gpu
def test_tensorrt_provider_is_really_used(
    upstream: dict[str, Path], prepared: Prepared, tmp_path: Path
) -> None:
    """On a GPU with onnxruntime-gpu's TensorRT: engines are built and cached, decisions match CPU."""
    import onnxruntime as ort

    if "TensorrtExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu with TensorRT is not installed")
    folder = upstream["export"]
    trt = open_model(ModelRef.parse(str(folder)), None, folder, ServeSettings(
        ORT_PROVIDERS="TensorrtExecutionProvider,CUDAExecutionProvider,CPUExecutionProvider",
        ORT_TRT_CACHE_DIR=tmp_path / "engines"))  # fmt: skip
    assert trt.provider == "TensorrtExecutionProvider"
    assert any((tmp_path / "engines").iterdir())  # the engine built at warm-up is cached
    cpu = open_model(
        ModelRef.parse(str(folder)),
        None,
        folder,
        ServeSettings(ORT_PROVIDERS="CPUExecutionProvider"),
    )
    limits = ImageLimits()
    rows = [r for r in read_splits(prepared.splits) if r.split == "val"]
    batch = np.stack(
        [pixels_for((prepared.ingest / r.path).read_bytes(), cpu, limits) for r in rows]
    )
    a, b = trt.probabilities(batch), cpu.probabilities(batch)
    assert np.abs(a - b).max() < 1e-3 and (a.argmax(1) == b.argmax(1)).all()


def test_bad_model_folders_are_refused_with_the_reason(
    tmp_path: Path, upstream: dict[str, Path]
) -> None:
    folder = tmp_path / "m"
    shutil.copytree(upstream["export"], folder)
    meta = json.loads((folder / "model.json").read_text())
    meta["classes"] = ["a", "b", "c"]
    (folder / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelLoadError, match=r"decision rule's classes \['clean', 'dirty'\]"):
        open_model(ModelRef.parse(str(folder)), None, folder, ServeSettings())
    meta["decision"] = {"task": "multiclass", "classes": ["a", "b", "c"]}  # a consistent card
    (folder / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelLoadError, match=r"warm-up gave shape \(1, 2\), expected \(1, 3\)"):
        open_model(ModelRef.parse(str(folder)), None, folder, ServeSettings())  # 2 outputs
    (folder / "model.json").unlink()
    with pytest.raises(ModelLoadError, match=r"model\.json not found"):
        open_model(ModelRef.parse(str(folder)), None, folder, ServeSettings())


def test_thread_pools_follow_the_cpu_limit(upstream: dict[str, Path]) -> None:
    """CPU_LIMIT (the pod's limits.cpu) sizes decoding and onnxruntime, not the node's cores."""
    limited = ServeSettings(CPU_LIMIT=3.5)
    assert (limited.cpus, limited.decoders, limited.inference_threads) == (4, 4, 2)
    assert ServeSettings(CPU_LIMIT=1).inference_threads == 1
    chosen = ServeSettings(CPU_LIMIT=8, DECODE_THREADS=3, ORT_INTRA_OP_THREADS=5)
    assert (chosen.decoders, chosen.inference_threads) == (3, 5)
    assert ServeSettings().cpus == len(os.sched_getaffinity(0))
    folder = upstream["export"]
    model = open_model(ModelRef.parse(str(folder)), None, folder, ServeSettings(CPU_LIMIT=4))
    assert model.session.get_session_options().intra_op_num_threads == 2
    with pytest.raises(ValidationError, match="CPU_LIMIT"):
        ServeSettings(CPU_LIMIT=-1)


def test_local_folder_reloads_when_its_files_change(
    tmp_path: Path, upstream: dict[str, Path]
) -> None:
    folder = tmp_path / "m"
    shutil.copytree(upstream["export"], folder)
    store = ModelStore(ServeSettings(MODEL_URI=str(folder)))
    assert store.refresh() and store.current is not None
    first = store.current
    assert not store.refresh()  # unchanged
    (folder / "model.onnx").write_bytes(b"broken")  # a bad update: the old model stays
    assert not store.refresh() and store.current is first
    assert store.last_error is not None and "onnxruntime cannot open it" in store.last_error
    shutil.copy(upstream["export"] / "model.onnx", folder / "model.onnx")
    assert store.refresh() and store.current is not first and store.last_error is None


def test_predict_command_writes_json_and_csv(tmp_path: Path, upstream: dict[str, Path]) -> None:
    images = tmp_path / "photos"
    (images / "lot-a").mkdir(parents=True)
    (images / "lot-a" / "1.jpg").write_bytes(image_bytes("JPEG"))
    (images / "2.png").write_bytes(image_bytes("PNG", mode="RGBA"))
    (images / "notes.txt").write_text("not a photo")
    env = {**os.environ, "MODEL_URI": str(upstream["export"])}
    for name in ("preds.json", "preds.csv"):
        done = subprocess.run(
            [str(VENV_BIN / "carinspect"), "predict", str(images), "--out", str(tmp_path / name)],
            env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "3 inputs, 1 unusable" in done.stdout
    rows = json.loads((tmp_path / "preds.json").read_text())
    assert [Path(r["path"]).name for r in rows] == ["2.png", "1.jpg", "notes.txt"]
    assert rows[2]["error"] == "not_an_image" and rows[0]["label"] in (
        "clean",
        "dirty",
        "uncertain",
    )
    header = (tmp_path / "preds.csv").read_text().splitlines()[0]
    assert header == "path,label,confidence,p_clean,p_dirty,error,detail"
    assert "against the folder names" not in done.stdout  # lot-a is not a class

    printed = subprocess.run(  # --out -: the JSON on stdout, the summary on stderr
        [str(VENV_BIN / "carinspect"), "predict", str(images / "2.png"), "--out", "-"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert printed.returncode == 0, printed.stderr
    assert json.loads(printed.stdout)[0]["label"] == rows[0]["label"]
    assert "1 inputs, 0 unusable" in printed.stderr and "written to" not in printed.stderr


def test_predict_on_a_folder_per_class_scores_the_answers_against_the_folders(
    tmp_path: Path, upstream: dict[str, Path]
) -> None:
    tree = tmp_path / "labelled"
    for label, count in (("clean", 3), ("dirty", 2), ("unsorted", 1)):
        (tree / label).mkdir(parents=True)
        for i in range(count):
            (tree / label / f"{i}.png").write_bytes(image_bytes("PNG"))
    env = {**os.environ, "MODEL_URI": str(upstream["export"])}
    done = subprocess.run(
        [str(VENV_BIN / "carinspect"), "predict", str(tree), "--out", str(tmp_path / "p.json")],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = json.loads((tmp_path / "p.json").read_text())
    truth = {
        str(tree / c / f"{i}.png"): c for c, n in (("clean", 3), ("dirty", 2)) for i in range(n)
    }
    right = sum(r["label"] == truth[r["path"]] for r in rows if r["path"] in truth)
    lines = done.stdout.splitlines()
    assert lines[1].startswith(f"against the folder names: accuracy {right / 5:.3f} ({right} of 5")
    assert lines[2].split() == ["true", "\\", "answer", "clean", "dirty", "uncertain"]
    table = {line.split()[0]: [int(n) for n in line.split()[1:]] for line in lines[3:]}
    for c in ("clean", "dirty"):
        said = [r["label"] for r in rows if truth.get(r["path"]) == c]
        assert table[c] == [said.count(a) for a in ("clean", "dirty", "uncertain")]
    missing = subprocess.run(
        [str(VENV_BIN / "carinspect"), "predict", str(tmp_path / "nowhere")],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert missing.returncode == 2 and "no such file or folder" in missing.stderr


def test_predict_reads_an_s3_prefix(
    tmp_path: Path, upstream: dict[str, Path], s3_endpoint: str
) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="photos")
    s3.put_object(Bucket="photos", Key="lot-b/1.jpg", Body=image_bytes("JPEG"))
    s3.put_object(Bucket="photos", Key="lot-b/2.webp", Body=image_bytes("WEBP"))
    env = {**os.environ, "MODEL_URI": str(upstream["export"])}
    done = subprocess.run(
        [str(VENV_BIN / "carinspect"), "predict", "s3://photos/lot-b/", "--out", str(tmp_path / "p.json")],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = json.loads((tmp_path / "p.json").read_text())
    assert [r["path"] for r in rows] == ["s3://photos/lot-b/1.jpg", "s3://photos/lot-b/2.webp"]
    assert all("label" in r for r in rows)


@pytest.mark.gpu
def test_cuda_provider_is_really_used(upstream: dict[str, Path]) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is not installed")
    folder = upstream["export"]
    model = open_model(ModelRef.parse(str(folder)), None, folder, ServeSettings())
    assert model.provider == "CUDAExecutionProvider"


@pytest.mark.skipif(not hasattr(os, "setpriority"), reason="per-thread nice is Linux's")
def test_decoding_threads_run_below_inference_priority(upstream: dict[str, Path]) -> None:
    """Uploads are decoded at DECODE_NICE below the threads that finish requests."""
    from carinspect.serving.service import Service

    def own_nice() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    base = own_nice()
    service = Service(ServeSettings(MODEL_URI=str(upstream["export"]), DECODE_NICE=7))
    try:
        assert service._decoder.submit(own_nice).result() == min(19, base + 7)
    finally:
        service._decoder.shutdown()
    assert own_nice() == base  # the caller's own priority is untouched


def test_the_download_cache_tells_stores_apart(tmp_path: Path, upstream: dict[str, Path]) -> None:
    """carinspect version 1 of two stores are two models: a shared MODEL_CACHE_DIR keeps both."""
    folders = []
    for store in ("a", "b"):
        settings = ServeSettings(
            MODEL_URI="models:/carinspect/1", MODEL_CACHE_DIR=tmp_path / "cache",
            MLFLOW_TRACKING_URI=registered_store(tmp_path, upstream, store),
        )  # fmt: skip
        version, folder = ModelStore(settings).fetch()
        assert version == "1" and (folder / "model.onnx").is_file()
        assert ModelStore(settings).fetch()[1] == folder  # downloaded once per store and version
        folders.append(folder)
    assert folders[0] != folders[1] and folders[0].parent == folders[1].parent
