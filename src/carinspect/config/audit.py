"""The audit section: `carinspect labels audit`, the search for wrong labels."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from carinspect.config.base import Section


class AuditConfig(Section):
    """Out-of-sample class probabilities for every train and val photo, then cleanlab."""

    enabled: bool = Field(
        False, description="true: `dvc repro` runs the audit (its stage is a no-op otherwise)"
    )
    method: Literal["neighbours", "logistic"] = Field(
        "neighbours",
        description="out-of-sample probabilities: neighbours (the labels of each photo's "
        "nearest others by cosine similarity, itself left out) or logistic (a logistic "
        "regression fitted on the other folds)",
    )
    neighbours: int = Field(10, ge=3, le=100, description="with method neighbours: how many")
    folds: int = Field(5, ge=2, le=20, description="with method logistic: cross-validation folds")
    features: Literal["auto", "pretrained", "checkpoint"] = Field(
        "auto",
        description="what the photos are described by: pretrained (the weights train starts "
        "from, which never saw these labels), checkpoint (the trained backbone: it has learnt "
        "the given labels, so it flags fewer); auto: pretrained when model.pretrained",
    )
    seed: int = Field(0, description="the folds' shuffle")
    shown: int = Field(48, ge=0, le=1000, description="suspects shown with thumbnails in the page")
