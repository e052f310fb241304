"""A client for a carinspect model served by Triton: the same answers as ``carinspect serve``.

It reads the repository entry ``carinspect export-triton`` wrote (model.json beside
config.pbtxt), decodes and preprocesses each image with the function the server uses
(:func:`carinspect.serving.inference.pixels_for`), sends the batch to Triton over HTTP (KServe's
v2 protocol, which KServe's ONNX runtime speaks too) and applies the model's decision rule with
the server's own code. Without a Triton URL it runs the entry's model.onnx in-process with
onnxruntime instead, and says so: the same files and tensors, no server.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from carinspect.contracts.base import ContractError
from carinspect.contracts.cards import read_card
from carinspect.contracts.folders import ExportDir
from carinspect.contracts.onnx_names import INPUT
from carinspect.serving.loaded import LoadedModel, ModelLoadError, ModelRef
from carinspect.serving.opening import model_from_session
from carinspect.serving.settings import ServeSettings
from carinspect.serving.triton import CONFIG

logger = logging.getLogger(__name__)


class TritonSession:
    """onnxruntime's ``run(outputs, feeds)`` over Triton's HTTP API (one request per chunk)."""

    def __init__(self, url: str, model: str, version: str, max_batch_size: int) -> None:
        import tritonclient.http as triton

        self._triton = triton
        self.client = triton.InferenceServerClient(url=url.removeprefix("http://"))
        self.model, self.version, self.max_batch_size = model, version, max_batch_size
        if not self.client.is_model_ready(model, version):
            raise ModelLoadError(f"Triton at {url}: model {model!r} version {version} is not ready")

    def run(self, outputs: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run ``feeds[INPUT]`` in chunks of at most the config's max_batch_size."""
        batch = np.ascontiguousarray(feeds[INPUT], dtype=np.float32)
        parts: list[list[np.ndarray]] = []
        for start in range(0, len(batch), self.max_batch_size):
            chunk = batch[start : start + self.max_batch_size]
            tensor = self._triton.InferInput(INPUT, list(chunk.shape), "FP32")
            tensor.set_data_from_numpy(chunk, binary_data=True)
            wanted = [self._triton.InferRequestedOutput(o, binary_data=True) for o in outputs]
            result = self.client.infer(self.model, [tensor], self.version, outputs=wanted)
            parts.append([result.as_numpy(o) for o in outputs])
        return [np.concatenate([p[i] for p in parts]) for i in range(len(outputs))]


def repository_entry(path: Path) -> tuple[Path, str]:
    """The model folder (holding config.pbtxt) and its newest version.

    ``path`` is that folder, or a repository holding exactly one model.
    """
    if not (path / CONFIG).is_file():
        entries = [p for p in path.iterdir() if (p / CONFIG).is_file()] if path.is_dir() else []
        if len(entries) != 1:
            raise ModelLoadError(
                f"{path}: not a Triton model folder ({CONFIG}) nor a repository with exactly one"
                f" (found {len(entries)}); run carinspect export-triton --out {path}"
            )
        path = entries[0]
    versions = sorted(int(p.name) for p in path.iterdir() if p.is_dir() and p.name.isdigit())
    if not versions:
        raise ModelLoadError(f"{path}: no numbered version folder")
    return path, str(versions[-1])


def _max_batch_size(entry: Path) -> int:
    """The entry's max_batch_size, read with Triton's own ModelConfig protobuf."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    config = text_format.Parse((entry / CONFIG).read_text(), model_config_pb2.ModelConfig())
    return max(1, int(config.max_batch_size))


def open_triton_model(path: Path, url: str | None, settings: ServeSettings) -> LoadedModel:
    """The repository entry at ``path`` as a :class:`LoadedModel`.

    It answers through Triton at ``url``, or through onnxruntime in this process when ``url``
    is None.
    """
    entry, version = repository_entry(path)
    card_path = entry / ExportDir.CARD
    if not card_path.is_file():
        raise ModelLoadError(
            f"{entry}: {ExportDir.CARD} not found (carinspect export-triton writes it)"
        )
    try:
        card = read_card(card_path)
    except ContractError as err:
        raise ModelLoadError(str(err)) from None
    if card.mc_dropout is not None and settings.mc_samples:
        raise ModelLoadError("MC_SAMPLES: the Triton entry holds the model only, not its MC head")
    onnx_path = entry / version / ExportDir.ONNX
    ref = ModelRef.parse(str(entry))
    if url:
        max_batch = _max_batch_size(entry)
        session: Any = TritonSession(url, entry.name, version, max_batch)
        providers = [f"triton:{url}"]
    else:
        import onnxruntime as ort

        logger.warning(
            "no Triton URL given: running %s in this process with onnxruntime (CPU), "
            "not through a Triton server",
            onnx_path,
        )
        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        providers = list(session.get_providers())
    return model_from_session(ref, version, entry, card, session, providers, settings)
