"""KFP v2 components: one per stage, each a thin adapter around carinspect.stages.<stage>.run.

The functions are plain Python (tests call them directly); :func:`build` wraps them as
lightweight components on the project image. They import carinspect inside their bodies (KFP
ships each function's source to the pod) and install nothing at run time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kfp import dsl

from components.evaluate import evaluate
from components.export import export
from components.ingest import ingest
from components.pick_best import pick_best
from components.register import register
from components.sample_trials import sample_trials
from components.split import split
from components.threshold import threshold
from components.train import train

FUNCTIONS: dict[str, Callable[..., Any]] = {
    "ingest": ingest,
    "split": split,
    "train": train,
    "evaluate": evaluate,
    "threshold": threshold,
    "export": export,
    "register": register,
    "sample_trials": sample_trials,
    "pick_best": pick_best,
}


@dataclass(frozen=True)
class Components:
    """The components, ready to call inside a pipeline."""

    ingest: Any
    split: Any
    train: Any
    evaluate: Any
    threshold: Any
    export: Any
    register: Any
    sample_trials: Any
    pick_best: Any


def build(image: str, train_image: str) -> Components:
    """Wrap the stage functions as components on ``image`` (train on ``train_image``)."""
    made = {
        # the image has kfp (a carinspect dependency): nothing is pip-installed in the pod
        name: dsl.component(
            func,
            base_image=train_image if name == "train" else image,
            install_kfp_package=False,
        )
        for name, func in FUNCTIONS.items()
    }
    return Components(**made)
