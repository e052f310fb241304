"""register as a KFP component: a new version in the MLflow registry, alias challenger."""

from kfp.dsl import Artifact, Dataset, Input, Model, Output


def register(
    register_cfg: str,
    model: Input[Model],
    evaluation: Input[Dataset],
    onnx_model: Input[Model],
    kfp_run_id: str,
    registered: Output[Artifact],
) -> str:
    """Register the exported model with lineage (the pipeline run included); returns its URI."""
    from pathlib import Path

    from carinspect.config import Settings
    from carinspect.contracts.folders import EvaluateDir
    from carinspect.stages import register as stage
    from components import glue

    glue.set_run_env(kfp_run_id)
    p = glue.params_from_inputs({"register_cfg": register_cfg})
    version = stage.run(
        p.register_, Settings(), Path(onnx_model.path), EvaluateDir(evaluation.path).metrics,
        glue.run_id_of(Path(model.path)), Path(registered.path),
    )  # fmt: skip
    registered.metadata.update({"name": version.name, "version": version.version})
    return version.model_uri
