"""A Kubernetes API on 127.0.0.1 that plays Kubeflow Trainer v2.3 for the TrainJob tests.

No cluster can be reached here, so this stands in for the kube-apiserver and the Trainer
controller: it answers the requests the real kubernetes client and the Kubeflow SDK make (create
a TrainJob, read it and its ClusterTrainingRuntime, list its pods, stream node 0's log) with
objects shaped like the real ones. Like an API server with ``fieldValidation=Strict`` it refuses
a TrainJob with a field Trainer v2.3 does not know. Its "controller" runs each node's command as
a local process (the runtime's PET_* environment, one node), so a job does what it would do in a
cluster, on this machine.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from carinspect.training.trainjob import unknown_fields

NOW = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
RUNTIME = {
    "apiVersion": "trainer.kubeflow.org/v1alpha1",
    "kind": "ClusterTrainingRuntime",
    "metadata": {"name": "torch-distributed", "labels": {"trainer.kubeflow.org/framework": "torch"}},
    "spec": {
        "mlPolicy": {"numNodes": 1, "torch": {}},
        "template": {"spec": {"replicatedJobs": [{
            "name": "node", "replicas": 1,
            "template": {
                "metadata": {"labels": {"trainer.kubeflow.org/trainjob-ancestor-step": "trainer"}},
                "spec": {"template": {"spec": {"containers": [
                    {"name": "node", "image": "pytorch/pytorch:2.7.1-cuda12.8-cudnn9-runtime"}
                ]}}},
            },
        }]}},
    },
}  # fmt: skip


@dataclass
class Job:
    """A created TrainJob, its node 0 process and what it printed."""

    body: dict[str, Any]
    query: dict[str, list[str]]
    log: list[str] = field(default_factory=list)
    returncode: int | None = None
    done: threading.Event = field(default_factory=threading.Event)


@dataclass
class Cluster:
    """The fake API's state: created jobs, and how a node runs its command."""

    url: str
    jobs: dict[str, Job] = field(default_factory=dict)
    run_node: Callable[[dict[str, Any], dict[str, str]], subprocess.Popen[str]] | None = None


def _pod(job: Job, index: int) -> dict[str, Any]:
    name = job.body["metadata"]["name"]
    trainer = job.body["spec"]["trainer"]
    phase = (
        "Running" if not job.done.is_set() else ("Succeeded" if job.returncode == 0 else "Failed")
    )
    return {
        "metadata": {
            "name": f"{name}-node-0-{index}",
            "namespace": job.body["metadata"]["namespace"],
            "creationTimestamp": NOW,
            "labels": {
                "jobset.sigs.k8s.io/jobset-name": name,
                "jobset.sigs.k8s.io/replicatedjob-name": "node",
                "batch.kubernetes.io/job-completion-index": str(index),
            },
        },
        "spec": {
            "containers": [
                {
                    "name": "node",
                    "image": trainer["image"],
                    "resources": trainer["resourcesPerNode"],
                }
            ]
        },
        "status": {"phase": phase},
    }


def _with_status(job: Job) -> dict[str, Any]:
    obj = json.loads(json.dumps(job.body))
    obj["metadata"].setdefault("creationTimestamp", NOW)
    if job.done.is_set():
        kind = "Complete" if job.returncode == 0 else "Failed"
        obj["status"] = {"conditions": [{
            "type": kind, "status": "True", "reason": kind, "message": f"node 0 exited {job.returncode}",
            "lastTransitionTime": NOW,
        }]}  # fmt: skip
    return obj


def _start(cluster: Cluster, job: Job) -> None:
    """The controller: run node 0's command with the torch runtime's environment."""
    trainer = job.body["spec"]["trainer"]
    env = {e["name"]: e.get("value", "") for e in trainer.get("env", []) if "value" in e}
    env.update({"PET_NNODES": "1", "PET_NPROC_PER_NODE": str(trainer.get("numProcPerNode", 1)),
                "PET_NODE_RANK": "0", "PET_MASTER_ADDR": "127.0.0.1",
                "PET_MASTER_PORT": str(_free_port())})  # fmt: skip
    assert cluster.run_node is not None
    proc = cluster.run_node(trainer, env)

    def follow() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            job.log.append(line.rstrip("\n"))
        job.returncode = proc.wait()
        job.done.set()

    threading.Thread(target=follow, daemon=True).start()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _handler(cluster: Cluster) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # quiet
            pass

        def _json(self, status: int, obj: dict[str, Any]) -> None:
            data = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _not_found(self) -> None:
            self._json(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                             "reason": "NotFound", "code": 404, "message": f"{self.path} not found"})  # fmt: skip

        def do_POST(self) -> None:
            url = urlparse(self.path)
            m = re.fullmatch(
                r"/apis/trainer\.kubeflow\.org/v1alpha1/namespaces/([^/]+)/trainjobs", url.path
            )
            if not m:
                return self._not_found()
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            query = parse_qs(url.query)
            unknown = unknown_fields(body)
            if query.get("fieldValidation") == ["Strict"] and unknown:
                message = "; ".join(f'unknown field "{f}"' for f in unknown)
                return self._json(400, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                        "reason": "BadRequest", "code": 400,
                                        "message": f"TrainJob in version \"v1alpha1\" cannot be handled as a TrainJob: strict decoding error: {message}"})  # fmt: skip
            job = Job(body, query)
            cluster.jobs[body["metadata"]["name"]] = job
            _start(cluster, job)
            self._json(201, body)

        def do_GET(self) -> None:
            url = urlparse(self.path)
            path, query = url.path, parse_qs(url.query)
            if path == "/api/v1/namespaces/kubeflow-system/configmaps/kubeflow-trainer-public":
                return self._json(200, {"kind": "ConfigMap", "apiVersion": "v1",
                                        "metadata": {"name": "kubeflow-trainer-public"},
                                        "data": {"kubeflow_trainer_version": "v2.3.0"}})  # fmt: skip
            if (
                path
                == "/apis/trainer.kubeflow.org/v1alpha1/clustertrainingruntimes/torch-distributed"
            ):
                return self._json(200, RUNTIME)
            m = re.fullmatch(
                r"/apis/trainer\.kubeflow\.org/v1alpha1/namespaces/[^/]+/trainjobs/([^/]+)", path
            )
            if m and m.group(1) in cluster.jobs:
                return self._json(200, _with_status(cluster.jobs[m.group(1)]))
            m = re.fullmatch(r"/api/v1/namespaces/([^/]+)/pods", path)
            if m:
                selector = query.get("labelSelector", [""])[0]
                name = re.match(r"jobset\.sigs\.k8s\.io/jobset-name=([^,]+)", selector)
                job = cluster.jobs.get(name.group(1)) if name else None
                items = (
                    [_pod(job, i) for i in range(job.body["spec"]["trainer"]["numNodes"])]
                    if job
                    else []
                )
                return self._json(200, {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items})  # fmt: skip
            m = re.fullmatch(r"/api/v1/namespaces/[^/]+/pods/(.+)-node-0-0/log", path)
            if m and m.group(1) in cluster.jobs:
                # the Python client sends follow=True; the API server parses bools like Go does
                follow = query.get("follow", [""])[0].lower() in {"true", "1", "t"}
                return self._stream_log(cluster.jobs[m.group(1)], follow)
            return self._not_found()

        def _stream_log(self, job: Job, follow: bool) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Connection", "close")
            self.end_headers()
            sent = 0
            while True:
                finished = job.done.is_set()
                for line in job.log[sent:]:
                    self.wfile.write((line + "\n").encode())
                    sent += 1
                self.wfile.flush()
                if finished or not follow:
                    break
                job.done.wait(0.1)
            self.close_connection = True

    return Handler


@contextmanager
def kube_api(tmp: Path) -> Iterator[Cluster]:
    """Serve the fake API and point KUBECONFIG at it for the duration."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(cluster := Cluster("")))
    cluster.url = f"http://127.0.0.1:{server.server_address[1]}"
    config = tmp / "kubeconfig"
    config.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": cluster.url}}],
        "users": [{"name": "fake", "user": {"token": "t"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": "kubeflow"}}],
    }))  # fmt: skip
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    saved = os.environ.get("KUBECONFIG")
    os.environ["KUBECONFIG"] = str(config)
    try:
        yield cluster
    finally:
        server.shutdown()
        server.server_close()
        if saved is None:
            os.environ.pop("KUBECONFIG", None)
        else:
            os.environ["KUBECONFIG"] = saved
