"""Typed models of params.yaml: one section per stage, validated strictly at load.

A stage never reads params.yaml itself: the CLI and the KFP components call :func:`load_params`
(or build the section models directly) and pass the section to the stage's ``run``. The sections
live in one module per part of the pipeline (data, training, release, platform); everything is
importable from here.
"""

from carinspect.config.audit import AuditConfig
from carinspect.config.base import (
    SPLIT_NAMES,
    ConfigError,
    Section,
)
from carinspect.config.data import (
    DataConfig,
    DemoConfig,
    IngestConfig,
    SplitConfig,
)
from carinspect.config.params import (
    Params,
    load_params,
    parse_params,
    set_dotted,
)
from carinspect.config.platform import (
    DATA_SECRET_KEYS,
    KfpConfig,
    KfpTrainConfig,
    Toleration,
)
from carinspect.config.release import (
    EvaluateConfig,
    ExportConfig,
    GateMetric,
    PromoteConfig,
    RegisterConfig,
    ThresholdConfig,
    TritonConfig,
)
from carinspect.config.rollout import Check, RolloutConfig
from carinspect.config.settings import (
    DEFAULT_TRACKING_URI,
    Settings,
)
from carinspect.config.training import (
    EarlyStoppingConfig,
    MlflowConfig,
    ModelConfig,
    SearchDim,
    TrainConfig,
    TuneConfig,
)

__all__ = [
    "DATA_SECRET_KEYS",
    "DEFAULT_TRACKING_URI",
    "SPLIT_NAMES",
    "AuditConfig",
    "Check",
    "ConfigError",
    "DataConfig",
    "DemoConfig",
    "EarlyStoppingConfig",
    "EvaluateConfig",
    "ExportConfig",
    "GateMetric",
    "IngestConfig",
    "KfpConfig",
    "KfpTrainConfig",
    "MlflowConfig",
    "ModelConfig",
    "Params",
    "PromoteConfig",
    "RegisterConfig",
    "RolloutConfig",
    "SearchDim",
    "Section",
    "Settings",
    "SplitConfig",
    "ThresholdConfig",
    "Toleration",
    "TrainConfig",
    "TritonConfig",
    "TuneConfig",
    "load_params",
    "parse_params",
    "set_dotted",
]
