"""Multi-node training through the real kubernetes client and Kubeflow SDK, against an API on
127.0.0.1 that plays Trainer v2.3 (tests/training/kube_api.py): strict creation, the log
followed, the outcome awaited, and the checkpoint hand-off through the workspace."""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from carinspect.config import KfpConfig, Settings, load_params
from carinspect.errors import InputError
from carinspect.stages.spec import SPEC
from carinspect.training import trainjob
from carinspect.training.trainjob import TrainJobError, manifest, node_env, run_trainjob
from tests.conftest import REPO_ROOT, VENV_BIN, Prepared, tiny_params
from tests.training.kube_api import Cluster, kube_api

TRAIN_SECTIONS = SPEC["train"].sections  # what the train component hands the nodes


def two_nodes(**train: Any) -> KfpConfig:
    kfp = load_params(REPO_ROOT / "params.yaml").kfp
    update = {"nodes": 2, "gpus": 0, **train}
    return kfp.model_copy(update={"train": kfp.train.model_copy(update=update)})


def script_node(code: str) -> Any:
    """A node that runs a Python snippet instead of the job's command."""

    def run(trainer: dict[str, Any], env: dict[str, str]) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-c", code], env={**os.environ, **env},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip

    return run


def command_node(trainer: dict[str, Any], env: dict[str, str]) -> subprocess.Popen[str]:
    """A node that runs the job's own command."""
    return subprocess.Popen(
        trainer["command"], env={**os.environ, **env},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


@pytest.fixture()
def cluster(tmp_path: Path) -> Any:
    with kube_api(tmp_path) as c:
        yield c


def test_created_strictly_log_followed_outcome_awaited(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    cluster.run_node = script_node(  # still running when the log is first read: followed
        "import os, time; print('rank', os.environ['PET_NODE_RANK'], flush=True); "
        "time.sleep(1.5); print('epoch 1/1: loss 0.5')"
    )
    kfp = two_nodes()
    body = manifest("carinspect-ok", kfp, ["carinspect", "train"], node_env(kfp, "run-1"))
    with caplog.at_level(logging.INFO, logger="carinspect.training.trainjob"):
        run_trainjob(body, poll_s=1, timeout_s=60)
    job = cluster.jobs["carinspect-ok"]
    assert job.query["fieldValidation"] == ["Strict"]
    assert job.body == body
    lines = [r.getMessage() for r in caplog.records]
    assert "TrainJob kubeflow/carinspect-ok: 2 nodes created" in lines
    assert "rank 0" in lines and "epoch 1/1: loss 0.5" in lines  # node 0's log, in order
    assert lines[-1] == "TrainJob kubeflow/carinspect-ok complete"


def test_a_failed_job_raises(cluster: Cluster) -> None:
    cluster.run_node = script_node("import sys; print('CUDA error'); sys.exit(3)")
    kfp = two_nodes()
    body = manifest("carinspect-bad", kfp, ["carinspect", "train"], node_env(kfp, "run-2"))
    with pytest.raises(TrainJobError, match="TrainJob kubeflow/carinspect-bad failed"):
        run_trainjob(body, poll_s=1, timeout_s=60)


def test_a_field_the_api_does_not_know_is_refused_not_dropped(cluster: Cluster) -> None:
    """What Trainer v2.3 answered for the old manifest: strict decoding refuses it."""
    cluster.run_node = script_node("print('must not run')")
    kfp = two_nodes()
    body = manifest("carinspect-old", kfp, ["carinspect", "train"], node_env(kfp, "run-3"))
    body["spec"]["podTemplateOverrides"] = [{"targetJobs": [{"name": "node"}]}]
    with pytest.raises(
        TrainJobError, match=r'400 Bad Request.*unknown field \\"spec.podTemplateOverrides'
    ):
        run_trainjob(body, poll_s=1, timeout_s=60)
    assert cluster.jobs == {}


def test_train_on_nodes_hands_the_checkpoints_back(
    tmp_path: Path,
    cluster: Cluster,
    prepared: Prepared,
    sqlite_tracking: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The train task's multi-node path: inputs to the workspace, `carinspect train` under
    torchrun on node 0 (rank 0 opens the MLflow run), the checkpoints back into the task's
    output."""
    workspace = tmp_path / "workspace"
    monkeypatch.setattr(trainjob, "WORKSPACE", str(workspace))  # the volume's mount point
    monkeypatch.setenv("PATH", f"{VENV_BIN}:{os.environ['PATH']}")  # torchrun, carinspect

    cluster.run_node = command_node
    params = load_params(tiny_params(tmp_path))
    out = tmp_path / "model"
    trainjob.train_on_nodes(
        params, two_nodes(), prepared.ingest, prepared.splits.parent, out,
        Settings(kfp_run_id="kfp-run-9"), sections=TRAIN_SECTIONS, poll_s=1,
    )  # fmt: skip
    (job,) = cluster.jobs.values()
    assert job.body["metadata"]["name"] == "carinspect-kfp-run-9"
    assert any("epoch 1/1: loss" in line for line in job.log), job.log
    for name in ("best.pt", "last.pt", "metrics.json", "run.json"):
        assert (out / name).is_file(), name
    run_id = json.loads((out / "run.json").read_text())["run_id"]
    run = MlflowClient(sqlite_tracking).get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["kfp.run_id"] == "kfp-run-9"
    assert run.data.tags["world_size"] == "1"


def _walk(node: Any) -> list[Any]:
    """Every dict and list inside ``node``."""
    found = [node]
    for child in (
        node.values() if isinstance(node, dict) else node if isinstance(node, list) else []
    ):
        found += _walk(child)
    return found


def test_an_s3_workspace_needs_no_volume_claim() -> None:
    kfp = two_nodes(workspace_uri="s3://fleet/trainjobs")
    body = manifest("carinspect-s3", kfp, trainjob.node_script("s3://fleet/trainjobs/x"),
                    node_env(kfp, "run-4"))  # fmt: skip
    assert not any("persistentVolumeClaim" in d for d in _walk(body) if isinstance(d, dict))
    patch = body["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]
    pod = patch["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
    assert [v["name"] for v in pod["volumes"]] == ["dshm"]
    script = body["spec"]["trainer"]["command"]
    assert script[:2] == ["sh", "-c"]
    assert "carinspect data pull s3://fleet/trainjobs/x /tmp/carinspect" in script[2]
    assert "carinspect data push /tmp/carinspect/train s3://fleet/trainjobs/x/train" in script[2]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"]["name"]
            for e in body["spec"]["trainer"]["env"] if "valueFrom" in e}  # fmt: skip
    assert refs["AWS_ACCESS_KEY_ID"] == refs["AWS_ENDPOINT_URL"] == "carinspect-data"
    # with a PVC workspace, the claim is there as before
    pvc = manifest("carinspect-pvc", two_nodes(), ["carinspect"], node_env(two_nodes(), "r"))
    assert any("persistentVolumeClaim" in d for d in _walk(pvc) if isinstance(d, dict))


def test_train_on_nodes_through_an_s3_workspace(
    tmp_path: Path,
    cluster: Cluster,
    s3_endpoint: str,
    sqlite_tracking: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Shards in S3, the workspace in S3: the node pulls its inputs, streams the shards, and
    pushes the checkpoints, which come back into the task's output; no volume anywhere."""
    import boto3

    from carinspect.config import DataConfig, DemoConfig, IngestConfig, SplitConfig
    from carinspect.stages import ingest, split

    boto3.client("s3").create_bucket(Bucket="fleet")
    data = DataConfig(source="demo", demo=DemoConfig(per_class=16, broken=False),
                      format="shards", shards="s3://fleet/shards")  # fmt: skip
    ingest.run(data, IngestConfig(short_side=40, shard_mb=0.05), tmp_path / "ingest")
    splits = split.run(SplitConfig(), tmp_path / "ingest" / "manifest.csv", tmp_path / "split")
    monkeypatch.setattr(trainjob, "WORKSPACE", str(tmp_path / "no-volume"))  # must stay unused
    monkeypatch.setattr(trainjob, "NODE_LOCAL", str(tmp_path / "node"))
    monkeypatch.setenv("PATH", f"{VENV_BIN}:{os.environ['PATH']}")

    cluster.run_node = command_node
    out = tmp_path / "model"
    trainjob.train_on_nodes(
        load_params(tiny_params(tmp_path)), two_nodes(workspace_uri="s3://fleet/jobs"),
        tmp_path / "ingest", splits.splits.parent, out, Settings(kfp_run_id="kfp-run-s3"),
        sections=TRAIN_SECTIONS, poll_s=1,
    )  # fmt: skip
    (job,) = cluster.jobs.values()
    assert any("streaming" in line and "s3://fleet/shards" in line for line in job.log), job.log
    for name in ("best.pt", "last.pt", "metrics.json", "run.json"):
        assert (out / name).is_file(), name
    assert not (tmp_path / "no-volume").exists()
    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket="fleet")["Contents"]]
    assert "jobs/carinspect-kfp-run-s3/train/best.pt" in keys
    assert "jobs/carinspect-kfp-run-s3/ingest/images/shards.json" in keys
    assert not any(k.startswith("jobs/") and k.endswith(".tar") for k in keys)  # data stays put


def test_an_s3_workspace_refuses_data_the_nodes_cannot_reach(
    tmp_path: Path, prepared: Prepared
) -> None:
    with pytest.raises(InputError, match=r"workspace_uri 's3://fleet/jobs': the nodes stream"):
        trainjob.train_on_nodes(
            load_params(tiny_params(tmp_path)), two_nodes(workspace_uri="s3://fleet/jobs"),
            prepared.ingest, prepared.splits.parent, tmp_path / "m", Settings(),
            sections=TRAIN_SECTIONS, poll_s=1,
        )  # fmt: skip
