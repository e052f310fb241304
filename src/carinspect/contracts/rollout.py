"""The rollout record: the canary's share of traffic, kept in the model registry.

One JSON tag (:data:`TAG`) on the model version being rolled out. `carinspect rollout` writes it;
every serving replica reads it when it resolves its canary alias (each poll, or at once on
MLflow's ``model_version_tag.set`` webhook), so the share changes without a redeploy. Both sides
go through this one model.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationError, field_validator

from carinspect.config.rollout import check_schedule, schedule_text
from carinspect.contracts.base import Contract, ContractError, explain

TAG = "carinspect.rollout"
Status = Literal["running", "promoted", "aborted"]


class Rollout(Contract):
    """One version's rollout: its schedule, the step it is on, and how it ended."""

    id: str
    model: str  # the registered model
    alias: str  # the canary alias serving follows (CANARY_ALIAS)
    version: str  # the version being rolled out (the alias's target when it started)
    champion: str | None  # the champion alias's version when it started
    schedule: list[float]
    step: int = Field(ge=0)  # index into schedule
    status: Status
    started_at: str
    started_by: str
    step_started_at: str  # when the share became the current step's
    updated_at: str
    reason: str = ""  # why it ended (or the last hold)

    @field_validator("schedule")
    @classmethod
    def _rising(cls, value: list[float]) -> list[float]:
        return check_schedule(value)

    @property
    def share(self) -> float:
        """The percent of clients the canary answers now: the step's while running, else 0."""
        if self.status != "running":
            return 0.0
        return self.schedule[min(self.step, len(self.schedule) - 1)]

    @property
    def last_step(self) -> bool:
        """Whether the share is the schedule's last."""
        return self.step >= len(self.schedule) - 1

    def describe(self) -> str:
        """One line for people."""
        where = f"step {self.step + 1}/{len(self.schedule)} ({self.share:g}%)"
        if self.status != "running":
            where = f"{self.status} at step {self.step + 1}/{len(self.schedule)}"
        told = f": {self.reason}" if self.reason else ""
        return (
            f"rollout {self.id} of {self.model} version {self.version} (@{self.alias}, champion "
            f"{self.champion or '-'}): {where}, schedule {schedule_text(self.schedule)}, started "
            f"{self.started_at} by {self.started_by}{told}"
        )


def parse_rollout(text: str, where: str) -> Rollout:
    """The record read back from a tag; ``where`` (model and version) names it in the error."""
    try:
        return Rollout.model_validate_json(text)
    except ValidationError as err:
        raise ContractError(f"{where}: tag {TAG} is not a rollout record: {explain(err)}") from None
