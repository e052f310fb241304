"""What every contract shares: its error, its strictness, and how a refusal is worded."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from carinspect.errors import InputError


class ContractError(InputError):
    """A contract file that is missing, not JSON, or not what its model says."""


class Contract(BaseModel):
    """Frozen, and unknown keys refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)


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


def read_json(path: Path, what: str) -> Any:
    """Parsed JSON at ``path``; ``what`` says which contract it should be."""
    path = Path(path)
    if not path.is_file():
        raise ContractError(f"{path}: not found ({what})")
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise ContractError(f"{path}: not JSON ({err})") from None
