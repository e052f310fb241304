"""Training across nodes: a Kubeflow Trainer TrainJob, created and followed from the train task.

With ``kfp.train.nodes > 1`` the KFP train task does not train itself: it writes the inputs to
a ReadWriteMany workspace volume, creates a TrainJob whose nodes run ``carinspect train`` under
the runtime's torchrun (``kfp.train.trainer_runtime``, ``numNodes`` nodes with ``gpus``
processes each), streams the log of node 0, waits for the job to finish and copies the
checkpoints back.

With ``kfp.train.workspace_uri`` (``s3://...``) and the data sharded in S3 there is no volume:
the inputs (params, the ingest folder, which then holds just the manifest and the shard index,
and splits.csv) go under ``<workspace_uri>/<job>/``, every node fetches them with ``carinspect
data pull`` and streams the shards from the bucket, and node 0 pushes the checkpoints back
with ``carinspect data push``. Object store credentials reach the nodes from
``kfp.data_secret``, MLflow's from ``kfp.mlflow_secret``.

The TrainJob is built from kubeflow-trainer-api's typed models (the Trainer v2.3 API). Pod
settings (node selector, tolerations, the workspace volume, /dev/shm) go through
``runtimePatches`` on the runtime's ``node`` replicated job: Trainer v2.2 removed
``podTemplateOverrides``. The object is sent with ``fieldValidation=Strict``, so an API server
refuses a field it does not know instead of dropping it (the client's default, Warn, would
create a job without its node selector). The Kubeflow SDK's TrainerClient streams the log and
waits for the outcome; it creates jobs without strict validation, so creation stays here.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from carinspect.config import DATA_SECRET_KEYS, KfpConfig, Params, Settings
from carinspect.contracts.folders import SplitDir
from carinspect.data.storage.objects import download_tree, remove_tree, upload_tree
from carinspect.data.storage.store import ShardStore, open_store
from carinspect.errors import InputError

logger = logging.getLogger(__name__)

API_GROUP = "trainer.kubeflow.org"
API_VERSION = "v1alpha1"
PLURAL = "trainjobs"
WORKSPACE = "/workspace"
NODE_LOCAL = "/tmp/carinspect"  # a node's copy of the inputs when the workspace is in S3
NODE_JOB = "node"  # the replicated job (and its container) of the torch runtime that trains
PATCH_MANAGER = "carinspect/train-task"  # owner of our runtime patch (patches are keyed by it)


class TrainJobError(RuntimeError):
    """The TrainJob failed or could not be followed."""


def job_name(run_name: str) -> str:
    """A DNS-1123 name (63 characters at most) for the TrainJob of a pipeline run."""
    name = re.sub(r"[^a-z0-9-]+", "-", run_name.lower()).strip("-")
    return (f"carinspect-{name}" if name else "carinspect-train")[:63].rstrip("-")


def trainjob(name: str, kfp: KfpConfig, command: list[str], env: list[dict[str, Any]]) -> Any:
    """The TrainJob (a kubeflow-trainer-api model): ``kfp.train.nodes`` nodes run ``command``."""
    from kubeflow_trainer_api import models as m

    cfg = kfp.train
    if cfg.nodes < 2:
        raise InputError(
            f"kfp.train.nodes={cfg.nodes}: a TrainJob is for more than one node "
            "(set kfp.train.nodes, or --param kfp.train.nodes=2)"
        )
    amounts: dict[str, Any] = {"cpu": cfg.cpu, "memory": cfg.memory}
    if cfg.gpus:
        amounts[cfg.accelerator] = str(cfg.gpus)
    node_patch = _node_patch(kfp)
    return m.TrainerV1alpha1TrainJob(
        apiVersion=f"{API_GROUP}/{API_VERSION}",
        kind="TrainJob",
        metadata=m.IoK8sApimachineryPkgApisMetaV1ObjectMeta(
            name=name,
            namespace=cfg.namespace,
            labels={
                "app.kubernetes.io/part-of": "carinspect",
                "app.kubernetes.io/component": "train",
            },
        ),
        spec=m.TrainerV1alpha1TrainJobSpec(
            runtimeRef=m.TrainerV1alpha1RuntimeRef(
                name=cfg.trainer_runtime, apiGroup=API_GROUP, kind="ClusterTrainingRuntime"
            ),
            trainer=m.TrainerV1alpha1Trainer(
                image=cfg.image,
                command=command,
                numNodes=cfg.nodes,
                # Trainer v2.2 dropped numProcPerNode from the torch runtime's policy (#3239);
                # on the TrainJob it remains: torchrun's --nproc-per-node on every node
                numProcPerNode=max(cfg.gpus, 1),
                resourcesPerNode=m.IoK8sApiCoreV1ResourceRequirements.from_dict(
                    {"requests": amounts, "limits": amounts}
                ),
                env=[m.IoK8sApiCoreV1EnvVar.from_dict(e) for e in env],
            ),
            runtimePatches=[
                m.TrainerV1alpha1RuntimePatch(
                    manager=PATCH_MANAGER,
                    trainingRuntimeSpec=m.TrainerV1alpha1TrainingRuntimeSpecPatch(
                        template=m.TrainerV1alpha1JobSetTemplatePatch(
                            spec=m.TrainerV1alpha1JobSetSpecPatch(replicatedJobs=[node_patch])
                        )
                    ),
                )
            ],
        ),
    )


def _node_patch(kfp: KfpConfig) -> Any:
    """The node pods' patch: placement (selector, tolerations), /dev/shm and the workspace."""
    from kubeflow_trainer_api import models as m

    cfg = kfp.train
    volumes = [
        m.IoK8sApiCoreV1Volume.from_dict(
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": cfg.shm_size}}
        )
    ]
    mounts = [m.IoK8sApiCoreV1VolumeMount(name="dshm", mountPath="/dev/shm")]
    if not cfg.workspace_uri:  # the inputs and outputs are on a shared volume
        claim = {"claimName": cfg.workspace_pvc}
        volumes.insert(
            0,
            m.IoK8sApiCoreV1Volume.from_dict({"name": "workspace", "persistentVolumeClaim": claim}),
        )
        mounts.insert(0, m.IoK8sApiCoreV1VolumeMount(name="workspace", mountPath=WORKSPACE))
    pod = m.TrainerV1alpha1PodSpecPatch(
        nodeSelector=dict(cfg.node_selector) or None,
        tolerations=[
            m.IoK8sApiCoreV1Toleration.from_dict(t.model_dump(exclude_none=True))
            for t in cfg.tolerations
        ]
        or None,
        volumes=volumes,
        containers=[m.TrainerV1alpha1ContainerPatch(name=NODE_JOB, volumeMounts=mounts)],
    )
    node_patch = m.TrainerV1alpha1ReplicatedJobPatch(
        name=NODE_JOB,
        template=m.TrainerV1alpha1JobTemplatePatch(
            spec=m.TrainerV1alpha1JobSpecPatch(template=m.TrainerV1alpha1PodTemplatePatch(spec=pod))
        ),
    )
    return node_patch


def manifest(
    name: str, kfp: KfpConfig, command: list[str], env: list[dict[str, Any]]
) -> dict[str, Any]:
    """The TrainJob as the API server receives it (checked to hold only known fields)."""
    body: dict[str, Any] = trainjob(name, kfp, command, env).to_dict()
    check_known_fields(body)
    return body


def unknown_fields(body: Any, model: Any = None, path: str = "") -> list[str]:
    """Fields of ``body`` that ``model`` (default: the TrainJob model) does not know.

    The typed models drop what they do not know when they read a dict; comparing the round
    trip with the original finds every such field, at any depth.
    """
    if model is None:
        from kubeflow_trainer_api.models import TrainerV1alpha1TrainJob

        model = TrainerV1alpha1TrainJob
    return _missing(body, model.from_dict(body).to_dict(), path)


def _missing(sent: Any, kept: Any, path: str) -> list[str]:
    """Paths of ``sent`` that are absent from ``kept`` (its round trip through a model)."""
    out: list[str] = []
    if isinstance(sent, dict):
        kept = kept if isinstance(kept, dict) else {}
        for key, value in sent.items():
            where = f"{path}.{key}" if path else key
            out += [where] if key not in kept else _missing(value, kept[key], where)
    elif isinstance(sent, list):
        kept = kept if isinstance(kept, list) else []
        for i, value in enumerate(sent):
            out += _missing(value, kept[i] if i < len(kept) else None, f"{path}[{i}]")
    return out


def check_known_fields(body: dict[str, Any], model: Any = None) -> None:
    """Refuse an object with a field the typed model does not know (what Strict would refuse)."""
    unknown = unknown_fields(body, model)
    if unknown:
        kind = body.get("kind", "object")
        raise TrainJobError(f"{kind} has fields the Trainer API does not know: {unknown}")


def create(client: Any, body: dict[str, Any]) -> None:
    """Create ``body`` through the SDK's API client, with strict field validation."""
    from kubernetes.client.exceptions import ApiException

    ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
    try:
        client.backend.custom_api.create_namespaced_custom_object(
            API_GROUP, API_VERSION, ns, PLURAL, body, field_validation="Strict"
        )
    except ApiException as err:
        raise TrainJobError(
            f"cannot create TrainJob {ns}/{name}: {err.status} {err.reason}: {err.body}"
        ) from err


def run_trainjob(
    body: dict[str, Any],
    *,
    poll_s: int = 10,
    timeout_s: int = 7 * 24 * 3600,
    log: Callable[[str], None] = logger.info,
) -> None:
    """Create ``body`` (from :func:`manifest`), stream node 0's log, wait for the outcome.

    Uses the pod's service account in a cluster (kubeconfig elsewhere); k8s/kubeflow/ grants
    what it needs: trainjobs, the runtimes they reference, pods and their logs. A Failed job
    raises.
    """
    from kubeflow.trainer import KubernetesBackendConfig, TrainerClient

    ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
    # KUBECONFIG as it is now (the kubernetes client reads it once, at import); in a pod
    # without it, the SDK uses the service account
    config = KubernetesBackendConfig(namespace=ns, config_file=os.environ.get("KUBECONFIG"))
    client = TrainerClient(config)
    create(client, body)
    log(f"TrainJob {ns}/{name}: {body['spec']['trainer']['numNodes']} nodes created")
    done = {"Complete", "Failed"}
    job = client.wait_for_job_status(
        name, {"Running", *done}, timeout=timeout_s, polling_interval=poll_s
    )
    running = job.status == "Running"  # follow the log; a job already over: read what is left
    for line in client.get_job_logs(name, step=f"{NODE_JOB}-0", follow=running):
        log(line.rstrip("\n"))
    if running:
        job = client.wait_for_job_status(name, done, timeout=timeout_s, polling_interval=poll_s)
    if job.status == "Failed":
        raise TrainJobError(
            f"TrainJob {ns}/{name} failed: kubectl -n {ns} describe trainjob {name}"
        )
    log(f"TrainJob {ns}/{name} complete")


def node_command(workspace: Path) -> list[str]:
    """What every node runs: `carinspect train` under torchrun (PET_* env from the runtime)."""
    return [
        "torchrun", "--no-python", "carinspect", "train",
        "--params", str(workspace / "params.yaml"),
        "--ingest", str(workspace / "ingest"),
        "--splits", str(SplitDir(workspace / "split").splits),
        "--out", str(workspace / "train"),
    ]  # fmt: skip


def node_script(uri: str) -> list[str]:
    """What every node runs when the workspace is the prefix ``uri``.

    Fetch the inputs, train under torchrun, and (node 0, where rank 0 wrote the checkpoints)
    push the outputs back.
    """
    local = Path(NODE_LOCAL)
    train = shlex.join(node_command(local))
    push = shlex.join(["carinspect", "data", "push", str(local / "train"), f"{uri}/train"])
    pull = shlex.join(["carinspect", "data", "pull", uri, str(local)])
    script = f'set -e; {pull}; {train}; if [ "${{PET_NODE_RANK:-0}}" = "0" ]; then {push}; fi'
    return ["sh", "-c", script]


def workspace_of(kfp: KfpConfig, name: str) -> str:
    """Where the TrainJob ``name`` keeps its inputs and outputs: a volume path or an s3:// URI."""
    if kfp.train.workspace_uri:
        return f"{kfp.train.workspace_uri.rstrip('/')}/{name}"
    return str(Path(WORKSPACE) / name)


def node_entry(kfp: KfpConfig, name: str) -> list[str]:
    """The command of every node of the TrainJob ``name``, for either kind of workspace."""
    where = workspace_of(kfp, name)
    return node_script(where) if kfp.train.workspace_uri else node_command(Path(where))


def node_env(cfg: KfpConfig, kfp_run_id: str) -> list[dict[str, Any]]:
    """The nodes' environment: the task's tracking URI and run id, credentials by reference.

    MLflow's and the object store's credentials come from their Secrets (both optional).
    """
    env: list[dict[str, Any]] = [
        {"name": "KFP_RUN_ID", "value": kfp_run_id},
        {"name": "NO_ALBUMENTATIONS_UPDATE", "value": "1"},
        {"name": "MLFLOW_TRACKING_URI", "value": os.environ.get("MLFLOW_TRACKING_URI", "")},
    ]
    refs = [
        (cfg.mlflow_secret, k) for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
    ]
    refs += [(cfg.data_secret, k) for k in DATA_SECRET_KEYS]
    for secret, key in refs:
        ref = {"name": secret, "key": key, "optional": True}
        env.append({"name": key, "valueFrom": {"secretKeyRef": ref}})
    return env


def node_params(params: Params, sections: tuple[str, ...]) -> str:
    """The params.yaml the nodes read: ``sections`` (those the train stage reads, its spec's)."""
    return yaml.safe_dump(params.model_dump(mode="json", include=set(sections)), sort_keys=False)


def train_on_nodes(
    params: Params,
    kfp: KfpConfig,
    data: Path,
    splits: Path,
    out: Path,
    settings: Settings,
    *,
    sections: tuple[str, ...],
    poll_s: int = 10,
) -> None:
    """Stage the inputs on the workspace (volume or S3), run the TrainJob, bring the outputs back.

    ``sections``: the params.yaml sections the nodes' ``carinspect train`` reads.
    """
    kfp_run_id = settings.kfp_run_id or ""
    name = job_name(kfp_run_id or "run")
    if kfp.train.workspace_uri:
        _train_from_s3(
            node_params(params, sections), kfp, data, splits, out, kfp_run_id, name, poll_s
        )
        return
    workspace = Path(WORKSPACE) / name
    if workspace.exists():
        shutil.rmtree(workspace)
    workspace.mkdir(parents=True)
    (workspace / "params.yaml").write_text(node_params(params, sections))
    shutil.copytree(data, workspace / "ingest")
    shutil.copytree(splits, workspace / "split")
    body = manifest(name, kfp, node_command(workspace), node_env(kfp, kfp_run_id))
    run_trainjob(body, poll_s=poll_s)
    shutil.copytree(workspace / "train", out, dirs_exist_ok=True)


def _train_from_s3(
    params_yaml: str,
    kfp: KfpConfig,
    data: Path,
    splits: Path,
    out: Path,
    kfp_run_id: str,
    name: str,
    poll_s: int,
) -> None:
    """The TrainJob with its workspace under ``kfp.train.workspace_uri``: no shared volume."""
    store = open_store(data)
    if not isinstance(store, ShardStore) or not store.uri.startswith("s3://"):
        where = store.uri if isinstance(store, ShardStore) else f"{data}/images (one file each)"
        raise InputError(
            f"kfp.train.workspace_uri {kfp.train.workspace_uri!r}: the nodes stream the images "
            f"from S3, but this ingest output keeps them in {where}; set data.format: shards "
            "and data.shards: s3://..., or use kfp.train.workspace_pvc"
        )
    uri = workspace_of(kfp, name)
    remove_tree(uri)  # what an earlier attempt of this run left
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp)
        (staged / "params.yaml").write_text(params_yaml)
        shutil.copytree(data, staged / "ingest")
        shutil.copytree(splits, staged / "split")
        sent = upload_tree(staged, uri)
    logger.info("TrainJob inputs: %d files under %s", sent, uri)
    body = manifest(name, kfp, node_entry(kfp, name), node_env(kfp, kfp_run_id))
    run_trainjob(body, poll_s=poll_s)
    download_tree(f"{uri}/train", out)
