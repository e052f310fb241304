"""Logging set-up, called once by each entry point (CLI, KFP component, server)."""

from __future__ import annotations

import logging
import os

# third-party loggers whose INFO lines are their internals: WARNING and above only
NOISY = ("botocore", "boto3", "urllib3", "PIL", "s3transfer", "matplotlib", "alembic",
         "onnxscript", "onnx_ir", "torch.onnx")  # fmt: skip


def configure_logging(verbose: bool = False, level: int | str | None = None) -> None:
    """Log to stderr; ``verbose`` or CARINSPECT_LOG_LEVEL=DEBUG shows debug lines.

    ``level`` sets the level outright: a spawned worker process (DDP) passes its parent's, so
    its lines look like the parent's.
    """
    if level is None:
        level = logging.DEBUG if verbose else os.environ.get("CARINSPECT_LOG_LEVEL", "INFO").upper()
    if not verbose:
        # MLflow sets up its own handler at import, from this variable: its INFO lines ("Creating
        # initial MLflow database tables", "Experiment ... does not exist") are its internals
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        force=True,
    )
    for noisy in NOISY:
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
