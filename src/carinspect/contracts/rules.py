"""The decision rule: how probabilities become an answer.

threshold writes it in threshold.json (with a per-split report beside it), export copies it into
model.json, and serving applies it (:func:`carinspect.evaluation.decision.decide_from_spec`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, TypeAdapter, ValidationError, model_validator

from carinspect.contracts.base import Contract, ContractError, explain, read_json

Probability = Annotated[float, Field(ge=0.0, le=1.0)]


class BinaryRule(Contract):
    """Two classes: the positive class at or above ``t_high``, the other below ``t_low``.

    Between the two the answer is ``uncertain`` (a band of zero width when they are equal).
    """

    task: Literal["binary"]
    classes: list[str] = Field(min_length=2, max_length=2)
    positive_class: str
    negative_class: str
    target_precision: Probability | None = None
    threshold: Probability
    t_low: Probability
    t_high: Probability
    fallback: bool = False
    val_precision_at_threshold: Probability | None = None
    val_recall_at_threshold: Probability | None = None

    @model_validator(mode="after")
    def _consistent(self) -> BinaryRule:
        if sorted([self.positive_class, self.negative_class]) != sorted(self.classes):
            raise ValueError(
                f"positive_class {self.positive_class!r} and negative_class "
                f"{self.negative_class!r} are not the classes {self.classes}"
            )
        if self.t_low > self.t_high:
            raise ValueError(f"t_low {self.t_low} is above t_high {self.t_high}")
        return self


class MulticlassRule(Contract):
    """Any number of classes: the most probable one, unless below its minimum confidence."""

    task: Literal["multiclass"]
    classes: list[str] = Field(min_length=2)
    min_confidence: Probability = 0.0
    per_class: dict[str, Probability] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known_classes(self) -> MulticlassRule:
        unknown = sorted(set(self.per_class) - set(self.classes))
        if unknown:
            raise ValueError(f"per_class names {unknown}, not among the classes {self.classes}")
        return self


DecisionRule = Annotated[BinaryRule | MulticlassRule, Field(discriminator="task")]
_RULE: TypeAdapter[BinaryRule | MulticlassRule] = TypeAdapter(DecisionRule)


def parse_rule(data: Any, source: str) -> BinaryRule | MulticlassRule:
    """Validate a decision rule (threshold.json's ``splits`` report is not part of it)."""
    if isinstance(data, dict):
        data = {k: v for k, v in data.items() if k != "splits"}
    try:
        return _RULE.validate_python(data)
    except ValidationError as err:
        raise ContractError(f"{source} {explain(err)}") from None


def read_rule(path: Path) -> BinaryRule | MulticlassRule:
    """The decision rule in threshold.json at ``path``."""
    return parse_rule(read_json(path, "the decision rule threshold writes"), str(path))
