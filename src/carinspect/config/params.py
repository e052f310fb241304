"""The whole of params.yaml: its model, and reading it with errors that name the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, model_validator

from carinspect.config.audit import AuditConfig
from carinspect.config.base import ConfigError, Section
from carinspect.config.data import DataConfig, IngestConfig, SplitConfig
from carinspect.config.platform import KfpConfig
from carinspect.config.release import (
    EvaluateConfig,
    ExportConfig,
    PromoteConfig,
    RegisterConfig,
    ThresholdConfig,
    TritonConfig,
)
from carinspect.config.rollout import RolloutConfig
from carinspect.config.training import MlflowConfig, ModelConfig, TrainConfig, TuneConfig


class Params(Section):
    """The whole of params.yaml."""

    data: DataConfig = DataConfig()
    ingest: IngestConfig = IngestConfig()
    split: SplitConfig = SplitConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    threshold: ThresholdConfig = ThresholdConfig()
    export: ExportConfig = ExportConfig()
    # `register` would shadow ABCMeta.register on the model class; the YAML key stays `register`
    register_: RegisterConfig = Field(RegisterConfig(), alias="register")
    promote: PromoteConfig = PromoteConfig()
    kfp: KfpConfig = KfpConfig()
    mlflow: MlflowConfig = MlflowConfig()
    tune: TuneConfig = TuneConfig()
    triton: TritonConfig = TritonConfig()
    audit: AuditConfig = AuditConfig()
    rollout: RolloutConfig = RolloutConfig()

    @model_validator(mode="after")
    def _enough_per_class(self) -> Params:
        splits = [name for name, f in self.split.fractions().items() if f > 0]
        if self.ingest.min_per_class < len(splits):
            raise ValueError(
                f"ingest.min_per_class={self.ingest.min_per_class} is below the {len(splits)} "
                f"images per class that split needs (one each for {', '.join(splits)})"
            )
        return self


def set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    """``set_dotted(d, "train.epochs", 3)`` sets ``d["train"]["epochs"] = 3``."""
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"override {key}: {part} is not a section")
        node = nxt
    node[parts[-1]] = value


def _format_error(path: Path, err: ValidationError) -> str:
    lines = [f"{path}: invalid parameters"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<top level>"
        kind = e["type"]
        if kind == "extra_forbidden":
            lines.append(f"  {key}: unknown key")
        else:
            got = e.get("input")
            shown = "" if isinstance(got, dict | list) else f" (got {got!r})"
            lines.append(f"  {key}: {e['msg']}{shown}")
    return "\n".join(lines)


def parse_params(raw: Any, path: Path | str = "<params>") -> Params:
    """Validate an already-parsed params mapping; errors name ``path`` and each bad key."""
    path = Path(path)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_error(path, err)) from None


def load_params(path: Path | str) -> Params:
    """Read and validate a params.yaml file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: params file not found") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    return parse_params(raw, path)
