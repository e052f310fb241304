"""Training across nodes: a Kubeflow Trainer TrainJob, created and followed from the train task.

With ``kfp.train.nodes > 1`` the KFP train task does not train itself: it writes the inputs to
a ReadWriteMany workspace volume, creates a TrainJob (trainer.kubeflow.org/v1alpha1, runtime
``torch-distributed``, ``numNodes`` nodes with ``gpus`` processes each, the same GPU, toleration
and node-selector settings as the single-node task) whose nodes run ``carinspect train`` under
the runtime's torchrun, streams the logs of node 0, waits for the job to finish and copies the
checkpoints back. The manifest is plain data built here, so tests can render and check it.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from carinspect.config import KfpConfig, KfpTrainConfig, Params, Settings
from carinspect.errors import InputError

logger = logging.getLogger(__name__)

API_GROUP = "trainer.kubeflow.org"
API_VERSION = "v1alpha1"
PLURAL = "trainjobs"
WORKSPACE = "/workspace"
NODE_JOB = "node"  # the replicated job of the torch-distributed runtime that runs the trainer


class TrainJobError(RuntimeError):
    """The TrainJob failed or could not be followed."""


def job_name(run_name: str) -> str:
    """A DNS-1123 name (63 characters at most) for the TrainJob of a pipeline run."""
    name = re.sub(r"[^a-z0-9-]+", "-", run_name.lower()).strip("-")
    return (f"carinspect-{name}" if name else "carinspect-train")[:63].rstrip("-")


def manifest(
    name: str, cfg: KfpTrainConfig, command: list[str], env: list[dict[str, Any]]
) -> dict[str, Any]:
    """The TrainJob object: ``cfg.nodes`` nodes of ``cfg.gpus`` GPUs running ``command``."""
    if cfg.nodes < 2:
        raise InputError(f"kfp.train.nodes={cfg.nodes}: a TrainJob is for more than one node")
    resources: dict[str, Any] = {
        "requests": {"cpu": cfg.cpu, "memory": cfg.memory},
        "limits": {"cpu": cfg.cpu, "memory": cfg.memory},
    }
    if cfg.gpus:
        resources["limits"][cfg.accelerator] = str(cfg.gpus)
        resources["requests"][cfg.accelerator] = str(cfg.gpus)
    tolerations = [
        {k: v for k, v in t.model_dump().items() if v is not None} for t in cfg.tolerations
    ]
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": "TrainJob",
        "metadata": {
            "name": name,
            "namespace": cfg.namespace,
            "labels": {
                "app.kubernetes.io/part-of": "carinspect",
                "app.kubernetes.io/component": "train",
            },
        },
        "spec": {
            "runtimeRef": {
                "name": cfg.trainer_runtime,
                "apiGroup": API_GROUP,
                "kind": "ClusterTrainingRuntime",
            },
            "trainer": {
                "image": cfg.image,
                "command": command,
                "numNodes": cfg.nodes,
                "numProcPerNode": max(cfg.gpus, 1),
                "resourcesPerNode": resources,
                "env": env,
            },
            "podTemplateOverrides": [
                {
                    "targetJobs": [{"name": NODE_JOB}],
                    "spec": {
                        "nodeSelector": dict(cfg.node_selector),
                        "tolerations": tolerations,
                        "volumes": [
                            {
                                "name": "workspace",
                                "persistentVolumeClaim": {"claimName": cfg.workspace_pvc},
                            },
                            {
                                "name": "dshm",
                                "emptyDir": {"medium": "Memory", "sizeLimit": cfg.shm_size},
                            },
                        ],
                        "containers": [
                            {
                                "name": NODE_JOB,
                                "volumeMounts": [
                                    {"name": "workspace", "mountPath": WORKSPACE},
                                    {"name": "dshm", "mountPath": "/dev/shm"},
                                ],
                            }
                        ],
                    },
                }
            ],
        },
    }


def _condition(obj: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for c in obj.get("status", {}).get("conditions", []) or []:
        if c.get("type") == kind and c.get("status") == "True":
            return dict(c)
    return None


def run_trainjob(
    body: dict[str, Any],
    *,
    poll_s: float = 10.0,
    timeout_s: float = 7 * 24 * 3600,
    log: Callable[[str], None] = logger.info,
) -> None:
    """Create ``body`` through the Kubernetes API, stream node 0's log, wait for the outcome.

    Uses the pod's service account in a cluster (kubeconfig elsewhere); it needs create/get on
    trainjobs and get/list on pods and pods/log in the namespace.
    """
    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    api = client.CustomObjectsApi()
    core = client.CoreV1Api()
    ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
    try:
        api.create_namespaced_custom_object(API_GROUP, API_VERSION, ns, PLURAL, body)
    except ApiException as err:
        raise TrainJobError(
            f"cannot create TrainJob {ns}/{name}: {err.status} {err.reason}"
        ) from err
    log(f"TrainJob {ns}/{name}: {body['spec']['trainer']['numNodes']} nodes created")
    seen_lines = 0
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        obj = api.get_namespaced_custom_object(API_GROUP, API_VERSION, ns, PLURAL, name)
        pods = core.list_namespaced_pod(
            ns, label_selector=f"jobset.sigs.k8s.io/jobset-name={name}"
        ).items
        first = sorted(pods, key=lambda p: p.metadata.name)[:1]
        if first and first[0].status.phase in ("Running", "Succeeded", "Failed"):
            text = core.read_namespaced_pod_log(first[0].metadata.name, ns)
            lines = text.splitlines()
            for line in lines[seen_lines:]:
                log(line)
            seen_lines = len(lines)
        if _condition(obj, "Complete"):
            log(f"TrainJob {ns}/{name} complete")
            return
        failed = _condition(obj, "Failed")
        if failed:
            raise TrainJobError(f"TrainJob {ns}/{name} failed: {failed.get('message', '')}")
        time.sleep(poll_s)
    raise TrainJobError(f"TrainJob {ns}/{name} did not finish within {timeout_s:.0f} s")


def node_command(workspace: Path) -> list[str]:
    """What every node runs: `carinspect train` under torchrun (PET_* env from the runtime)."""
    return [
        "torchrun", "--no-python", "carinspect", "train",
        "--params", str(workspace / "params.yaml"),
        "--ingest", str(workspace / "ingest"),
        "--splits", str(workspace / "split" / "splits.csv"),
        "--out", str(workspace / "train"),
    ]  # fmt: skip


def node_env(cfg: KfpConfig, kfp_run_id: str) -> list[dict[str, Any]]:
    """The nodes' environment: the task's tracking URI and run id, MLflow credentials by ref."""
    env: list[dict[str, Any]] = [
        {"name": "KFP_RUN_ID", "value": kfp_run_id},
        {"name": "NO_ALBUMENTATIONS_UPDATE", "value": "1"},
        {"name": "MLFLOW_TRACKING_URI", "value": os.environ.get("MLFLOW_TRACKING_URI", "")},
    ]
    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        ref = {"name": cfg.mlflow_secret, "key": key, "optional": True}
        env.append({"name": key, "valueFrom": {"secretKeyRef": ref}})
    return env


def train_on_nodes(
    params: Params, kfp: KfpConfig, data: Path, splits: Path, out: Path, settings: Settings
) -> None:
    """Stage the inputs on the workspace volume, run the TrainJob, bring the outputs back.

    The nodes read a params.yaml holding the sections train reads (model, train, mlflow).
    """
    kfp_run_id = settings.kfp_run_id or ""
    workspace = Path(WORKSPACE) / job_name(kfp_run_id or "run")
    if workspace.exists():
        shutil.rmtree(workspace)
    workspace.mkdir(parents=True)
    sections = params.model_dump(mode="json", include={"model", "train", "mlflow"})
    (workspace / "params.yaml").write_text(yaml.safe_dump(sections, sort_keys=False))
    shutil.copytree(data, workspace / "ingest")
    shutil.copytree(splits, workspace / "split")
    body = manifest(job_name(kfp_run_id or "run"), kfp.train, node_command(workspace),
                    node_env(kfp, kfp_run_id))  # fmt: skip
    run_trainjob(body)
    shutil.copytree(workspace / "train", out, dirs_exist_ok=True)
