"""The KFP pipeline: the compiled file, its platform settings, a local run, the TrainJob."""

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlflow.tracking import MlflowClient

from carinspect.config import KfpConfig, load_params, parse_params
from carinspect.stages.spec import SPEC
from carinspect.training.trainjob import (
    TrainJobError,
    check_known_fields,
    job_name,
    manifest,
    node_command,
    node_env,
    node_params,
    unknown_fields,
)
from pipelines.commands import compile_pipeline, data_version, split_overrides
from pipelines.training import PIPELINE_FILE
from tests.conftest import REPO_ROOT, VENV_BIN

TINY = [
    "data_source=demo",
    "data.demo.per_class=20",
    "train.epochs=1",
    "model.img_size=32",
    "threshold.allow_fallback=true",
    "threshold.bootstrap=0",
    "evaluate.workers=0",
    "train.workers=0",
    "train.batch_size=16",
    # a one-epoch model is not shown better than the baseline; these runs test the plumbing
    "register.require_better=false",
]


def test_committed_pipeline_is_current(tmp_path: Path) -> None:
    fresh = compile_pipeline(REPO_ROOT / "params.yaml", tmp_path / "pipeline.yaml")
    committed = REPO_ROOT / PIPELINE_FILE
    assert committed.read_text() == fresh.read_text(), (
        f"{PIPELINE_FILE} is stale: run `carinspect pipeline compile` and commit it"
    )


def _docs() -> tuple[dict[str, Any], dict[str, Any]]:
    spec, platform = yaml.safe_load_all((REPO_ROOT / PIPELINE_FILE).read_text())
    return spec, platform


def test_compiled_pipeline_carries_the_platform_settings() -> None:
    spec, platform = _docs()
    tasks = spec["root"]["dag"]["tasks"]
    assert list(tasks) == [
        "evaluate", "export", "ingest", "register", "split", "threshold", "train",
    ]  # fmt: skip
    assert set(spec["root"]["inputDefinitions"]["parameters"]) == {
        "data_source", "data_task", "data_format", "data_shards", "data_feedback", "data_version", "demo_cfg", "coco_tasks_cfg", "ingest_cfg",
        "split_cfg", "model_cfg",
        "train_cfg", "mlflow_cfg", "evaluate_cfg", "threshold_cfg", "export_cfg", "register_cfg",
    }  # fmt: skip
    # each task gets the sections its stage reads, as dvc.yaml's `params:` lists them
    sections = {
        name: {k for k in task["inputs"]["parameters"] if k.endswith("_cfg")}
        for name, task in tasks.items()
    }
    assert sections == {
        "ingest": {"demo_cfg", "coco_tasks_cfg", "ingest_cfg"}, "split": {"split_cfg"},
        "train": {"model_cfg", "train_cfg", "mlflow_cfg"}, "evaluate": {"evaluate_cfg"},
        "threshold": {"threshold_cfg"}, "export": {"export_cfg"}, "register": {"register_cfg"},
    }  # fmt: skip
    assert "defaultValue" not in spec["root"]["inputDefinitions"]["parameters"]["data_version"]
    # data_version reaches ingest, so it is part of ingest's cache key
    ingest_inputs = tasks["ingest"]["inputs"]["parameters"]
    assert ingest_inputs["data_version"]["componentInputParameter"] == "data_version"
    executors = spec["deploymentSpec"]["executors"]
    train = executors["exec-train"]["container"]
    assert train["image"] == "ghcr.io/carinspect/carinspect-gpu:0.1.0"
    assert train["resources"]["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert train["resources"]["accelerator"]["resourceCount"] == "1"
    assert train["resources"]["memoryLimit"] == 17.179869184
    assert executors["exec-ingest"]["container"]["image"] == "ghcr.io/carinspect/carinspect:0.1.0"
    for ex in executors.values():
        command = " ".join(ex["container"]["command"])
        assert "pip install" not in command, "components must not install at run time"
        assert {"name": "NO_ALBUMENTATIONS_UPDATE", "value": "1"} in ex["container"]["env"]
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert set(k8s) == {f"exec-{t}" for t in tasks}
    t = k8s["exec-train"]
    assert t["nodeSelector"]["labels"] == {"nvidia.com/gpu.present": "true"}
    assert t["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert t["emptyDirMounts"] == [
        {"volumeName": "dshm", "mountPath": "/dev/shm", "medium": "Memory", "sizeLimit": "8Gi"}
    ]
    # the run id reaches the training run's tags from the pod's label, not from an input
    assert t["fieldPathAsEnv"] == [
        {"name": "KFP_RUN_ID", "fieldPath": "metadata.labels['pipeline/runid']"}
    ]
    for ex in k8s.values():
        assert ex["configMapAsEnv"][0]["configMapName"] == "carinspect-mlflow"
        assert ex["configMapAsEnv"][0]["keyToEnv"] == [
            {"configMapKey": "MLFLOW_TRACKING_URI", "envVar": "MLFLOW_TRACKING_URI"}
        ]
        assert ex["secretAsEnv"][0]["optional"] is True


def test_overrides_and_data_versions(tmp_path: Path) -> None:
    inputs, overrides = split_overrides(
        ["data_version=abc123", "train.epochs=3", "data_source=s3://b/p"]
    )
    assert inputs == {"data_version": "abc123", "data_source": "s3://b/p"}
    assert overrides == {"train.epochs": 3, "data.source": "s3://b/p"}
    params = load_params(REPO_ROOT / "params.yaml")
    demo = params.model_copy(update={"data": params.data.model_copy(update={"source": "demo"})})
    assert data_version(demo, tmp_path) == "demo:0:160"
    (tmp_path / "dvc.lock").write_text(
        yaml.safe_dump({"stages": {"demo": {"outs": [{"path": "data/demo", "md5": "f00.dir"}]}}})
    )
    assert data_version(params, tmp_path) == "f00.dir"
    s3 = params.model_copy(update={"data": params.data.model_copy(update={"source": "s3://b/p"})})
    with pytest.raises(ValueError, match="pass --param data_version"):
        data_version(s3, tmp_path)


@pytest.mark.slow
def test_local_run_registers_a_version_tagged_with_the_pipeline_run(tmp_path: Path) -> None:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    args = [str(VENV_BIN / "carinspect"), "pipeline", "run", "--local",
            "--params", str(REPO_ROOT / "params.yaml"), "--pipeline-root", str(tmp_path / "kfp")]  # fmt: skip
    for pair in TINY:
        args += ["--param", pair]
    done = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "pipeline finished: registered models:/carinspect/1" in done.stdout
    mv = MlflowClient(env["MLFLOW_TRACKING_URI"]).get_model_version_by_alias(
        "carinspect", "challenger"
    )
    assert mv.tags["kfp.run_id"] and mv.tags["data.source"] == "demo"
    for task in ("ingest", "split", "train", "evaluate", "threshold", "export", "register"):
        assert list((tmp_path / "kfp").glob(f"*/{task}")), task


@pytest.mark.slow
def test_local_run_over_shards_in_s3(tmp_path: Path, s3_endpoint: str) -> None:
    """data_format shards into a bucket: ingest's artifact holds the index, the later tasks
    stream from the bucket (the environment stands in for kfp.data_secret)."""
    import boto3

    boto3.client("s3").create_bucket(Bucket="kfp-shards")
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    args = [str(VENV_BIN / "carinspect"), "pipeline", "run", "--local",
            "--params", str(REPO_ROOT / "params.yaml"), "--pipeline-root", str(tmp_path / "kfp")]  # fmt: skip
    shards = ["data.format=shards", "data.shards=s3://kfp-shards/demo", "ingest.shard_mb=0.1"]
    for pair in [*TINY, *shards]:
        args += ["--param", pair]
    done = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "pipeline finished: registered models:/carinspect/1" in done.stdout
    (index,) = (tmp_path / "kfp").glob("*/ingest/data/images/shards.json")
    assert [p.name for p in index.parent.iterdir()] == ["shards.json"]
    objects = boto3.client("s3").list_objects_v2(Bucket="kfp-shards")["Contents"]
    assert len(objects) >= 3 and all(o["Key"].endswith(".tar") for o in objects)
    mv = MlflowClient(env["MLFLOW_TRACKING_URI"]).get_model_version_by_alias(
        "carinspect", "challenger"
    )
    assert mv.tags["data.shards"] == "s3://kfp-shards/demo"


def two_nodes(gpus: int = 4) -> KfpConfig:
    kfp = load_params(REPO_ROOT / "params.yaml").kfp
    return kfp.model_copy(update={"train": kfp.train.model_copy(update={"nodes": 2, "gpus": gpus})})


def test_trainjob_manifest_for_two_nodes() -> None:
    kfp = two_nodes()
    body = manifest(job_name("carinspect-training-2026_11 22"), kfp,
                    node_command(Path("/workspace/x")), node_env(kfp, "r-1"))  # fmt: skip
    assert body["apiVersion"] == "trainer.kubeflow.org/v1alpha1" and body["kind"] == "TrainJob"
    assert body["metadata"]["name"] == "carinspect-carinspect-training-2026-11-22"
    assert body["metadata"]["namespace"] == "kubeflow"
    spec = body["spec"]
    assert set(spec) == {"runtimeRef", "trainer", "runtimePatches"}  # no podTemplateOverrides
    assert spec["runtimeRef"] == {
        "name": "torch-distributed", "apiGroup": "trainer.kubeflow.org", "kind": "ClusterTrainingRuntime",
    }  # fmt: skip
    trainer = spec["trainer"]
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (2, 4)
    assert trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "4"
    assert trainer["command"][:4] == ["torchrun", "--no-python", "carinspect", "train"]
    names = [e["name"] for e in trainer["env"]]
    assert {"MLFLOW_TRACKING_URI", "KFP_RUN_ID", "MLFLOW_TRACKING_PASSWORD"} <= set(names)
    secret = next(e for e in trainer["env"] if e["name"] == "MLFLOW_TRACKING_PASSWORD")
    assert secret["valueFrom"]["secretKeyRef"]["name"] == "carinspect-mlflow"
    (patch,) = spec["runtimePatches"]
    assert patch["manager"] == "carinspect/train-task"
    (job,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    assert job["name"] == "node"  # the torch runtime's training job
    pod = job["template"]["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["workspace"]["persistentVolumeClaim"]["claimName"] == "carinspect-workspace"
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "8Gi"}
    (container,) = pod["containers"]
    assert container["name"] == "node"
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    assert {"name": "workspace", "mountPath": "/workspace"} in container["volumeMounts"]
    kfp_one = kfp.model_copy(update={"train": kfp.train.model_copy(update={"nodes": 1})})
    with pytest.raises(ValueError, match="more than one node"):
        manifest("x", kfp_one, [], [])


def test_unknown_trainjob_fields_are_found_at_any_depth() -> None:
    """What a strict API server refuses: the v2.1 field, a typo deep in the runtime patch."""
    kfp = two_nodes()
    body = manifest("x", kfp, node_command(Path("/w")), node_env(kfp, "r"))
    assert unknown_fields(body) == []
    body["spec"]["podTemplateOverrides"] = [{"targetJobs": [{"name": "node"}]}]
    replicated = body["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]
    replicated["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]["nodeSelecter"] = {}
    body["spec"]["trainer"]["env"][0]["valueFromm"] = "x"
    found = unknown_fields(body)
    assert found == [
        "spec.runtimePatches[0].trainingRuntimeSpec.template.spec.replicatedJobs[0].template"
        ".spec.template.spec.nodeSelecter",
        "spec.trainer.env[0].valueFromm",
        "spec.podTemplateOverrides",
    ]
    with pytest.raises(TrainJobError, match="fields the Trainer API does not know"):
        check_known_fields(body)


def test_nodes_read_the_sections_train_reads() -> None:
    params = load_params(REPO_ROOT / "params.yaml")
    text = node_params(params, SPEC["train"].sections)
    assert set(yaml.safe_load(text)) == {"model", "train", "mlflow"}
    # what `carinspect train --params` reads on a node: equal, 1e-05 included
    assert parse_params(yaml.safe_load(text), "node params.yaml").train == params.train


def test_trainjob_dry_run_prints_a_job_the_api_knows() -> None:
    done = subprocess.run(
        [str(VENV_BIN / "carinspect"), "pipeline", "trainjob", "--dry-run",
         "--params", str(REPO_ROOT / "params.yaml"), "--param", "kfp.train.nodes=3",
         "--param", "kfp.train.gpus=8", "--run-id", "run-42"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    body = yaml.safe_load(done.stdout)
    assert unknown_fields(body) == []
    assert body["metadata"]["name"] == "carinspect-run-42"
    assert (body["spec"]["trainer"]["numNodes"], body["spec"]["trainer"]["numProcPerNode"]) == (
        3,
        8,
    )
    assert {"name": "KFP_RUN_ID", "value": "run-42"} in body["spec"]["trainer"]["env"]
    patch = body["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]
    pod = patch["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
    assert pod["nodeSelector"] and pod["tolerations"]
    assert {v["name"] for v in pod["volumes"]} == {"workspace", "dshm"}
    assert "/workspace/carinspect-run-42/params.yaml" in body["spec"]["trainer"]["command"]
    single = subprocess.run(
        [str(VENV_BIN / "carinspect"), "pipeline", "trainjob", "--dry-run",
         "--params", str(REPO_ROOT / "params.yaml")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert single.returncode == 2 and "--param kfp.train.nodes=2" in single.stderr


def test_kfp_help_lists_the_commands() -> None:
    done = subprocess.run(
        [str(VENV_BIN / "carinspect"), "pipeline", "--help"], capture_output=True, text=True
    )
    assert all(c in done.stdout for c in ("compile", "run", "submit", "trainjob"))
    local = subprocess.run(
        [str(VENV_BIN / "carinspect"), "pipeline", "run"], capture_output=True, text=True
    )
    assert local.returncode == 2 and "needs --local" in local.stderr
