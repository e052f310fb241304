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

    from carinspect import kfp_glue
    from carinspect.config import Settings
    from carinspect.contracts.folders import EvaluateDir, ThresholdDir
    from carinspect.stages import threshold as stage

    p = kfp_glue.params_from_inputs({"threshold_cfg": threshold_cfg})
    out = ThresholdDir(operating_point.path)
    stage.run(
        p.threshold, Settings(), EvaluateDir(evaluation.path).predictions, out.root,
        kfp_glue.run_id_of(Path(model.path)),
    )  # fmt: skip
    kfp_glue.log_metrics(metrics, out.metrics)
