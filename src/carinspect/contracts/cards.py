"""The JSON contracts between stages, promotion and serving that describe a model.

- :class:`ModelCard`: model.json, everything besides the ONNX graph that a consumer of an exported
  or registered model needs (classes, preprocessing, temperature, decision rule, input/outputs,
  parity figures, lineage); a model with several tasks lists them instead (:class:`TaskCard`:
  each task's classes, temperature, decision rule and ONNX output);
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
from carinspect.contracts.onnx_names import OUTPUTS
from carinspect.contracts.preprocess import PreprocessSpec
from carinspect.contracts.rules import DecisionRule
from carinspect.contracts.tasks import TaskSpec


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


class PrecisionGate(Contract):
    """A lower-precision graph against FP32 on every val photo, and whether it was kept."""

    file: str | None = Field(description="the graph's file; None: it missed its gate, not written")
    images: int = Field(ge=1)
    decision_flips: int = Field(ge=0)
    flip_rate: float = Field(ge=0.0, le=1.0)
    recall_fp32: dict[str, float]  # "class" (one task) or "task/class" -> recall on the val split
    recall: dict[str, float]
    worst_recall_drop: float
    ece_fp32: float = Field(ge=0.0)
    ece: float = Field(ge=0.0)
    tensorrt: str | None = Field(
        None, description="why TensorRT would refuse the graph (asymmetric zero points); None: "
        "it takes it (or the card predates the check)",
    )  # fmt: skip
    max_flip_rate: float
    max_recall_drop: float
    passed: bool


class TaskCard(Contract):
    """One head of a multi-task model: its answer and where the graph gives its probabilities."""

    name: str
    classes: list[str] = Field(min_length=2)
    temperature: float = Field(1.0, gt=0.0)
    decision: DecisionRule
    output: str = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> TaskCard:
        TaskSpec(name=self.name, classes=self.classes)  # the same naming rules as training
        if self.decision.classes != self.classes:
            raise ValueError(
                f"task {self.name!r}: the decision rule's classes {self.decision.classes} are "
                f"not the task's {self.classes}"
            )
        return self

    @property
    def rule(self) -> dict[str, Any]:
        """The decision rule as the plain dict :func:`decide_from_spec` applies."""
        return self.decision.model_dump()


class McDropout(Contract):
    """How to sample the model's dropout at serving time (Monte Carlo dropout).

    ``head`` is an ONNX file beside model.onnx: (features, mask) -> probabilities per task;
    ``features`` is the output of model.onnx it takes; ``rate`` the model's dropout rate.
    """

    rate: float = Field(gt=0.0, lt=1.0)
    head: str = Field(min_length=1)
    features: str = Field(min_length=1)
    max_abs_diff: float = Field(0.0, ge=0.0, description="head vs model with no dropout")


class Explain(Contract):
    """Whether the graph explains its answers: the class activation map output, or why not.

    ``output`` (N, classes of all tasks side by side, h, w): each class's evidence at each
    position of the last feature map, its mean over positions the class's logit less the
    classifier's bias; ``grid`` is (h, w). Without it, ``unavailable`` says why.
    """

    output: str | None = None
    grid: list[int] | None = Field(None, min_length=2, max_length=2)
    unavailable: str | None = None

    @model_validator(mode="after")
    def _one_of(self) -> Explain:
        if (self.output is None) == (self.unavailable is None):
            raise ValueError("explain takes an output (with its grid) or a reason, not both")
        if self.output is not None and self.grid is None:
            raise ValueError(f"explain.output {self.output!r} has no grid")
        return self


class ModelCard(Contract):
    """model.json: what a model needs beside its ONNX graph.

    One task: ``classes``, ``temperature`` and ``decision``. Several: ``tasks`` instead, one
    :class:`TaskCard` each, in the order of the heads.
    """

    name: str = Field(min_length=1)
    classes: list[str] | None = Field(None, min_length=2)
    preprocess: PreprocessSpec
    temperature: float = Field(1.0, gt=0.0)
    decision: DecisionRule | None = None
    tasks: list[TaskCard] | None = Field(None, min_length=2)
    input: InputSpec
    outputs: list[str] = Field(min_length=1)
    opset: int | None = None
    files: dict[str, str] = Field(default_factory=lambda: {"fp32": "model.onnx"})
    parity: dict[str, Parity] = Field(default_factory=dict)
    int8: PrecisionGate | None = Field(None, description="export.quantize: int8's gate figures")
    mc_dropout: McDropout | None = None
    explain: Explain | None = Field(None, description="class activation maps (None: older card)")
    lineage: dict[str, str | int | float | bool] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> ModelCard:
        if self.tasks is not None:
            self._check_tasks(self.tasks)
        else:
            if OUTPUTS[1] not in self.outputs:
                raise ValueError(f"outputs {self.outputs} have no {OUTPUTS[1]!r}")
            if self.classes is None:
                raise ValueError("has no classes (nor tasks)")
            if self.decision is None:
                raise ValueError("has no decision")
            if len(set(self.classes)) != len(self.classes):
                raise ValueError(f"classes {self.classes} repeat a name")
            if self.decision.classes != self.classes:
                raise ValueError(
                    f"the decision rule's classes {self.decision.classes} are not the model's "
                    f"{self.classes}"
                )
        if self.mc_dropout is not None and self.mc_dropout.features not in self.outputs:
            raise ValueError(
                f"mc_dropout.features {self.mc_dropout.features!r} is not among the outputs "
                f"{self.outputs}"
            )
        if self.explain is not None and self.explain.output not in (None, *self.outputs):
            raise ValueError(
                f"explain.output {self.explain.output!r} is not among the outputs {self.outputs}"
            )
        side = self.preprocess.img_size
        if self.input.shape[1:] != [3, side, side]:
            raise ValueError(f"input shape {self.input.shape} does not match img_size {side}")
        return self

    def why_no_int8(self) -> str:
        """Why the card lists no INT8 graph: it missed its gate, or none was made."""
        if self.int8 is not None and not self.int8.passed:
            return "its INT8 graph missed the gate at export"
        return "it was exported without one (export.quantize: int8)"

    def _check_tasks(self, tasks: list[TaskCard]) -> None:
        if self.classes is not None or self.decision is not None:
            raise ValueError("lists tasks, so it takes no top-level classes or decision")
        names = [t.name for t in tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"tasks {names} repeat a name")
        missing = [t.output for t in tasks if t.output not in self.outputs]
        if missing:
            raise ValueError(f"task outputs {missing} are not among the outputs {self.outputs}")

    @property
    def task_cards(self) -> list[TaskCard]:
        """Every task as a TaskCard; a single-task card's one task is named ``label``."""
        if self.tasks is not None:
            return list(self.tasks)
        assert self.classes is not None and self.decision is not None  # checked at validation
        return [
            TaskCard(
                name="label",
                classes=self.classes,
                temperature=self.temperature,
                decision=self.decision,
                output=OUTPUTS[1],
            )
        ]

    @property
    def multitask(self) -> bool:
        """Several heads: answers are keyed by task."""
        return self.tasks is not None

    @property
    def rule(self) -> dict[str, Any]:
        """The decision rule as the plain dict :func:`decide_from_spec` applies (one task)."""
        if self.decision is None:
            raise ContractError(f"model {self.name!r} has several tasks, so no single rule")
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
