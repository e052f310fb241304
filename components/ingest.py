"""ingest as a KFP component: the data source in, the image cache and manifest out."""

from kfp.dsl import Dataset, Markdown, Metrics, Output


def ingest(
    data_source: str,
    data_version: str,
    data_task: str,
    data_format: str,
    data_shards: str,
    data_feedback: str,
    coco_tasks_cfg: str,
    demo_cfg: str,
    ingest_cfg: str,
    data: Output[Dataset],
    report: Output[Markdown],
    metrics: Output[Metrics],
) -> None:
    """Decode, validate and deduplicate ``data_source`` (``data_version`` keys KFP's cache).

    ``data_format`` shards with ``data_shards`` an s3:// prefix: the shards go to the bucket
    and the output artifact holds the manifest and the index; the tasks after it stream from
    the bucket (credentials from the ``kfp.data_secret`` Secret). ``data_feedback``: the
    reviewed photos (``dvc://<repo>@<rev>#data/feedback`` or an s3:// prefix; empty: none),
    ingested beside the source as `dvc repro` does.
    """
    from carinspect.contracts.folders import IngestDir
    from carinspect.stages import ingest as stage
    from components import glue

    p = glue.params_from_inputs(
        {"demo_cfg": demo_cfg, "coco_tasks_cfg": coco_tasks_cfg, "ingest_cfg": ingest_cfg},
        {
            "data.source": data_source,
            "data.task": glue.task_input(data_task),
            "data.format": data_format,
            "data.shards": data_shards,
            "data.feedback": data_feedback,
        },
    )
    out = IngestDir(data.path)
    stage.run(p.data, p.ingest, out.root)
    data.metadata.update({"source": p.data.source, "version": data_version})
    glue.write_markdown(report, out.report_md.read_text())
    glue.log_metrics(metrics, out.metrics)
