"""Training augmentations from params: a list of albumentations transform specs.

Each spec is ``{name: <albumentations class>, <argument>: <value>, ...}``; lists become tuples, as
albumentations expects ranges. The pipeline works on HxWx3 uint8 arrays and is followed by the
shared :func:`carinspect.data.loading.preprocess.preprocess`, so augmentation never changes how the final
resize and normalisation are done.
"""

from __future__ import annotations

import difflib
import os
from typing import Any

import numpy as np

from carinspect.errors import InputError


class AugmentError(InputError):
    """A transform spec that albumentations cannot build."""


def _tuples(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    return value


def build_augment(specs: list[dict[str, Any]]) -> Any:
    """Build an ``albumentations.Compose`` from ``specs`` (errors name the offending entry)."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    import albumentations as A

    names = [n for n in dir(A) if n[:1].isupper()]
    transforms = []
    for i, spec in enumerate(specs):
        args = dict(spec)
        name = str(args.pop("name", ""))
        cls = getattr(A, name, None)
        if (
            cls is None
            or not isinstance(cls, type)
            or not issubclass(cls, A.BasicTransform | A.BaseCompose)
        ):
            close = difflib.get_close_matches(name, names, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise AugmentError(
                f"train.augment[{i}]: {name!r} is not an albumentations transform{hint}"
            )
        try:
            transforms.append(cls(**_tuples(args)))
        except Exception as err:  # albumentations validates with pydantic and raises various types
            raise AugmentError(f"train.augment[{i}] ({name}): {err}") from None
    return A.Compose(transforms)


def apply_augment(augment: Any, image: np.ndarray, seed: int) -> np.ndarray:
    """Run ``augment`` on ``image`` with its randomness fixed by ``seed`` (reproducible anywhere)."""
    augment.set_random_seed(seed)
    out: np.ndarray = augment(image=image)["image"]
    return out
