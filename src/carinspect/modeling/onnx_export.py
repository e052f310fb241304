"""ONNX export of a trained classifier: one self-contained file, dynamic batch, optional FP16."""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from carinspect.contracts.onnx_names import CAM, FEATURES, INPUT, MASK, OUTPUTS, task_output
from carinspect.modeling.explain import class_maps

logger = logging.getLogger(__name__)


def _softmaxes(
    logits: torch.Tensor, temperature: torch.Tensor, slices: list[slice]
) -> list[torch.Tensor]:
    return [torch.softmax(logits[:, sl] / temperature[i], dim=1) for i, sl in enumerate(slices)]


class _WithProbabilities(nn.Module):
    """The network plus temperature-scaled softmax, so serving gets probabilities directly.

    Several heads: one softmax per block of outputs, each at its own temperature. With
    ``features``, the pooled pre-logits are an output too (what the MC dropout head takes), and
    the logits are computed from them by the classifier, as the model itself does. With
    ``explain``, the class activation maps of every class are the last output.
    """

    def __init__(
        self,
        model: nn.Module,
        temperatures: list[float],
        slices: list[slice] | None,
        features: bool = False,
        explain: bool = False,
    ) -> None:
        super().__init__()
        self.model = model
        self.slices = slices or [slice(None)]
        self.features = features
        self.explain = explain
        self.temperature: torch.Tensor
        self.register_buffer("temperature", torch.tensor([float(t) for t in temperatures]))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if not self.features and not self.explain:
            logits = self.model(x)
            return (logits, *_softmaxes(logits, self.temperature, self.slices))
        feats = self.model.forward_features(x)  # type: ignore[operator]
        pooled = self.model.forward_head(feats, pre_logits=True)  # type: ignore[operator]
        classifier = self.model.get_classifier()  # type: ignore[operator]
        logits = classifier(pooled)
        out = (logits, *_softmaxes(logits, self.temperature, self.slices))
        out += (pooled,) if self.features else ()
        return out + ((class_maps(classifier, feats),) if self.explain else ())


class _DropoutHead(nn.Module):
    """The classifier on masked features: one Monte Carlo dropout sample per row.

    The mask (Bernoulli keep / keep probability) comes from the caller, so the graph has no
    random op: a mask of ones gives exactly the deterministic probabilities (export checks it),
    and a seeded caller gets reproducible samples.
    """

    def __init__(
        self, classifier: nn.Module, temperatures: list[float], slices: list[slice] | None
    ) -> None:
        super().__init__()
        self.classifier = classifier
        self.slices = slices or [slice(None)]
        self.temperature: torch.Tensor
        self.register_buffer("temperature", torch.tensor([float(t) for t in temperatures]))

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits = self.classifier(features * mask)
        return tuple(_softmaxes(logits, self.temperature, self.slices))


def pre_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The pooled features timm's models feed their classifier (their dropout acts here)."""
    feats = model.forward_features(x)  # type: ignore[operator]
    out: torch.Tensor = model.forward_head(feats, pre_logits=True)  # type: ignore[operator]
    return out


def head_is_separable(model: nn.Module, img_size: int) -> bool:
    """Whether ``classifier(pre_logits(x))`` is the model's output.

    Then MC dropout on the pooled features is what the model's own dropout does.
    """
    get = getattr(model, "get_classifier", None)
    if not callable(get) or not hasattr(model, "forward_head"):
        return False
    x = torch.randn(2, 3, img_size, img_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        try:
            split = get()(pre_logits(model.eval(), x))
        except (TypeError, RuntimeError):
            return False
        return bool(torch.allclose(split, model(x), atol=1e-5, rtol=1e-4))


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


def _save(
    wrapped: nn.Module,
    examples: tuple[torch.Tensor, ...],
    path: Path,
    names: tuple[list[str], list[str]],
    opset: int,
    dynamic: tuple[dict[int, Any], ...],
) -> None:
    """torch.onnx.export (dynamo) into one self-contained, checked file."""
    import onnx

    with torch.no_grad(), warnings.catch_warnings():
        # two inputs sharing one dynamic axis: torch notes it keeps one name for both
        warnings.filterwarnings("ignore", message="# The axis name", category=UserWarning)
        torch.onnx.export(
            wrapped,
            examples,
            str(path),
            input_names=names[0],
            output_names=names[1],
            opset_version=opset,
            dynamo=True,
            verbose=False,  # its progress lines are internals to a user
            external_data=False,
            dynamic_shapes=dynamic,
        )
    for leftover in path.parent.glob(f"{path.name}.data"):
        leftover.unlink()  # nothing may live outside the single file
    onnx.checker.check_model(str(path), full_check=True)


def _heads(heads: list[Head] | None, temperature: float) -> tuple[list[float], list[slice] | None]:
    if not heads:
        return [temperature], None
    return [h.temperature for h in heads], [h.outputs for h in heads]


def export_onnx(
    model: nn.Module,
    temperature: float,
    img_size: int,
    opset: int,
    path: Path,
    heads: list[Head] | None = None,
    features: bool = False,
    explain: bool = False,
) -> None:
    """Export with torch's default (dynamo) exporter, weights inside the file, batch axis dynamic.

    ``heads``: a multi-task model's tasks (``temperature`` is then unused); the graph gives
    each task's probabilities as its own output, named by :func:`task_output`. ``features``:
    the pooled pre-logits are an output (for :func:`export_dropout_head`). ``explain``: the
    class activation maps are the last output (:mod:`carinspect.modeling.explain`; only for a
    model it finds them in).
    """
    temperatures, slices = _heads(heads, temperature)
    wrapped = _WithProbabilities(model.eval(), temperatures, slices, features, explain).eval()
    outputs = output_names(heads) + ([FEATURES] if features else []) + ([CAM] if explain else [])
    batch = torch.export.Dim("batch", min=1, max=4096)
    example = torch.randn(2, 3, img_size, img_size)
    _save(wrapped, (example,), path, ([INPUT], outputs), opset, ({0: batch},))


def export_dropout_head(
    model: nn.Module,
    temperature: float,
    img_size: int,
    opset: int,
    path: Path,
    heads: list[Head] | None = None,
) -> None:
    """The classifier alone as an ONNX graph: (features, mask) -> probabilities per task.

    Serving runs the backbone once per image and this head K times on masked copies of the
    features: K Monte Carlo dropout passes for the price of K small matrix products.
    """
    temperatures, slices = _heads(heads, temperature)
    classifier = model.get_classifier()  # type: ignore[operator]
    wrapped = _DropoutHead(classifier, temperatures, slices).eval()
    with torch.no_grad():
        width = pre_logits(model.eval(), torch.zeros(1, 3, img_size, img_size)).shape[1]
    example = torch.randn(2, width)
    rows = torch.export.Dim("rows", min=1, max=1 << 20)
    names = ([FEATURES, MASK], output_names(heads)[1:])
    _save(wrapped, (example, torch.ones_like(example)), path, names, opset, ({0: rows}, {0: rows}))


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
