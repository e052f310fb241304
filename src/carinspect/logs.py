"""Logging set-up, called once by each entry point (CLI, KFP component, server)."""

from __future__ import annotations

import logging
import os


def configure_logging(verbose: bool = False, level: int | str | None = None) -> None:
    """Log to stderr; ``verbose`` or CARINSPECT_LOG_LEVEL=DEBUG shows debug lines.

    ``level`` sets the level outright: a spawned worker process (DDP) passes its parent's, so
    its lines look like the parent's.
    """
    if level is None:
        level = logging.DEBUG if verbose else os.environ.get("CARINSPECT_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        force=True,
    )
    for noisy in ("botocore", "boto3", "urllib3", "PIL", "s3transfer", "matplotlib"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
