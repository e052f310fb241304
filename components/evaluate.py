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

    from carinspect import kfp_glue
    from carinspect.config import Settings
    from carinspect.stages import evaluate as stage

    p = kfp_glue.params_from_inputs({"evaluate_cfg": evaluate_cfg})
    out = Path(evaluation.path)
    train_dir = Path(model.path)
    stage.run(
        p.evaluate, Settings(), train_dir / "best.pt", Path(data.path),
        Path(splits.path) / "splits.csv", out, kfp_glue.run_id_of(train_dir),
    )  # fmt: skip
    kfp_glue.log_metrics(metrics, out / "metrics.json")
    classes, matrix = kfp_glue.confusion(out / "predictions.csv", "test")
    confusion.log_confusion_matrix(classes, matrix)
    kfp_glue.write_markdown(report, kfp_glue.evaluation_markdown(out / "metrics.json"))
