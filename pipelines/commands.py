"""`carinspect pipeline compile | run --local | submit`: the pipeline from params.yaml."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import yaml

from carinspect.config import Params, parse_params, set_dotted
from carinspect.errors import InputError
from components import glue
from pipelines.sweep import SWEEP_FILE, build_sweep
from pipelines.training import PIPELINE_FILE, build

logger = logging.getLogger(__name__)
PIPELINE_INPUTS = ("data_source", "data_version", "data_feedback")


def split_overrides(pairs: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``k=v`` pairs -> (pipeline inputs, dotted params.yaml overrides); values parsed as YAML."""
    inputs: dict[str, Any] = {}
    overrides: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InputError(f"--param {pair!r}: expected key=value (e.g. train.epochs=3)")
        parsed = yaml.safe_load(value) if value else ""
        (inputs if key in PIPELINE_INPUTS else overrides)[key] = parsed
    if "data_source" in inputs:  # one source everywhere, the default data version included
        overrides["data.source"] = inputs["data_source"]
    return inputs, overrides


def load_with_overrides(params_path: Path, overrides: dict[str, Any]) -> Params:
    """params.yaml with dotted-key overrides applied, validated."""
    try:
        raw = yaml.safe_load(Path(params_path).read_text()) or {}
    except OSError as err:
        raise InputError(f"{params_path}: cannot read ({err})") from err
    for key, value in overrides.items():
        set_dotted(raw, key, value)
    return parse_params(raw, params_path)


def data_version(params: Params, root: Path) -> str:
    """A default data version: a dvc:// revision, the md5 dvc.lock records, or the demo's seed."""
    source = params.data.source
    if source == "demo":
        return f"demo:{params.data.demo.seed}:{params.data.demo.per_class}"
    if source.startswith("dvc://") and "@" in source:
        return source.split("@", 1)[1].split("#", 1)[0]
    lock = root / "dvc.lock"
    if lock.is_file():
        stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
        for stage in stages.values():
            for dep in stage.get("deps", []):
                if dep.get("path") == source and dep.get("md5"):
                    return str(dep["md5"])
            for out in stage.get("outs", []):
                if out.get("path") == source and out.get("md5"):
                    return str(out["md5"])
    raise InputError(
        f"data.source {source!r}: no data version found (no dvc.lock entry); pass "
        "--param data_version=<DVC revision or md5> so KFP's cache sees data changes"
    )


def feedback_revision(params: Params, root: Path, repo: str | None = None) -> str:
    """data.feedback as a pod reads it: ``dvc://<repo>@<commit>#<folder>``, or as given.

    A local folder tracked by ``photos.dvc`` is read at this checkout's commit (``repo``: where a
    pod finds the repository, default this checkout), as `dvc repro` reads it here; its
    photos.dvc must be committed. A folder with no photos.dvc yet (nothing reviewed) is none.
    """
    import subprocess

    folder = params.data.feedback
    if not folder or folder.startswith(("dvc://", "s3://")):
        return folder
    tracked = root / folder / "photos.dvc"
    if not tracked.is_file():
        return ""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise InputError(
                f"data.feedback {folder!r}: git {' '.join(args)}: {done.stderr.strip()}"
            )
        return done.stdout.strip()

    if git("status", "--porcelain", "--", str(tracked.relative_to(root))):
        raise InputError(
            f"data.feedback: {tracked.relative_to(root)} has changes not committed: commit it "
            "(the pipeline reads the feedback revision of a commit), or pass --param data_feedback="
        )
    return f"dvc://{repo or root.resolve()}@{git('rev-parse', 'HEAD')}#{folder.strip('/')}"


def _pipeline(params: Params, sweep: bool) -> Any:
    """The training pipeline, or the sweep pipeline, for ``params``."""
    return build_sweep(params) if sweep else build(params)


def compile_pipeline(params_path: Path, out: Path, sweep: bool = False) -> Path:
    """Write the pipeline YAML for params.yaml.

    The committed files are pipelines/training_pipeline.yaml and pipelines/sweep_pipeline.yaml.
    """
    from kfp import compiler

    params = load_with_overrides(params_path, {})
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp.yaml")  # KFP insists on the .yaml ending
    compiler.Compiler().compile(_pipeline(params, sweep), str(tmp))
    tmp.replace(out)
    return out


# what a task container gets from the host's environment under the docker runner (in a cluster
# the pipeline puts them there from the MLflow ConfigMap and Secret)
DOCKER_ENV = (
    "MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL",
    "AWS_DEFAULT_REGION", "MLFLOW_S3_ENDPOINT_URL",
)  # fmt: skip


def _docker_runner() -> Any:
    """kfp.local's DockerRunner: each task in its image, seeing only the pipeline root.

    Host networking, so a task reaches an MLflow server on the host's 127.0.0.1 as the host
    does. The tracking store must be a server: a sqlite:// or file path of the host is not in
    the container.
    """
    import os

    from kfp import local

    env = {k: os.environ[k] for k in DOCKER_ENV if os.environ.get(k)}
    uri = env.get("MLFLOW_TRACKING_URI", "")
    if not uri.startswith(("http://", "https://")):
        raise InputError(
            f"MLFLOW_TRACKING_URI {uri or '(unset)'!r}: the docker runner's tasks reach MLflow "
            "over HTTP; start a server (mlflow/local.sh) and set MLFLOW_TRACKING_URI to it"
        )
    return local.DockerRunner(network_mode="host", environment=env)


def _writable_root(pipeline_root: Path) -> None:
    """The pipeline root, made writable by the image's non-root user (uid 10001).

    The docker runner mounts it into every task; the tasks write their outputs there as the
    image's user, as they do in a cluster. World-writable and sticky, like /tmp.
    """
    pipeline_root.mkdir(parents=True, exist_ok=True)
    pipeline_root.chmod(0o1777)


def run_local(
    params_path: Path,
    pairs: list[str],
    root: Path,
    pipeline_root: Path,
    sweep: bool = False,
    runner: str = "subprocess",
) -> str:
    """Run the whole pipeline with kfp.local; returns the registered model URI.

    ``runner``: ``subprocess`` runs each task in this environment; ``docker`` runs each in its
    image (params ``kfp.image``, ``kfp.train.image``) with only its inputs and the pipeline root.
    """
    from kfp import local

    inputs, overrides = split_overrides(pairs)
    params = load_with_overrides(params_path, overrides)
    inputs.setdefault("data_version", data_version(params, root))
    inputs.setdefault("data_feedback", feedback_revision(params, root))
    if runner == "docker":
        task_runner = _docker_runner()
        pipeline_root = pipeline_root.absolute()  # the runner mounts it at the same path
        _writable_root(pipeline_root)
    elif runner == "subprocess":
        task_runner = local.SubprocessRunner(use_venv=False)  # the project's environment
    else:
        raise InputError(f"--runner {runner!r}: expected subprocess or docker")
    local.init(runner=task_runner, pipeline_root=str(pipeline_root), raise_on_error=True)
    result = _pipeline(params, sweep)(**inputs, **glue.section_texts(params, sweep))
    return str(result.output)


def submit(
    host: str,
    params_path: Path,
    pairs: list[str],
    root: Path,
    experiment: str | None,
    run_name: str | None,
    sweep: bool = False,
) -> str:
    """Compile and submit a run to Kubeflow Pipelines at ``host``; returns the run id."""
    import tempfile

    import kfp

    inputs, overrides = split_overrides(pairs)
    params = load_with_overrides(params_path, overrides)
    inputs.setdefault("data_version", data_version(params, root))
    if "data_feedback" not in inputs and params.data.feedback:
        import subprocess

        origin = subprocess.run(["git", "remote", "get-url", "origin"], cwd=root,
                                capture_output=True, text=True, check=False).stdout.strip()  # fmt: skip
        found = feedback_revision(params, root, origin or "-")
        if found.startswith("dvc://-@"):
            raise InputError(
                f"data.feedback {params.data.feedback!r}: this checkout has no git remote origin "
                "for the cluster to read the feedback revision from: set one (and push), or pass "
                "--param data_feedback=dvc://<repo>@<rev>#<folder>"
            )
        inputs["data_feedback"] = found
    with tempfile.TemporaryDirectory() as tmp:
        package = Path(tmp) / "pipeline.yaml"
        from kfp import compiler

        compiler.Compiler().compile(_pipeline(params, sweep), str(package))
        client = kfp.Client(host=host)
        run = client.create_run_from_pipeline_package(
            str(package),
            arguments={**inputs, **glue.section_texts(params, sweep)},
            experiment_name=experiment or params.kfp.pipeline_name,
            run_name=run_name,
        )
    return str(run.run_id)


def trainjob_yaml(params_path: Path, pairs: list[str], run_id: str) -> str:
    """The TrainJob the train task would create for ``run_id``, as YAML (nothing is sent)."""
    from carinspect.training.trainjob import job_name, manifest, node_entry, node_env

    _, overrides = split_overrides(pairs)
    kfp = load_with_overrides(params_path, overrides).kfp
    name = job_name(run_id)
    body = manifest(name, kfp, node_entry(kfp, name), node_env(kfp, run_id))
    return yaml.safe_dump(body, sort_keys=False)


__all__ = [
    "PIPELINE_FILE",
    "SWEEP_FILE",
    "compile_pipeline",
    "data_version",
    "run_local",
    "submit",
    "trainjob_yaml",
]
