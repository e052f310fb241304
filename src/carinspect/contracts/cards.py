"""The JSON contracts between stages, promotion and serving, each one pydantic model.

- :data:`DecisionRule`: how probabilities become an answer (threshold writes it in
  threshold.json, export copies it into model.json, serving applies it);
- :class:`ModelCard`: model.json, everything besides the ONNX graph that a consumer of an exported
  or registered model needs (classes, preprocessing, temperature, decision rule, input/outputs,
  parity figures, lineage).

Every reader validates through these models, so a model.json is accepted or refused by the same
rules in export, register, the promotion gate and the server, and the error names the file and
the field. Unknown keys are refused: a card from a newer carinspect that this one cannot honour
is not served half-understood.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from carinspect.data.preprocess import PreprocessSpec
from carinspect.errors import InputError

Probability = Annotated[float, Field(ge=0.0, le=1.0)]


class ContractError(InputError):
    """A contract file that is missing, not JSON, or not what its model says."""


class _Contract(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BinaryRule(_Contract):
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


class MulticlassRule(_Contract):
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


class InputSpec(_Contract):
    """The ONNX graph's input."""

    name: str
    shape: list[str | int] = Field(min_length=4, max_length=4)
    dtype: Literal["float32"] = "float32"


class Parity(_Contract):
    """How closely an exported file matched PyTorch on the val images."""

    images: int = Field(ge=1)
    max_abs_diff: float = Field(ge=0.0)
    decision_flips: int = Field(ge=0)
    execution_provider: str


class ModelCard(_Contract):
    """model.json: what a model needs beside its ONNX graph."""

    name: str = Field(min_length=1)
    classes: list[str] = Field(min_length=2)
    preprocess: PreprocessSpec
    temperature: float = Field(1.0, gt=0.0)
    decision: DecisionRule
    input: InputSpec
    outputs: list[str] = Field(min_length=1)
    opset: int | None = None
    files: dict[str, str] = Field(default_factory=lambda: {"fp32": "model.onnx"})
    parity: dict[str, Parity] = Field(default_factory=dict)
    lineage: dict[str, str | int | float | bool] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> ModelCard:
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes {self.classes} repeat a name")
        if self.decision.classes != self.classes:
            raise ValueError(
                f"the decision rule's classes {self.decision.classes} are not the model's "
                f"{self.classes}"
            )
        side = self.preprocess.img_size
        if self.input.shape[1:] != [3, side, side]:
            raise ValueError(f"input shape {self.input.shape} does not match img_size {side}")
        return self

    @property
    def rule(self) -> dict[str, Any]:
        """The decision rule as the plain dict :func:`decide_from_spec` applies."""
        return self.decision.model_dump()

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form (what model.json holds)."""
        return self.model_dump(mode="json")


def explain(err: ValidationError) -> str:
    """The first problem of ``err`` in words: ``has no decision``, ``decision.t_low: ...``."""
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"] if not str(p).startswith(("binary", "multi")))
    if first["type"] == "missing":
        return f"has no {where}"
    if first["type"] == "extra_forbidden":
        return f"has an unknown field {where}"
    message = first["msg"].removeprefix("Value error, ")
    return f"{where}: {message}" if where else message


_M = TypeVar("_M", bound=BaseModel)


def _read(path: Path, what: str) -> Any:
    path = Path(path)
    if not path.is_file():
        raise ContractError(f"{path}: not found ({what})")
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise ContractError(f"{path}: not JSON ({err})") from None


def parse_card(data: Any, source: str) -> ModelCard:
    """Validate parsed model.json content; ``source`` names it in the error."""
    try:
        return ModelCard.model_validate(data)
    except ValidationError as err:
        raise ContractError(f"{source} {explain(err)}") from None


def read_card(path: Path) -> ModelCard:
    """model.json at ``path``, validated."""
    return parse_card(_read(path, "the model card export writes"), str(path))


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
    return parse_rule(_read(path, "the decision rule threshold writes"), str(path))
