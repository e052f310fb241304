"""ONNX export of a trained classifier: one self-contained file, dynamic batch, optional FP16."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from carinspect.modeling.onnx_names import INPUT, OUTPUTS

logger = logging.getLogger(__name__)


class _WithProbabilities(nn.Module):
    """The network plus temperature-scaled softmax, so serving gets probabilities directly."""

    def __init__(self, model: nn.Module, temperature: float) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("temperature", torch.tensor(float(temperature)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(x)
        return logits, torch.softmax(logits / self.temperature, dim=1)


def export_onnx(
    model: nn.Module, temperature: float, img_size: int, opset: int, path: Path
) -> None:
    """Export with torch's default (dynamo) exporter, weights inside the file, batch axis dynamic."""
    import onnx

    wrapped = _WithProbabilities(model.eval(), temperature).eval()
    example = torch.randn(2, 3, img_size, img_size)
    batch = torch.export.Dim("batch", min=1, max=4096)
    with torch.no_grad():
        torch.onnx.export(
            wrapped,
            (example,),
            str(path),
            input_names=[INPUT],
            output_names=list(OUTPUTS),
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


def ort_probabilities(sess: Any, batch: np.ndarray) -> np.ndarray:
    """Probabilities from an exported model for a float32 NCHW batch."""
    out: np.ndarray = sess.run([OUTPUTS[1]], {INPUT: batch.astype(np.float32)})[0]
    return out


def file_is_self_contained(path: Path) -> bool:
    """True when no tensor of the model refers to external data."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return (
        not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
        and os.path.getsize(path) > 0
    )
