"""A Triton Inference Server model repository from an exported (or registered) model folder.

Layout, as Triton and KServe's ONNX runtime (Triton, protocol v2) read it::

    OUT/<model_name>/config.pbtxt      inputs/outputs, dynamic batching, instance groups,
                                       the onnxruntime backend, optionally TensorRT
                                       (FP16 engines, or INT8 from the INT8 graph)
    OUT/<model_name>/<version>/model.onnx   the FP32 graph, or the INT8 one (triton.precision)
    OUT/<model_name>/model.json        the card: preprocessing, classes, decision rules
    OUT/<model_name>/labels.txt        one task: class names (Triton's classification extension)

Triton reads only ``config.pbtxt``, the numbered version folders and the files the config names;
model.json rides along for the client (:mod:`carinspect.serving.triton_client`), which decodes
and preprocesses as ``carinspect serve`` does and applies the same decision rule.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from carinspect.config import TritonConfig
from carinspect.contracts.cards import ModelCard
from carinspect.contracts.folders import ExportDir
from carinspect.contracts.onnx_names import INPUT, OUTPUTS
from carinspect.errors import InputError
from carinspect.modeling.quantize import tensorrt_refuses

CONFIG = "config.pbtxt"
LABELS = "labels.txt"
_TYPES = {1: "TYPE_FP32", 10: "TYPE_FP16", 11: "TYPE_FP64", 7: "TYPE_INT64", 6: "TYPE_INT32"}


class TritonError(InputError):
    """A model folder that cannot become a Triton repository."""


@dataclass(frozen=True)
class Tensor:
    """One graph input or output as Triton declares it: dims without the batch dimension."""

    name: str
    data_type: str
    dims: tuple[int, ...]


def graph_tensors(onnx_path: Path) -> tuple[list[Tensor], list[Tensor]]:
    """The ONNX graph's inputs and outputs, batch dimension dropped (it must be dynamic)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    initializers = {i.name for i in model.graph.initializer}

    def tensors(values: list[onnx.ValueInfoProto]) -> list[Tensor]:
        out = []
        for v in values:
            if v.name in initializers:
                continue
            kind = v.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in kind.shape.dim]
            if not dims or dims[0] != -1:
                raise TritonError(
                    f"{onnx_path}: {v.name!r} has shape {dims}: the first (batch) dimension "
                    "must be dynamic for Triton's batching (re-export with carinspect export)"
                )
            if kind.elem_type not in _TYPES:
                raise TritonError(f"{onnx_path}: {v.name!r} has ONNX type {kind.elem_type}")
            out.append(Tensor(v.name, _TYPES[kind.elem_type], tuple(dims[1:])))
        return out

    return tensors(list(model.graph.input)), tensors(list(model.graph.output))


def _dims(dims: tuple[int, ...]) -> str:
    return "[ " + ", ".join(str(d) for d in dims) + " ]"


def _tensor(t: Tensor, labels: bool = False) -> str:
    lines = [f'    name: "{t.name}"', f"    data_type: {t.data_type}", f"    dims: {_dims(t.dims)}"]
    if labels:
        lines.append(f'    label_filename: "{LABELS}"')
    return "  {\n" + "\n".join(lines) + "\n  }"


def model_config(card: ModelCard, onnx_path: Path, cfg: TritonConfig) -> str:
    """config.pbtxt for the model: protobuf text of Triton's ``inference.ModelConfig``."""
    inputs, outputs = graph_tensors(onnx_path)
    if [t.name for t in inputs] != [INPUT]:
        raise TritonError(
            f"{onnx_path}: expected one input {INPUT!r}, found {[t.name for t in inputs]}"
        )
    wanted = [t.output for t in card.task_cards]
    missing = sorted(set(wanted) - {t.name for t in outputs})
    if missing:
        raise TritonError(f"{onnx_path}: model.json names outputs {missing} the graph lacks")
    single = not card.multitask
    parts = [
        f'name: "{cfg.model_name}"',
        'backend: "onnxruntime"',
        f"max_batch_size: {cfg.max_batch_size}",
        "input [\n" + ",\n".join(_tensor(t) for t in inputs) + "\n]",
        "output [\n"
        + ",\n".join(_tensor(t, labels=single and t.name == OUTPUTS[1]) for t in outputs)
        + "\n]",
        "dynamic_batching {\n"
        f"  preferred_batch_size: {_dims(tuple(cfg.preferred_batch_sizes))}\n"
        f"  max_queue_delay_microseconds: {cfg.max_queue_delay_us}\n"
        "}",
        f"instance_group [\n  {{\n    count: {cfg.instance_count}\n    kind: {cfg.instance_kind}\n  }}\n]",
    ]
    if cfg.tensorrt and cfg.instance_kind != "KIND_CPU":
        mode = "FP16" if cfg.tensorrt_fp16 else "FP32"
        params = {
            # the INT8 graph's Q/DQ nodes carry its scales: no calibration table
            "precision_mode": "INT8" if cfg.precision == "int8" else mode,
            "max_workspace_size_bytes": str(cfg.tensorrt_workspace_mb * 1024 * 1024),
            "trt_engine_cache_enable": "1",
            "trt_engine_cache_path": f"/tmp/triton-trt-cache/{cfg.model_name}",
        }
        body = "\n".join(
            f'      parameters {{ key: "{k}" value: "{v}" }}' for k, v in params.items()
        )
        parts.append(
            "optimization {\n  execution_accelerators {\n    gpu_execution_accelerator [\n"
            f'      {{\n      name: "tensorrt"\n{body}\n      }}\n    ]\n  }}\n}}'
        )
    return "\n".join(parts) + "\n"


def write_repository(
    folder: Path, card: ModelCard, cfg: TritonConfig, out: Path, version: int = 1
) -> Path:
    """Write ``out/<model_name>/`` from an exported model folder; the model's folder.

    Written beside the target and renamed into place, so a failed export leaves an existing
    repository entry as it was.
    """
    onnx_path = folder / card.files.get("fp32", ExportDir.ONNX)
    if cfg.precision == "int8":
        if "int8" not in card.files:
            raise TritonError(f"{folder}: triton.precision is int8, but {card.why_no_int8()}")
        onnx_path = folder / card.files["int8"]
    if not onnx_path.is_file():
        raise TritonError(f"{folder}: {onnx_path.name} not found")
    if cfg.precision == "int8" and cfg.tensorrt and cfg.instance_kind != "KIND_CPU":
        refused = tensorrt_refuses(onnx_path)
        if refused is not None:
            raise TritonError(f"{folder}: triton.tensorrt with triton.precision int8: {refused}")
    config = model_config(card, onnx_path, cfg)
    target = out / cfg.model_name
    tmp = out / f".{cfg.model_name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / str(version)).mkdir(parents=True)
    try:
        shutil.copy2(onnx_path, tmp / str(version) / "model.onnx")
        (tmp / CONFIG).write_text(config)
        (tmp / ExportDir.CARD).write_text(json.dumps(card.to_json(), indent=2) + "\n")
        if not card.multitask:
            (tmp / LABELS).write_text("\n".join(card.task_cards[0].classes) + "\n")
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def publish(entry: Path, uri: str) -> str:
    """Upload a repository entry to ``s3://bucket/prefix/<model_name>/``; its URI.

    The S3 endpoint and credentials are boto3's (AWS_ENDPOINT_URL for MinIO, as the MLflow
    artifact store uses). New files go up first, then objects the entry no longer has (an older
    version folder) are deleted, so Triton never sees a half-written entry without a model.
    """
    from carinspect.data.storage.objects import ObjectError, S3Prefix, parse_s3_uri

    try:
        bucket, prefix = parse_s3_uri(uri)
        base = "/".join(p for p in (prefix.strip("/"), entry.name) if p)
        target = S3Prefix(f"s3://{bucket}/{base}")
        files = {
            p.relative_to(entry).as_posix(): p for p in sorted(entry.rglob("*")) if p.is_file()
        }
        for name, path in files.items():
            target.put_file(name, path)
        for name in target.names():
            if name not in files:
                target.delete(name)
    except ObjectError as err:
        raise TritonError(f"upload failed: {err}") from None
    return f"s3://{bucket}/{base}"
