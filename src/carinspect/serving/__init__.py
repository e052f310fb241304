"""Serving: FastAPI on onnxruntime, following the champion alias."""
