"""split as a KFP component: the manifest in, splits.csv out."""

from kfp.dsl import Dataset, Input, Markdown, Metrics, Output


def split(
    split_cfg: str,
    data: Input[Dataset],
    splits: Output[Dataset],
    report: Output[Markdown],
    metrics: Output[Metrics],
) -> None:
    """Group-aware stratified train/val/test split of the ingest manifest."""
    from carinspect.contracts.folders import IngestDir, SplitDir
    from carinspect.stages import split as stage
    from components import glue

    p = glue.params_from_inputs({"split_cfg": split_cfg})
    out = SplitDir(splits.path)
    stage.run(p.split, IngestDir(data.path).manifest, out.root)
    glue.write_markdown(report, out.report_md.read_text())
    glue.log_metrics(metrics, out.metrics)
