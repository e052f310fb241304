"""register: the exported model becomes a version of ``register.model_name`` with alias challenger.

The ONNX file and model.json are logged into the training run as an MLflow model (onnx flavour,
one self-contained file, signature, batch-of-one input example); the new version is tagged with
lineage (data digest and source, git commit and dirty flag, params hash, val/test metrics,
decision rule, KFP run id when there is one) and gets the alias ``register.alias``. Output:
``registered.json`` (name, version, run id, model URI, alias).

A model whose evaluate verdict (verdict.json beside metrics.json) found it no better than the
most-frequent-class baseline, or its calibration collapsed, is refused with the figures unless
``register.require_better`` is false (then registered with a WARNING and a ``verdict`` tag).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from carinspect.config import RegisterConfig, Settings
from carinspect.contracts.cards import read_card
from carinspect.contracts.evaluation import read_verdict
from carinspect.contracts.folders import EvaluateDir, ExportDir
from carinspect.errors import InputError
from carinspect.io import write_json_atomic
from carinspect.tracking import runs
from carinspect.tracking.registry import RegisteredVersion, register_version, to_json, version_tags

logger = logging.getLogger(__name__)


class NoBetterThanBaseline(InputError):
    """evaluate's verdict did not pass and the params do not allow registering it anyway."""


def run(
    cfg: RegisterConfig, settings: Settings, export_dir: Path, metrics: Path, run_id: str, out: Path
) -> RegisteredVersion:
    """Register ``export_dir`` from run ``run_id``; write ``out`` (registered.json)."""
    export = ExportDir(export_dir)
    export.require(export.onnx, export.card)
    evaluation = EvaluateDir(Path(metrics).parent)
    evaluation.require(Path(metrics), evaluation.verdict)
    card = read_card(export.card)  # a bad card is refused here, not on the server
    verdict = read_verdict(evaluation.verdict)
    if not verdict.passed:
        problems = "; ".join(verdict.problems())
        if cfg.require_better:
            raise NoBetterThanBaseline(
                f"not registered: {problems} (see {evaluation.verdict}; set "
                "register.require_better: false to register it anyway)"
            )
        logger.warning("registering a model the verdict did not pass: %s", problems)
    runs.append_to_run(settings, run_id, {}, "register.", params={"register": cfg.model_dump()})
    tags = version_tags(settings, run_id, card.to_json(), json.loads(Path(metrics).read_text()))
    tags["verdict"] = "passed" if verdict.passed else "failed: " + "; ".join(verdict.problems())
    version = register_version(settings, run_id, cfg.model_name, export_dir, card, tags, cfg.alias)
    write_json_atomic(Path(out), to_json(version))
    return version
