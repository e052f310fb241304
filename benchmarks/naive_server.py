"""The naive baseline for serve_throughput.py: how the seed services serve.

A sync FastAPI route (FastAPI runs it in its thread pool), one onnxruntime call per request, no
batching, and every upload decoded at full resolution before it is resized (``Image.open`` +
``convert("RGB")``, as the seed services did), then the same preprocessing as carinspect.
MODEL_DIR names a folder with model.onnx + model.json.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

from fastapi import FastAPI, File, UploadFile
from PIL import Image

from carinspect.data.preprocess import preprocess
from carinspect.serving.inference import answer
from carinspect.serving.model_store import ModelRef, open_model
from carinspect.serving.settings import ServeSettings

_folder = Path(os.environ["MODEL_DIR"])
_model = open_model(ModelRef.parse(str(_folder)), None, _folder, ServeSettings())
app = FastAPI()


@app.get("/readyz")
def readyz() -> dict[str, str]:
    """Always ready: the model loads at import."""
    return {"status": "ready"}


@app.post("/predict")
def predict(file: UploadFile = File(...)) -> dict[str, Any]:  # noqa: B008 (FastAPI's idiom)
    """Decode, preprocess and run one image."""
    image = Image.open(io.BytesIO(file.file.read())).convert("RGB")  # full-resolution decode
    pixels = preprocess(image, _model.spec)
    return answer(_model, _model.probabilities(pixels[None])[0])
