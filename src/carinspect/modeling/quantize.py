"""INT8 ONNX graphs: onnxruntime's static quantization, QDQ format, per-channel weights.

Activations are calibrated on real photos (min/max of each tensor over the batches given).
QDQ keeps the graph's inputs and outputs in float32, so serving feeds it exactly what it feeds
the FP32 graph; onnxruntime runs the quantized operators on the CPU's integer units (VNNI,
AMX) and TensorRT builds INT8 engines from the same QDQ nodes.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from carinspect.contracts.onnx_names import INPUT

# what is quantized: the convolutions, matrix products and what runs between them on int8 data.
# The head's temperature division and softmax stay FP32: an 8-bit probability moves in steps of
# 1/255, coarser than the decision thresholds (and its outputs no longer sum to 1).
QUANTIZED_OPS = ["Conv", "Gemm", "MatMul", "Relu", "MaxPool", "AveragePool"]


def quantize_int8(
    fp32: Path, out: Path, batches: Iterable[np.ndarray], symmetric: bool = True
) -> Path:
    """Write the INT8 (QDQ) version of ``fp32`` to ``out``, calibrated on ``batches`` (NCHW).

    ``symmetric``: every zero point 0, activations too, which is what TensorRT accepts (it
    refuses a Q/DQ graph with any other zero point); the CPU runs either.
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class _Photos(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self._left: Iterator[np.ndarray] = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._left, None)
            return None if batch is None else {INPUT: batch.astype(np.float32)}

    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"  # shapes inferred and graph folded first
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared), str(out), _Photos(), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
            op_types_to_quantize=QUANTIZED_OPS,
            extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True},
        )  # fmt: skip
    return Path(out)


def tensorrt_refuses(graph: Path) -> str | None:
    """Why TensorRT would not build INT8 engines from this Q/DQ graph, or None when it would.

    TensorRT takes only symmetric quantization: every QuantizeLinear and DequantizeLinear zero
    point 0 (it stops at the first other one). Checked here, where it costs a file read, not on
    a GPU node after minutes of engine building.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(graph))
    constants = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(node.input) < 3:
            continue
        zero = constants.get(node.input[2])
        if zero is not None and np.any(numpy_helper.to_array(zero) != 0):
            return (
                f"{graph.name}: {node.op_type} {node.name!r} has a zero point other than 0 "
                "(asymmetric activations); TensorRT takes symmetric INT8 only: export with "
                "export.int8_symmetric: true"
            )
    return None
