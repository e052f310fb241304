"""k8s/: every overlay renders (kubectl kustomize), validates strictly, and matches the app."""

import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from carinspect.config import load_params
from carinspect.serving.settings import ServeSettings
from carinspect.training.trainjob import manifest, node_command, node_env
from tests.conftest import REPO_ROOT

K8S_VERSION = "1.32.0"  # the Kubernetes API the manifests are written for
TARGETS = [
    "base",
    "mlflow",
    "kubeflow",
    "overlays/local",
    "overlays/gpu",
    "overlays/prod",
]  # + kserve, below
SERVING_TARGETS = ["base", "overlays/local", "overlays/gpu", "overlays/prod"]
WORKLOADS = {"Deployment", "StatefulSet", "Job", "DaemonSet"}
# read by the MLflow client inside the app rather than by ServeSettings
MLFLOW_CLIENT_ENV = {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"}


@cache
def render(target: str) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not found (apt-get install kubernetes-client)")
    done = subprocess.run(
        [kubectl, "kustomize", str(REPO_ROOT / "k8s" / target)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def pod_specs(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for d in docs:
        if d["kind"] in WORKLOADS:
            out.append((f"{d['kind']}/{d['metadata']['name']}", d["spec"]["template"]["spec"]))
    return out


# Prometheus Operator's objects: validated against the operator's schemas (test_monitoring.py)
OPERATOR_GROUP = "monitoring.coreos.com/"


@pytest.mark.parametrize("target", TARGETS)
def test_renders_and_validates_strictly(target: str) -> None:
    docs = render(target)
    assert docs
    for doc in docs:
        if not doc["apiVersion"].startswith(OPERATOR_GROUP):
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.parametrize("target", TARGETS)
def test_every_container_has_resources_probes_pinned_image_and_runs_as_non_root(
    target: str,
) -> None:
    for name, pod in pod_specs(render(target)):
        ctx = pod.get("securityContext", {})
        assert ctx.get("runAsNonRoot") is True and ctx.get("runAsUser", 0) != 0, name
        for c in pod["containers"]:
            where = f"{name}/{c['name']}"
            res = c.get("resources", {})
            assert res.get("requests") and res.get("limits"), f"{where}: requests and limits"
            assert {"cpu", "memory"} <= res["limits"].keys(), where
            image = c["image"]
            assert "@sha256:" in image or (
                ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest")
            ), where
            sc = c.get("securityContext", {})
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert sc.get("readOnlyRootFilesystem") is True, where
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], where
            if not name.startswith("Job/"):
                assert c.get("livenessProbe") and c.get("readinessProbe"), f"{where}: probes"


def _serving(target: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    docs = render(target)
    deployment = next(
        d
        for d in docs
        if d["kind"] == "Deployment" and d["metadata"]["name"] == "carinspect-serving"
    )
    return docs, deployment["spec"]["template"]["spec"]["containers"][0]


def _paths(routes: list[Any]) -> set[str]:
    """Every route's path, through the routers the app includes (FastAPI keeps those as such)."""
    found: set[str] = set()
    for route in routes:
        if hasattr(route, "path"):
            found.add(route.path)
        elif hasattr(route, "original_router"):
            found |= _paths(route.original_router.routes)
    return found


@pytest.mark.parametrize("target", SERVING_TARGETS)
def test_probes_point_at_routes_and_the_port_the_app_serves(target: str) -> None:
    from carinspect.serving.app import create_app

    app = create_app(ServeSettings(MODEL_URI="/nonexistent"))
    routes = _paths(app.routes)
    _, c = _serving(target)
    port = int(c["args"][c["args"].index("--port") + 1])
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["http"] == port
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        get = c[probe]["httpGet"]
        assert get["path"] in routes, (probe, get["path"])
        assert ports.get(get["port"], get["port"]) == port
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"


@pytest.mark.parametrize("target", SERVING_TARGETS)
def test_every_env_var_is_a_setting_the_app_reads(target: str) -> None:
    known = {
        str(f.validation_alias) for f in ServeSettings.model_fields.values()
    } | MLFLOW_CLIENT_ENV
    docs, c = _serving(target)
    names = {e["name"] for e in c.get("env", [])}
    for source in c.get("envFrom", []):
        ref = source.get("configMapRef") or source.get("secretRef")
        found = [
            d
            for d in docs
            if d["kind"] in ("ConfigMap", "Secret") and d["metadata"]["name"] == ref["name"]
        ]
        for d in found:
            names |= set((d.get("data") or {}).keys()) | set((d.get("stringData") or {}).keys())
    assert names, "no settings found"
    assert names <= known, f"not read by the app: {sorted(names - known)}"
    mapped = next(s["configMapRef"]["name"] for s in c["envFrom"] if "configMapRef" in s)
    config = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == mapped)
    assert config["data"]["MODEL_URI"].endswith("@champion")
    ServeSettings.model_validate(config["data"])  # the values parse as the app would read them


def test_gpu_overlay_requests_a_gpu_on_the_gpu_pool() -> None:
    docs, c = _serving("overlays/gpu")
    pod = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    assert c["image"] == "ghcr.io/carinspect/carinspect-gpu:0.1.0"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    config = next(d for d in docs if d["kind"] == "ConfigMap")
    assert config["data"]["ORT_PROVIDERS"].startswith("CUDAExecutionProvider")


def test_prod_overlay_bounds() -> None:
    docs = render("overlays/prod")
    by_kind = {d["kind"]: d for d in docs}
    assert by_kind["Deployment"]["spec"]["replicas"] == 3
    assert (
        by_kind["HorizontalPodAutoscaler"]["spec"]["minReplicas"],
        by_kind["HorizontalPodAutoscaler"]["spec"]["maxReplicas"],
    ) == (3, 20)
    assert by_kind["PodDisruptionBudget"]["spec"]["minAvailable"] == 2


def test_mlflow_accepts_in_cluster_hosts_and_upgrades_the_schema() -> None:
    docs = render("overlays/local")
    mlflow = next(
        d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "mlflow"
    )
    env = {e["name"]: e for e in mlflow["spec"]["template"]["spec"]["containers"][0]["env"]}
    hosts = env["MLFLOW_SERVER_ALLOWED_HOSTS"]["value"].split(",")
    assert "mlflow:*" in hosts and "mlflow.*.svc.cluster.local:*" in hosts
    job = next(
        d for d in docs if d["kind"] == "Job" and d["metadata"]["name"] == "mlflow-db-upgrade"
    )
    assert job["spec"]["template"]["spec"]["containers"][0]["command"][:3] == [
        "mlflow",
        "db",
        "upgrade",
    ]
    serving_uri = next(d for d in docs if d["kind"] == "ConfigMap")["data"]["MLFLOW_TRACKING_URI"]
    service = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "mlflow")
    assert serving_uri == f"http://mlflow:{service['spec']['ports'][0]['port']}"


def test_trainjob_pod_settings_are_valid_kubernetes() -> None:
    """The TrainJob is a CRD (kubernetes-validate only warns): check its pod parts as a Pod."""
    kfp = load_params(REPO_ROOT / "params.yaml").kfp
    kfp = kfp.model_copy(update={"train": kfp.train.model_copy(update={"nodes": 2, "gpus": 2})})
    body = manifest("carinspect-x", kfp, node_command(Path("/workspace/x")), node_env(kfp, "r"))
    trainer = body["spec"]["trainer"]
    patch = body["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]
    override = patch["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "node-0"},
        "spec": {
            "nodeSelector": override["nodeSelector"],
            "tolerations": override["tolerations"],
            "volumes": override["volumes"],
            "containers": [
                {
                    "name": "node",
                    "image": trainer["image"],
                    "command": trainer["command"],
                    "env": trainer["env"],
                    "resources": trainer["resourcesPerNode"],
                    "volumeMounts": override["containers"][0]["volumeMounts"],
                }
            ],
        },
    }
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)


def grants(docs: list[dict[str, Any]], kind: str, name: str) -> dict[tuple[str, str], set[str]]:
    """(apiGroup, resource) -> verbs of one Role or ClusterRole."""
    role = next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)
    out: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


def test_kubeflow_target_lets_the_train_task_run_trainjobs() -> None:
    """The rights run_trainjob uses (create strictly, follow through the SDK), for its account."""
    docs = render("kubeflow")
    train = load_params(REPO_ROOT / "params.yaml").kfp.train
    role = grants(docs, "Role", "carinspect-trainjobs")
    assert {"create", "get", "watch", "delete"} <= role[("trainer.kubeflow.org", "trainjobs")]
    assert {"get", "list"} <= role[("", "pods")] and "get" in role[("", "pods/log")]
    assert "get" in role[("trainer.kubeflow.org", "trainingruntimes")]
    cluster = grants(docs, "ClusterRole", "carinspect-training-runtimes")
    assert "get" in cluster[("trainer.kubeflow.org", "clustertrainingruntimes")]
    for binding in (d for d in docs if d["kind"] in {"RoleBinding", "ClusterRoleBinding"}):
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "pipeline-runner", "namespace": train.namespace}
        ]
    roles = {(d["kind"], d["metadata"]["name"]) for d in docs if d["kind"].endswith("Role")}
    for binding in (d for d in docs if d["kind"].endswith("RoleBinding")):
        assert (binding["roleRef"]["kind"], binding["roleRef"]["name"]) in roles
    (pvc,) = [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
    assert pvc["metadata"]["name"] == train.workspace_pvc
    assert pvc["metadata"]["namespace"] == train.namespace
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]  # every node mounts it
    trainjob_role = next(d for d in docs if d["metadata"]["name"] == "carinspect-trainjobs")
    assert trainjob_role["metadata"]["namespace"] == train.namespace


def _kserve_models() -> Any:
    """kserve.models from the SDK env.sh puts in <venv>/kserve-sdk (typed models only)."""
    import importlib
    import sys
    import types

    root = Path(sys.prefix) / "kserve-sdk" / "kserve"
    if not root.is_dir():
        pytest.skip(f"{root} missing: scripts/env.sh installs KServe's SDK there")
    if "kserve" not in sys.modules:  # its __init__ starts a model server stack: skip it
        package = types.ModuleType("kserve")
        package.__path__ = [str(root)]
        sys.modules["kserve"] = package
    return importlib.import_module("kserve.models")


def check_typed(value: Any, kind: str, where: str, kserve: Any) -> None:
    """``value`` against an OpenAPI-generated type (KServe's or Kubernetes'): unknown keys fail."""
    import datetime

    import kubernetes.client

    if kind.startswith("list["):
        assert isinstance(value, list), f"{where}: expected a list"
        for i, item in enumerate(value):
            check_typed(item, kind[5:-1], f"{where}[{i}]", kserve)
        return
    if kind.startswith("dict("):
        assert isinstance(value, dict), f"{where}: expected a mapping"
        inner = kind[5:-1].split(", ", 1)[1]
        for key, item in value.items():
            check_typed(item, inner, f"{where}.{key}", kserve)
        return
    basic = {"str": str, "int": int, "bool": bool, "float": (int, float), "object": object,
             "datetime": (str, datetime.datetime)}  # fmt: skip
    if kind in basic:
        assert isinstance(value, basic[kind]), f"{where}: {value!r} is not {kind}"
        return
    cls = getattr(kserve, kind, None) or getattr(kubernetes.client, kind)
    assert isinstance(value, dict), f"{where}: expected a {kind} mapping"
    by_json = {json_key: attr for attr, json_key in cls.attribute_map.items()}
    unknown = sorted(set(value) - set(by_json))
    assert not unknown, f"{where}: {unknown} are not fields of {kind}"
    for key, item in value.items():
        check_typed(item, cls.openapi_types[by_json[key]], f"{where}.{key}", kserve)


def test_kserve_target_is_a_valid_triton_inferenceservice() -> None:
    """k8s/kserve: strictly typed against KServe's models, ONNX on Triton over protocol v2."""
    kserve = _kserve_models()
    docs = render("kserve")
    (isvc,) = [d for d in docs if d["kind"] == "InferenceService"]
    check_typed(isvc, "V1beta1InferenceService", "InferenceService", kserve)
    with pytest.raises(AssertionError, match="not fields of V1beta1ModelSpec"):  # it can fail
        bad = {**isvc["spec"]["predictor"]["model"], "protocol": "v2"}
        check_typed(bad, "V1beta1ModelSpec", "model", kserve)
    for doc in docs:
        if doc["kind"] != "InferenceService":
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    predictor = isvc["spec"]["predictor"]
    model = predictor["model"]
    assert model["modelFormat"]["name"] == "onnx" and model["protocolVersion"] == "v2"
    assert model["runtime"] == "kserve-tritonserver"
    assert model["resources"]["limits"]["nvidia.com/gpu"] == "1"
    # the repository export-triton writes into the MLflow artifact bucket (k8s/mlflow)
    bucket_job = next(d for d in render("mlflow") if d["metadata"]["name"] == "mlflow-minio-bucket")
    bucket = bucket_job["spec"]["template"]["spec"]["containers"][0]["args"][0].split("store/")[-1]
    assert model["storageUri"].startswith(f"s3://{bucket}/")
    readme = (REPO_ROOT / "docs" / "triton.md").read_text()
    assert f"carinspect export-triton --out {model['storageUri']}" in readme
    (account,) = [d for d in docs if d["kind"] == "ServiceAccount"]
    assert predictor["serviceAccountName"] == account["metadata"]["name"]
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "predictor"}, "spec": {
        "serviceAccountName": predictor["serviceAccountName"],
        "nodeSelector": predictor["nodeSelector"], "tolerations": predictor["tolerations"],
        "containers": [{"name": "kserve-container", "image": "triton",
                        "resources": model["resources"]}],
    }}  # fmt: skip
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)


def test_the_rollout_cronjob_looks_once_a_minute_with_the_projects_rollout_params() -> None:
    docs = render("overlays/prod")
    (job,) = [d for d in docs if d["kind"] == "CronJob"]
    (params,) = [
        d
        for d in docs
        if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("carinspect-rollout")
    ]
    assert job["spec"]["concurrencyPolicy"] == "Forbid"
    pod = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["command"] + c["args"][:3] == ["carinspect", "rollout", "run", "--once"]
    mounted = {v["name"]: v for v in pod["volumes"]}
    assert mounted["params"]["configMap"]["name"] == params["metadata"]["name"]
    shipped = yaml.safe_load(params["data"]["params.yaml"])
    project = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    for section in ("register", "promote", "rollout"):
        assert shipped[section] == project[section], f"k8s/rollout/params.yaml: {section} differs"
    assert load_params(REPO_ROOT / "k8s" / "rollout" / "params.yaml").rollout == (
        load_params(REPO_ROOT / "params.yaml").rollout
    )  # and it loads as the CLI reads it
    # the serving pods' MLflow settings, by the name kustomize gave their ConfigMap
    _, serving = _serving("overlays/prod")
    mapped = next(s["configMapRef"]["name"] for s in serving["envFrom"] if "configMapRef" in s)
    ref = next(e for e in c["env"] if e["name"] == "MLFLOW_TRACKING_URI")
    assert ref["valueFrom"]["configMapKeyRef"]["name"] == mapped
    assert job["metadata"]["namespace"] == "carinspect"
