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
    folds: int = Field(5, ge=2, le=20, description="cross-validation folds over train+val")
    features: Literal["auto", "pretrained", "checkpoint"] = Field(
        "auto",
        description="what the photos are described by: pretrained (the weights train starts "
        "from, which never saw these labels), checkpoint (the trained backbone: it has learnt "
        "the given labels, so it flags fewer); auto: pretrained when model.pretrained",
    )
    seed: int = Field(0, description="the folds' shuffle")
    shown: int = Field(48, ge=0, le=1000, description="suspects shown with thumbnails in the page")
