"""A run's status tells the truth: FAILED or KILLED when its process failed, never RUNNING forever.

MLflow ends a run only when the process that opened it ends it. A fault run (issue 38) found
runs left RUNNING by a killed train and by a tracking server that went away, and the next
``dvc repro`` opened another beside them. Here:

- :func:`ended_on_failure` ends the active run FAILED when the block raises and KILLED on
  SIGTERM or Ctrl-C (a pod being evicted, DVC interrupted), then lets the error go on;
- a run carries the host and process that hold it (``carinspect.host``, ``carinspect.pid``,
  ``carinspect.stage``); :func:`close_abandoned`, called before a new run is opened, marks FAILED
  the RUNNING runs of this host whose process is gone (SIGKILL, OOM kill, power loss), with a
  tag saying who closed them and why;
- :func:`bound_retries` caps MLflow's own retries (by default seven, with back-off: minutes
  against a server that is gone) unless the environment sets them: a stage fails within seconds
  of an outage instead of after ~4 minutes, and then again in MLflow's exit handler.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

from carinspect.io import pid_alive

logger = logging.getLogger(__name__)

HOST_TAG, PID_TAG, STAGE_TAG = "carinspect.host", "carinspect.pid", "carinspect.stage"
CLOSED_TAG = "carinspect.closed_by"
# MLflow's own variables, read at each request: what a stage uses unless the environment says
RETRY_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",  # waits of ~1, 2 and 4 s: about 10 s in all
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
}


class Terminated(BaseException):
    """SIGTERM arrived: unwind like Ctrl-C, so the run is ended KILLED and staging removed."""


def bound_retries() -> None:
    """Cap MLflow's HTTP retries (see the module docstring) where the environment does not."""
    for key, value in RETRY_DEFAULTS.items():
        os.environ.setdefault(key, value)


def owner_tags(stage: str) -> dict[str, str]:
    """The tags that say which process on which host holds a run."""
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid()), STAGE_TAG: stage}


def close_abandoned(client: Any, experiment_id: str, closer: str) -> list[str]:
    """Mark FAILED the RUNNING runs of ``experiment_id`` held by a process of this host that is gone.

    Runs of other hosts are left alone (their process cannot be asked). Returns their ids.
    """
    host = socket.gethostname()
    found = client.search_runs(
        [experiment_id],
        filter_string=f"attributes.status = 'RUNNING' and tags.`{HOST_TAG}` = '{host}'",
        max_results=200,
    )
    closed = []
    for run in found:
        pid = run.data.tags.get(PID_TAG, "")
        if not pid.isdigit() or int(pid) == os.getpid() or pid_alive(int(pid)):
            continue
        why = f"{closer}: process {pid} on {host} that held it was gone (killed)"
        client.set_tag(run.info.run_id, CLOSED_TAG, why)
        client.set_terminated(run.info.run_id, "FAILED")
        closed.append(run.info.run_id)
        logger.warning(
            "MLflow run %s was left RUNNING by a killed process: marked FAILED", run.info.run_id
        )
    return closed


def _end_active(status: str) -> None:
    """End the active run with ``status``; a registry that cannot be reached costs one try."""
    import mlflow

    run = mlflow.active_run()
    if run is None:
        return
    try:
        mlflow.end_run(status=status)  # pops the run first: MLflow's exit handler will not retry
    except Exception as err:  # the error that brought us here is the one to report
        logger.warning("could not mark MLflow run %s %s: %s", run.info.run_id, status, err)


@contextlib.contextmanager
def ended_on_failure() -> Iterator[None]:
    """End the active run FAILED if the block raises, KILLED on SIGTERM or Ctrl-C; re-raise."""
    previous = None
    if threading.current_thread() is threading.main_thread():

        def terminate(signum: int, frame: FrameType | None) -> None:
            raise Terminated(f"signal {signum}")

        previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    except (Terminated, KeyboardInterrupt):
        _end_active("KILLED")
        raise
    except BaseException:
        _end_active("FAILED")
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
