"""The JSON contracts between stages, promotion and serving that describe a model.

- :class:`ModelCard`: model.json, everything besides the ONNX graph that a consumer of an exported
  or registered model needs (classes, preprocessing, temperature, decision rule, input/outputs,
  parity figures, lineage);
- :class:`RunRef`: run.json, the MLflow run train opened and the later stages add to.

Every reader validates through these models, so a model.json is accepted or refused by the same
rules in export, register, the promotion gate and the server, and the error names the file and
the field. Unknown keys are refused: a card from a newer carinspect that this one cannot honour
is not served half-understood.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from carinspect.contracts.base import Contract, ContractError, explain, read_json
from carinspect.contracts.preprocess import PreprocessSpec
from carinspect.contracts.rules import DecisionRule


class InputSpec(Contract):
    """The ONNX graph's input."""

    name: str
    shape: list[str | int] = Field(min_length=4, max_length=4)
    dtype: Literal["float32"] = "float32"


class Parity(Contract):
    """How closely an exported file matched PyTorch on the val images."""

    images: int = Field(ge=1)
    max_abs_diff: float = Field(ge=0.0)
    decision_flips: int = Field(ge=0)
    execution_provider: str


class ModelCard(Contract):
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


def parse_card(data: Any, source: str) -> ModelCard:
    """Validate parsed model.json content; ``source`` names it in the error."""
    try:
        return ModelCard.model_validate(data)
    except ValidationError as err:
        raise ContractError(f"{source} {explain(err)}") from None


def read_card(path: Path) -> ModelCard:
    """model.json at ``path``, validated."""
    return parse_card(read_json(path, "the model card export writes"), str(path))


class RunRef(BaseModel):
    """run.json: the MLflow run train opened, which later stages append to."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    run_id: str = Field(min_length=1)
    tracking_uri: str | None = None
    experiment: str | None = None
    best_checkpoint: str | None = None


def read_run_ref(run_json: Path | None) -> RunRef | None:
    """The run reference in ``run_json``; None without the file, an error when it is malformed."""
    if run_json is None or not Path(run_json).is_file():
        return None
    try:
        return RunRef.model_validate_json(Path(run_json).read_text())
    except ValidationError as err:
        raise ContractError(
            f"{run_json}: not a run reference from train ({explain(err)}); re-run train to "
            "rewrite it"
        ) from None
