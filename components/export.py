"""export as a KFP component: the ONNX file and model.json, checked against the checkpoint."""

from kfp.dsl import Dataset, Input, Metrics, Model, Output


def export(
    export_cfg: str,
    model: Input[Model],
    evaluation: Input[Dataset],
    operating_point: Input[Dataset],
    data: Input[Dataset],
    splits: Input[Dataset],
    onnx_model: Output[Model],
    metrics: Output[Metrics],
) -> None:
    """Export to ONNX with the calibration and thresholds, after the parity check."""
    from pathlib import Path

    from carinspect.config import Settings
    from carinspect.contracts.folders import (
        EvaluateDir,
        ExportDir,
        SplitDir,
        ThresholdDir,
        TrainDir,
    )
    from carinspect.stages import export as stage
    from components import glue

    p = glue.params_from_inputs({"export_cfg": export_cfg})
    out = ExportDir(onnx_model.path)
    train_dir = TrainDir(model.path)
    stage.run(
        p.export, Settings(), train_dir.best, EvaluateDir(evaluation.path).calibration,
        ThresholdDir(operating_point.path).rule, Path(data.path),
        SplitDir(splits.path).splits, out.root, glue.run_id_of(train_dir.root),
    )  # fmt: skip
    glue.log_metrics(metrics, out.metrics)
    onnx_model.metadata.update({"framework": "onnx", "file": ExportDir.ONNX})
