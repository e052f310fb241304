"""ONNX export of a trained classifier: one self-contained file, dynamic batch, optional FP16."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from carinspect.modeling.onnx_names import INPUT, OUTPUTS, task_output

logger = logging.getLogger(__name__)


class _WithProbabilities(nn.Module):
    """The network plus temperature-scaled softmax, so serving gets probabilities directly.

    Several heads: one softmax per block of outputs, each at its own temperature.
    """

    def __init__(
        self, model: nn.Module, temperatures: list[float], slices: list[slice] | None
    ) -> None:
        super().__init__()
        self.model = model
        self.slices = slices or [slice(None)]
        self.temperature: torch.Tensor
        self.register_buffer("temperature", torch.tensor([float(t) for t in temperatures]))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits = self.model(x)
        probs = [
            torch.softmax(logits[:, sl] / self.temperature[i], dim=1)
            for i, sl in enumerate(self.slices)
        ]
        return (logits, *probs)


@dataclass(frozen=True)
class Head:
    """One task's block of the classifier outputs and its temperature, for export."""

    name: str
    outputs: slice
    temperature: float


def output_names(heads: list[Head] | None) -> list[str]:
    """The graph's outputs: logits, then probabilities (one task) or one per task."""
    if not heads:
        return list(OUTPUTS)
    return [OUTPUTS[0], *(task_output(h.name) for h in heads)]


def export_onnx(
    model: nn.Module,
    temperature: float,
    img_size: int,
    opset: int,
    path: Path,
    heads: list[Head] | None = None,
) -> None:
    """Export with torch's default (dynamo) exporter, weights inside the file, batch axis dynamic.

    ``heads``: a multi-task model's tasks (``temperature`` is then unused); the graph gives
    each task's probabilities as its own output, named by :func:`task_output`.
    """
    import onnx

    temperatures = [h.temperature for h in heads] if heads else [temperature]
    slices = [h.outputs for h in heads] if heads else None
    wrapped = _WithProbabilities(model.eval(), temperatures, slices).eval()
    example = torch.randn(2, 3, img_size, img_size)
    batch = torch.export.Dim("batch", min=1, max=4096)
    with torch.no_grad():
        torch.onnx.export(
            wrapped,
            (example,),
            str(path),
            input_names=[INPUT],
            output_names=output_names(heads),
            opset_version=opset,
            dynamo=True,
            external_data=False,
            dynamic_shapes=({0: batch},),
        )
    for leftover in path.parent.glob(f"{path.name}.data"):
        leftover.unlink()  # nothing may live outside the single file
    onnx.checker.check_model(str(path), full_check=True)


def to_fp16(src: Path, dst: Path) -> None:
    """FP16 weights and compute, float32 input and outputs (so callers do not change)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    _topological_sort(model.graph)  # the converter appends its input casts at the end
    onnx.save(model, str(dst))
    onnx.checker.check_model(str(dst), full_check=True)


def _topological_sort(graph: Any) -> None:
    """Reorder ``graph.node`` so every node comes after the producers of its inputs."""
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        ready = [n for n in pending if all(i in available for i in n.input)]
        if not ready:
            raise ValueError("ONNX graph has a cycle or an input nobody produces")
        for n in ready:
            ordered.append(n)
            available.update(n.output)
        pending = [n for n in pending if all(n is not r for r in ready)]
    del graph.node[:]
    graph.node.extend(ordered)


def session(path: Path, providers: list[str] | None = None, threads: int | None = None) -> Any:
    """An onnxruntime session (CPU unless told otherwise)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    return ort.InferenceSession(
        str(path), sess_options=opts, providers=providers or ["CPUExecutionProvider"]
    )


def ort_probabilities(sess: Any, batch: np.ndarray, output: str = OUTPUTS[1]) -> np.ndarray:
    """Probabilities (of the task ``output`` names) from an exported model for an NCHW batch."""
    out: np.ndarray = sess.run([output], {INPUT: batch.astype(np.float32)})[0]
    return out


def file_is_self_contained(path: Path) -> bool:
    """True when no tensor of the model refers to external data."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return (
        not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
        and os.path.getsize(path) > 0
    )
