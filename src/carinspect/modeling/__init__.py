"""The timm model factory, losses, checkpoints and the ONNX export."""
