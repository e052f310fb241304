"""The pipelines' inputs, from the stage spec: one signature for the training and sweep pipelines.

KFP reads a pipeline's inputs from its function's signature. Written by hand, the two pipelines
spelled the same sixteen parameters twice and had to follow every new params.yaml section; here
the signature is built from :data:`carinspect.stages.spec.STAGES` (one ``<section>_cfg`` input
per section a stage reads, its default the section in params.yaml) and the data inputs, and the
pipeline body receives the inputs as one mapping, which it hands to each component through
:func:`stage_inputs`. The artifacts a stage's component takes are its upstream stages' outputs
(the spec's ``after``), each under the name of that stage's ``artifact``: :func:`call` wires them,
so a new stage input is declared in the spec, not in the pipelines.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from kfp import dsl

from carinspect.config import Params
from carinspect.stages.spec import SPEC
from components import glue

# the data inputs, ingest's only: data_version has no default (it keys ingest's cache)
DATA_INPUTS = (
    "data_version", "data_source", "data_task", "data_format", "data_shards", "data_feedback"
)  # fmt: skip


def data_defaults(cfg: Params) -> dict[str, str]:
    """The data inputs' defaults from params.yaml's data section (data_version has none)."""
    return {
        "data_source": cfg.data.source,
        "data_task": glue.task_text(cfg.data.task),
        "data_format": cfg.data.format,
        "data_shards": cfg.data.shards,
        # a pod has no DVC workspace: a local folder is given as a revision by run and submit
        "data_feedback": cfg.data.feedback if _remote(cfg.data.feedback) else "",
    }


def _remote(folder: str) -> bool:
    return folder.startswith(("dvc://", "s3://"))


def parameters(cfg: Params, sweep: bool = False) -> list[inspect.Parameter]:
    """The pipeline's inputs in order: the data inputs, then a section input per stage section."""
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    found = [inspect.Parameter("data_version", kind, annotation=str)]
    defaults = {**data_defaults(cfg), **glue.section_texts(cfg, sweep=sweep)}
    found += [inspect.Parameter(n, kind, annotation=str, default=v) for n, v in defaults.items()]
    return found


def stage_inputs(inputs: Mapping[str, Any], stage: str) -> dict[str, Any]:
    """The pipeline inputs ``stage``'s component takes: its section inputs (ingest: + data)."""
    names = list(SPEC[stage].inputs) + (list(DATA_INPUTS) if stage == "ingest" else [])
    return {n: inputs[n] for n in names}


def upstream(stage: str, produced: Mapping[str, Any]) -> dict[str, Any]:
    """The artifacts ``stage``'s component takes, by input name, from ``produced`` (by stage)."""
    spec = SPEC[stage]
    missing = [s for s in spec.after if s not in produced]
    if missing:
        raise ValueError(f"stage {stage} reads {missing}, which no task before it produced")
    return {_artifact(s): produced[s] for s in spec.after}


def call(
    comp: Any, stage: str, inputs: Mapping[str, Any], produced: dict[str, Any], **extra: Any
) -> Any:
    """``stage``'s task: its section inputs, its upstream artifacts and ``extra``.

    Its own output artifact joins ``produced`` for the stages after it.
    """
    task = getattr(comp, stage)(**stage_inputs(inputs, stage), **upstream(stage, produced), **extra)
    if SPEC[stage].artifact is not None:
        produced[stage] = task.outputs[_artifact(stage)]
    return task


def _artifact(stage: str) -> str:
    name = SPEC[stage].artifact
    if name is None:
        raise ValueError(f"stage {stage} has no KFP output artifact")
    return name


def pipeline(
    name: str,
    description: str,
    params: list[inspect.Parameter],
    body: Callable[[dict[str, Any]], Any],
) -> Any:
    """A KFP pipeline whose inputs are ``params`` and whose graph ``body(inputs)`` builds.

    KFP calls the pipeline function with one placeholder per parameter, positionally, in
    signature order; the function gives them to ``body`` by name.
    """
    names = [p.name for p in params]

    def run(*args: Any) -> Any:
        return body(dict(zip(names, args, strict=True)))

    run.__signature__ = inspect.Signature(params, return_annotation=str)  # type: ignore[attr-defined]
    run.__name__ = run.__qualname__ = name.replace("-", "_")
    run.__doc__ = description
    return dsl.pipeline(name=name, description=description)(run)
