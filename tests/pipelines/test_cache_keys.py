"""The compiled pipeline, parsed strictly, keys KFP's cache on what each step really uses.

KFP v2 computes a task's cache key from its input parameter values, its input artifacts, its
output specs and its container (image, command, args, env, PVCs). So a cached task must not take
a run-unique value, and a parameter section must reach only the tasks that read it.
"""

from pathlib import Path
from typing import Any

import pytest
import yaml
from google.protobuf import json_format
from kfp.kubernetes import kubernetes_executor_config_pb2
from kfp.pipeline_spec import pipeline_spec_pb2

from carinspect.config import KfpConfig
from components.glue import SECTION_INPUTS
from pipelines.commands import compile_pipeline
from pipelines.training import PIPELINE_FILE
from tests.conftest import REPO_ROOT

UPSTREAM = ("ingest", "split", "train", "evaluate", "threshold")


def strict_docs(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Both documents of a compiled file, each checked against KFP's protobuf schema."""
    spec, platform = yaml.safe_load_all(path.read_text())
    json_format.ParseDict(spec, pipeline_spec_pb2.PipelineSpec(), ignore_unknown_fields=False)
    json_format.ParseDict(platform, pipeline_spec_pb2.PlatformSpec(), ignore_unknown_fields=False)
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for config in executors.values():
        json_format.ParseDict(
            config,
            kubernetes_executor_config_pb2.KubernetesExecutorConfig(),
            ignore_unknown_fields=False,
        )
    return spec, platform


def resolved_inputs(spec: dict[str, Any], task: str) -> dict[str, Any]:
    """A task's parameter values as the backend sees them (pipeline defaults substituted)."""
    defaults = {
        name: p.get("defaultValue")
        for name, p in spec["root"]["inputDefinitions"]["parameters"].items()
    }
    values = {}
    for name, source in spec["root"]["dag"]["tasks"][task]["inputs"]["parameters"].items():
        if "componentInputParameter" in source:
            values[name] = defaults[source["componentInputParameter"]]
        else:
            values[name] = source["runtimeValue"]["constant"]
    return values


def container(spec: dict[str, Any], task: str) -> dict[str, Any]:
    executor = spec["root"]["dag"]["tasks"][task]["componentRef"]["name"].replace("comp-", "exec-")
    return dict(spec["deploymentSpec"]["executors"][executor]["container"])


def test_committed_pipeline_parses_strictly() -> None:
    spec, _ = strict_docs(REPO_ROOT / PIPELINE_FILE)
    assert spec["pipelineInfo"]["name"] == "carinspect-training"


def test_an_unknown_field_is_rejected(tmp_path: Path) -> None:
    """The strict check can fail: a field the schema does not know."""
    text = (REPO_ROOT / PIPELINE_FILE).read_text().replace("cachingOptions:", "cachingOption:", 1)
    (tmp_path / "bad.yaml").write_text(text)
    with pytest.raises(json_format.ParseError, match="cachingOption"):
        strict_docs(tmp_path / "bad.yaml")


def test_no_run_unique_value_feeds_a_cached_task() -> None:
    spec, _ = strict_docs(REPO_ROOT / PIPELINE_FILE)
    cached = []
    for name, task in spec["root"]["dag"]["tasks"].items():
        if not task.get("cachingOptions", {}).get("enableCache", False):
            continue
        cached.append(name)
        for key, source in task["inputs"].get("parameters", {}).items():
            constant = str(source.get("runtimeValue", {}).get("constant", ""))
            assert "{{$" not in constant, f"{name}.{key} = {constant}: unique per run"
        env = " ".join(str(e) for e in container(spec, name).get("env", []))
        assert "{{$" not in env, f"{name}: a placeholder in its environment"
    assert sorted(cached) == sorted([*UPSTREAM, "export"])  # register alone is never cached


def compiled_with(tmp_path: Path, section: str, key: str, value: Any) -> dict[str, Any]:
    """The pipeline compiled from params.yaml with one value changed (parsed strictly)."""
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params[section][key] = value
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return strict_docs(compile_pipeline(tmp_path / "params.yaml", tmp_path / "p.yaml"))[0]


def test_a_change_to_export_reaches_export_only(tmp_path: Path) -> None:
    changed = compiled_with(tmp_path, "export", "opset", 17)
    base, _ = strict_docs(REPO_ROOT / PIPELINE_FILE)
    for task in UPSTREAM:
        assert resolved_inputs(changed, task) == resolved_inputs(base, task), task
        assert container(changed, task) == container(base, task), task
    assert resolved_inputs(changed, "export") != resolved_inputs(base, "export")
    assert '"opset":17' in resolved_inputs(changed, "export")["export_cfg"]
    # register's own inputs are unchanged; it follows export through its new artifact
    assert resolved_inputs(changed, "register") == resolved_inputs(base, "register")


def test_a_change_to_train_spares_ingest_and_split(tmp_path: Path) -> None:
    changed = compiled_with(tmp_path, "train", "epochs", 3)
    base, _ = strict_docs(REPO_ROOT / PIPELINE_FILE)
    for task in ("ingest", "split"):
        assert resolved_inputs(changed, task) == resolved_inputs(base, task), task
    assert resolved_inputs(changed, "train") != resolved_inputs(base, "train")


def test_kfp_sections_are_the_params_dvc_tracks() -> None:
    """A task's section inputs are its dvc.yaml stage's `params:`: both re-run on the same change.

    (The demo's settings are an input of KFP's ingest; dvc.yaml has a `demo` stage for them.
    data.feedback is KFP's data_feedback: the same folder, at a commit's revision.)
    """
    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    spec, _ = strict_docs(REPO_ROOT / PIPELINE_FILE)
    for name, task in spec["root"]["dag"]["tasks"].items():
        kfp = {
            SECTION_INPUTS.get(k, k).replace("data_", "data.")
            for k in task["inputs"]["parameters"]
            if k.endswith("_cfg")
            or k in ("data_source", "data_task", "data_format", "data_shards", "data_feedback")
        } - {"data.demo"}
        assert kfp == set(stages[name]["params"]), name


def test_multi_node_training_gets_the_cluster_settings(tmp_path: Path) -> None:
    """Only a TrainJob needs the kfp section at run time; single-node training does not read it."""
    base, _ = strict_docs(REPO_ROOT / PIPELINE_FILE)
    assert resolved_inputs(base, "train")["cluster"] == ""
    nodes = compiled_with(tmp_path, "kfp", "train", {**_kfp_train(), "nodes": 2})
    cluster = KfpConfig.model_validate_json(resolved_inputs(nodes, "train")["cluster"])
    assert cluster.train.nodes == 2 and cluster.train.workspace_pvc == "carinspect-workspace"
    for task in ("ingest", "split"):
        assert resolved_inputs(nodes, task) == resolved_inputs(base, task), task


def _kfp_train() -> dict[str, Any]:
    return dict(yaml.safe_load((REPO_ROOT / "params.yaml").read_text())["kfp"]["train"])


def test_pipeline_inputs_are_the_stage_sections_with_params_yaml_defaults() -> None:
    """Both pipelines take one input per section a stage reads, defaulting to params.yaml's."""
    import json

    from carinspect.config import parse_params
    from carinspect.stages.spec import STAGES
    from pipelines.sweep import SWEEP_FILE

    raw = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params = parse_params(raw, "params.yaml").model_dump(mode="json", by_alias=True)

    def section(key: str) -> Any:
        node = params
        for part in key.split("."):
            node = node[part]
        return node

    expected = {f"{key.rpartition('.')[2]}_cfg": key for s in STAGES for key in s.sections}
    data_inputs = {"data_version", "data_source", "data_task", "data_format", "data_shards",
                   "data_feedback"}  # fmt: skip
    for path, extra in ((PIPELINE_FILE, {}), (SWEEP_FILE, {"tune_cfg": "tune"})):
        spec, _ = strict_docs(REPO_ROOT / path)
        inputs = spec["root"]["inputDefinitions"]["parameters"]
        assert set(inputs) == data_inputs | set(expected) | set(extra), path
        for name, key in {**expected, **extra}.items():
            assert json.loads(inputs[name]["defaultValue"]) == section(key), (path, name)
        assert inputs["data_source"]["defaultValue"] == params["data"]["source"]
        assert "defaultValue" not in inputs["data_version"]  # it keys ingest's cache: no default
        # params.yaml's data/feedback is a workspace folder: run and submit give its revision
        assert inputs["data_feedback"]["defaultValue"] == ""


def test_component_artifact_inputs_are_the_spec_upstream_outputs() -> None:
    """A component takes exactly its upstream stages' artifacts, each under the stage's name."""
    import inspect

    import components
    from carinspect.stages.spec import SPEC, STAGES

    for spec in STAGES:
        if spec.name not in components.FUNCTIONS:
            continue  # summary: dvc repro only
        params = inspect.signature(components.FUNCTIONS[spec.name]).parameters
        taken = {n for n, p in params.items() if "InputAnnotation" in str(p.annotation)}
        assert taken == {SPEC[s].artifact for s in spec.after}, spec.name
        made = {n for n, p in params.items() if "OutputAnnotation" in str(p.annotation)}
        assert spec.artifact is None or spec.artifact in made, spec.name


def test_a_stage_reading_an_output_no_task_made_is_named() -> None:
    from pipelines.signature import upstream

    with pytest.raises(ValueError, match=r"stage export reads \['threshold'\]"):
        upstream("export", {"ingest": 1, "split": 2, "train": 3, "evaluate": 4})
