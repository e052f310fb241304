"""The naive baseline for serve_throughput.py: how the seed services serve.

A sync FastAPI route (FastAPI runs it in its thread pool), one onnxruntime call per request, no
batching, and every upload decoded at full resolution before it is resized (``Image.open`` +
``convert("RGB")``, as the seed services did), then the same preprocessing as carinspect. The
onnxruntime session has onnxruntime's default options, as the seed services opened it (not
carinspect serve's thread settings). MODEL_DIR names a folder with model.onnx + model.json.
"""

from __future__ import annotations

import dataclasses
import io
import os
from pathlib import Path
from typing import Any

import onnxruntime as ort
from fastapi import FastAPI, File, UploadFile
from PIL import Image

from carinspect.data.loading.preprocess import preprocess
from carinspect.serving.inference import answer
from carinspect.serving.loaded import ModelRef, PhotoScores
from carinspect.serving.opening import open_model
from carinspect.serving.settings import ServeSettings

_folder = Path(os.environ["MODEL_DIR"])
_model = dataclasses.replace(
    open_model(ModelRef.parse(str(_folder)), None, _folder, ServeSettings()),
    session=ort.InferenceSession(str(_folder / "model.onnx"), providers=["CPUExecutionProvider"]),
)
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
    return answer(_model, PhotoScores(_model.probabilities(pixels[None])[0])).body
