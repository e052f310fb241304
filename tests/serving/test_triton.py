"""`carinspect export-triton` and the Triton client: a repository Triton accepts, the same answers.

No Triton server runs here: config.pbtxt is parsed with Triton's own ModelConfig protobuf (from
tritonclient), and the client runs the entry's model in-process (saying so) to compare its
answers with a real `carinspect serve`. With TRITON_URL set (a Triton serving the repository),
the last test sends the same images through Triton itself.
"""

import json
import os
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
from google.protobuf import text_format

from carinspect.config import TritonConfig
from carinspect.contracts.cards import read_card
from carinspect.data.intake.manifest import read_splits
from carinspect.serving.triton import TritonError, model_config
from carinspect.serving.triton_client import _max_batch_size
from tests.conftest import REPO_ROOT, VENV_BIN, Prepared, Server, registered_store


def _config(text: str) -> object:
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(text, model_config_pb2.ModelConfig())  # unknown fields: ParseError


def _cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VENV_BIN / "carinspect"), *args], cwd=cwd, env={**os.environ, **env},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_export_triton_from_a_registered_version(tmp_path: Path, upstream: dict[str, Path]) -> None:
    uri = registered_store(tmp_path, upstream)
    env = {"MLFLOW_TRACKING_URI": uri, "MODEL_CACHE_DIR": str(tmp_path / "cache")}
    params = ["--params", str(REPO_ROOT / "params.yaml")]
    done = _cli("export-triton", "--version", "1", "--out", "repo", *params, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "models:/carinspect/1 (version 1) ->" in done.stdout
    entry = tmp_path / "repo" / "carinspect"
    assert sorted(p.name for p in entry.iterdir()) == [
        "1",
        "config.pbtxt",
        "labels.txt",
        "model.json",
    ]
    assert (entry / "1" / "model.onnx").read_bytes() == (
        upstream["export"] / "model.onnx"
    ).read_bytes()
    card = read_card(entry / "model.json")
    assert (entry / "labels.txt").read_text().split() == card.classes

    cfg = _config((entry / "config.pbtxt").read_text())
    size = card.preprocess.img_size
    assert cfg.name == "carinspect" and cfg.backend == "onnxruntime" and cfg.max_batch_size == 32
    assert _max_batch_size(entry) == 32  # what the client chunks requests to
    assert [(i.name, list(i.dims)) for i in cfg.input] == [("input", [3, size, size])]
    outputs = {o.name: (list(o.dims), o.label_filename) for o in cfg.output}
    assert outputs["probabilities"] == ([2], "labels.txt") and outputs["logits"] == ([2], "")
    assert list(cfg.dynamic_batching.preferred_batch_size) == [8, 16, 32]
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 2000
    (group,) = cfg.instance_group
    assert group.count == 1 and group.kind == group.KIND_GPU
    (trt,) = cfg.optimization.execution_accelerators.gpu_execution_accelerator
    assert trt.name == "tensorrt" and trt.parameters["precision_mode"] == "FP16"

    by_alias = _cli("export-triton", "--alias", "challenger", "--out", "repo", *params, env=env, cwd=tmp_path)  # fmt: skip
    assert by_alias.returncode == 0 and "(version 1)" in by_alias.stdout, by_alias.stderr
    none = _cli("export-triton", "--alias", "champion", "--out", "repo", *params, env=env, cwd=tmp_path)  # fmt: skip
    assert none.returncode == 2 and "champion" in none.stderr and "Traceback" not in none.stderr
    assert (entry / "1" / "model.onnx").is_file()  # a failed export leaves the entry as it was


def test_cpu_instances_and_a_bad_config_are_handled(
    tmp_path: Path, upstream: dict[str, Path]
) -> None:
    onnx_path = upstream["export"] / "model.onnx"
    card = read_card(upstream["export"] / "model.json")
    cpu = _config(
        model_config(card, onnx_path, TritonConfig(instance_kind="KIND_CPU", instance_count=2))
    )
    assert cpu.instance_group[0].kind == cpu.instance_group[0].KIND_CPU
    assert not cpu.HasField("optimization")  # TensorRT is a GPU accelerator
    with pytest.raises(ValueError, match="preferred_batch_sizes"):
        TritonConfig(max_batch_size=8, preferred_batch_sizes=[16])
    fixed = tmp_path / "fixed_batch.onnx"
    _identity_model(fixed, batch=1)
    with pytest.raises(TritonError, match="batch"):
        model_config(card, fixed, TritonConfig())


def _identity_model(path: Path, batch: int) -> None:
    """A one-node ONNX graph whose input and output have a fixed batch dimension."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, 4, 4])
    y = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [batch, 3, 4, 4])
    graph = helper.make_graph(
        [helper.make_node("Identity", ["input"], ["probabilities"])], "g", [x], [y]
    )
    onnx.save(helper.make_model(graph), str(path))


def _val_images(prepared: Prepared, out: Path) -> Path:
    out.mkdir()
    for row in read_splits(prepared.splits):
        if row.split == "val":
            shutil.copy(prepared.ingest / row.path, out / Path(row.path).name)
    return out


def test_client_answers_as_carinspect_serve(
    tmp_path: Path, upstream: dict[str, Path], prepared: Prepared, served: Server
) -> None:
    images = _val_images(prepared, tmp_path / "val")
    params = ["--params", str(REPO_ROOT / "params.yaml")]
    uri = ["--model-uri", str(upstream["export"])]
    assert (
        _cli("export-triton", *uri, "--out", "repo", *params, env={}, cwd=tmp_path).returncode == 0
    )
    done = _cli("triton-predict", str(images), "--repository", "repo", "--out", "t.json", env={}, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "no Triton URL given: running" in done.stderr and "onnxruntime" in done.stderr
    rows = {Path(r["path"]).name: r for r in json.loads((tmp_path / "t.json").read_text())}
    assert len(rows) >= 8
    for name, row in rows.items():
        data = (images / name).read_bytes()
        served_answer = httpx.post(served.url + "/predict", files={"file": (name, data)}).json()
        assert row["label"] == served_answer["label"], name
        for cls, p in served_answer["probabilities"].items():
            assert abs(row["probabilities"][cls] - p) <= 1e-6, (name, cls)


@pytest.mark.skipif(
    not os.environ.get("TRITON_URL"), reason="set TRITON_URL to a Triton serving the repository"
)
def test_client_through_a_real_triton(tmp_path: Path, prepared: Prepared) -> None:
    """On demand: TRITON_URL (host:8000) and TRITON_REPOSITORY (the entry it serves)."""
    images = _val_images(prepared, tmp_path / "val")
    repo = os.environ["TRITON_REPOSITORY"]
    for url, out in ((os.environ["TRITON_URL"], "triton.json"), (None, "local.json")):
        args = ["triton-predict", str(images), "--repository", repo, "--out", out]
        done = _cli(*args, *(["--url", url] if url else []), env={}, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
    remote = json.loads((tmp_path / "triton.json").read_text())
    local = json.loads((tmp_path / "local.json").read_text())
    assert [r["label"] for r in remote] == [r["label"] for r in local]


def test_export_into_the_artifact_bucket(
    tmp_path: Path, upstream: dict[str, Path], s3_endpoint: str
) -> None:
    """--out s3://bucket/prefix: the entry KServe's storage initializer reads; a re-export
    leaves no stale object behind."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="mlflow")
    s3.put_object(Bucket="mlflow", Key="triton/carinspect/7/model.onnx", Body=b"an older version")
    args = ["export-triton", "--model-uri", str(upstream["export"]), "--out", "s3://mlflow/triton"]
    done = _cli(*args, "--params", str(REPO_ROOT / "params.yaml"), env={}, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("-> s3://mlflow/triton/carinspect")
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="mlflow")["Contents"])
    assert keys == [
        f"triton/carinspect/{n}"
        for n in ("1/model.onnx", "config.pbtxt", "labels.txt", "model.json")
    ]
    body = s3.get_object(Bucket="mlflow", Key="triton/carinspect/1/model.onnx")["Body"].read()
    assert body == (upstream["export"] / "model.onnx").read_bytes()
