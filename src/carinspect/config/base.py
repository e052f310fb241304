"""What every section of params.yaml shares: strict, frozen, no unknown keys."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from carinspect.errors import InputError

SPLIT_NAMES: tuple[str, ...] = ("train", "val", "test")


class ConfigError(InputError):
    """A params file that cannot be used; the message names the file and the key."""


class Section(BaseModel):
    """A params.yaml section: strict types, frozen, unknown keys refused."""

    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")
