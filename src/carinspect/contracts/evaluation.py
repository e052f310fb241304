"""verdict.json: evaluate's judgement of the model against the most-frequent-class baseline.

evaluate writes it beside metrics.json; register reads it and refuses a model that did not pass
(unless ``register.require_better: false``), and the run summary prints it. One entry per task.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, ValidationError

from carinspect.contracts.base import Contract, ContractError, explain, read_json


class TaskVerdict(Contract):
    """One task's figures on the test split and what is wrong with them (``problems``)."""

    task: str
    metric: str
    images: int = Field(ge=0)
    model: float
    model_interval: tuple[float, float]
    baseline: float
    baseline_class: str
    difference: float
    difference_interval: tuple[float, float]  # paired bootstrap: model - baseline, same photos
    temperature: float
    problems: list[str] = Field(default_factory=list)  # any one of them: not registered
    warnings: list[str] = Field(default_factory=list)  # said loudly, registered anyway

    @property
    def passed(self) -> bool:
        """No problem found."""
        return not self.problems


class Verdict(Contract):
    """Every task's verdict; the model passes when each of them does."""

    level: float = 0.95  # of the intervals
    tasks: list[TaskVerdict] = Field(min_length=1)

    @property
    def passed(self) -> bool:
        """Every task passed."""
        return all(t.passed for t in self.tasks)

    def problems(self) -> list[str]:
        """Each task's problems, prefixed with the task when there are several."""
        multi = len(self.tasks) > 1
        return [f"{t.task}: {p}" if multi else p for t in self.tasks for p in t.problems]

    def warnings(self) -> list[str]:
        """Each task's warnings, prefixed as :meth:`problems`."""
        multi = len(self.tasks) > 1
        return [f"{t.task}: {w}" if multi else w for t in self.tasks for w in t.warnings]


def read_verdict(path: Path) -> Verdict:
    """The verdict in ``path``, validated."""
    try:
        return Verdict.model_validate(read_json(path, "evaluate's verdict"))
    except ValidationError as err:
        raise ContractError(f"{path} {explain(err)}") from None
