"""Names in the exported ONNX graph: what export writes and serving reads (no torch import)."""

INPUT = "input"
OUTPUTS = ("logits", "probabilities")  # one task; several add one probabilities output per task
FEATURES = "features"  # pooled pre-logits, output when the model can do MC dropout
CAM = "cam"  # class activation maps, output when the model ends in average pooling
MASK = "mask"  # the MC dropout head's second input: a dropout mask (scaled by 1/keep)


def task_output(task: str) -> str:
    """The output holding one task's calibrated probabilities in a multi-task graph."""
    return f"{OUTPUTS[1]}_{task}"
