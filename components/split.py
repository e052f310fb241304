"""split as a KFP component: the manifest in, splits.csv out."""

from kfp.dsl import Dataset, Input, Markdown, Metrics, Output


def split(
    params: str,
    data: Input[Dataset],
    splits: Output[Dataset],
    report: Output[Markdown],
    metrics: Output[Metrics],
) -> None:
    """Group-aware stratified train/val/test split of the ingest manifest."""
    from pathlib import Path

    from carinspect import kfp_glue
    from carinspect.stages import split as stage

    p = kfp_glue.load_params(params)
    out = Path(splits.path)
    stage.run(p.split, Path(data.path) / "manifest.csv", out)
    kfp_glue.write_markdown(report, (out / "report.md").read_text())
    kfp_glue.log_metrics(metrics, out / "metrics.json")
