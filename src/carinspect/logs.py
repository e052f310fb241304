"""Logging set-up, called once by each entry point (CLI, KFP component, server)."""

from __future__ import annotations

import logging
import os


def configure_logging(verbose: bool = False) -> None:
    """Log to stderr; ``verbose`` or CARINSPECT_LOG_LEVEL=DEBUG shows debug lines."""
    level = logging.DEBUG if verbose else os.environ.get("CARINSPECT_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        force=True,
    )
    for noisy in ("botocore", "boto3", "urllib3", "PIL", "s3transfer", "matplotlib"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
