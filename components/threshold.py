"""threshold as a KFP component: the operating point from the val predictions."""

from kfp.dsl import Dataset, Input, Metrics, Model, Output


def threshold(
    threshold_cfg: str,
    model: Input[Model],
    evaluation: Input[Dataset],
    operating_point: Output[Dataset],
    metrics: Output[Metrics],
) -> None:
    """Threshold and uncertainty band; figures on val and test."""
    from pathlib import Path

    from carinspect.config import Settings
    from carinspect.contracts.folders import EvaluateDir, ThresholdDir
    from carinspect.stages import threshold as stage
    from components import glue

    p = glue.params_from_inputs({"threshold_cfg": threshold_cfg})
    out = ThresholdDir(operating_point.path)
    stage.run(
        p.threshold, Settings(), EvaluateDir(evaluation.path).predictions, out.root,
        glue.run_id_of(Path(model.path)),
    )  # fmt: skip
    glue.log_metrics(metrics, out.metrics)
