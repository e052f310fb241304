"""evaluate as a KFP component: metrics, confusion matrix and report of the best checkpoint."""

from kfp.dsl import ClassificationMetrics, Dataset, Input, Markdown, Metrics, Model, Output


def evaluate(
    evaluate_cfg: str,
    model: Input[Model],
    data: Input[Dataset],
    splits: Input[Dataset],
    evaluation: Output[Dataset],
    metrics: Output[Metrics],
    confusion: Output[ClassificationMetrics],
    report: Output[Markdown],
) -> None:
    """Evaluate on val and test, calibrate, and log everything to the training run."""
    from pathlib import Path

    from carinspect.config import Settings
    from carinspect.contracts.folders import EvaluateDir, SplitDir, TrainDir
    from carinspect.stages import evaluate as stage
    from components import glue

    p = glue.params_from_inputs({"evaluate_cfg": evaluate_cfg})
    out = EvaluateDir(evaluation.path)
    train_dir = TrainDir(model.path)
    stage.run(
        p.evaluate, Settings(), train_dir.best, Path(data.path),
        SplitDir(splits.path).splits, out.root, glue.run_id_of(train_dir.root),
    )  # fmt: skip
    glue.log_metrics(metrics, out.metrics)
    classes, matrix = glue.confusion(out.predictions, "test")
    confusion.log_confusion_matrix(classes, matrix)
    glue.write_markdown(report, glue.evaluation_markdown(out.metrics))
