"""Names in the exported ONNX graph: what export writes and serving reads (no torch import)."""

INPUT = "input"
OUTPUTS = ("logits", "probabilities")
