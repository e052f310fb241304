"""``carinspect drift``: a folder, an S3 prefix or a feedback log scored against a version's profile.

The photos go through the model exactly as served ones do (:func:`predict_inputs`, the same
decoding, preprocessing and statistics), into a window as large as the set, and the report is
what /metrics would show after serving them: a PSI per statistic and per task's answered-class
mix, each against the alert level drift.json carries.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from carinspect.data.decoding.images import ImageLimits
from carinspect.errors import InputError
from carinspect.serving.batch_predict import Reader, label_counts, list_inputs, predict_inputs
from carinspect.serving.loaded import LoadedModel, ModelLoadError
from carinspect.serving.model_store import ModelStore
from carinspect.serving.settings import ServeSettings

SIDE_FILES = (".json", ".csv", ".md")  # a feedback log's records beside its photos: not photos
MOST = 100_000  # DRIFT_WINDOW's ceiling: a larger set is scored on its last photos


@dataclass(frozen=True)
class DriftReport:
    """The scores of one set of photos against one model version's profile."""

    source: str
    model: str
    photos: int
    unusable: int
    reference_images: int
    alert_psi: float
    image: dict[str, float]
    classes: dict[str, float]
    answered: dict[str, dict[str, int]] = field(default_factory=dict)
    minimum: int = 1  # DRIFT_MIN_PHOTOS: fewer answered photos are scored but not judged

    @property
    def judged(self) -> bool:
        """Enough answered photos for the scores to mean something."""
        return self.photos - self.unusable >= self.minimum

    @property
    def alerts(self) -> list[str]:
        """The scores above the alert level, by name (``classes:<task>`` for a class mix)."""
        if not self.judged:
            return []
        named = {**self.image, **{f"classes:{t}": v for t, v in self.classes.items()}}
        return [name for name, v in named.items() if v > self.alert_psi]

    def to_json(self) -> dict[str, Any]:
        """The report as written by ``--out``."""
        return {
            "source": self.source, "model": self.model, "photos": self.photos,
            "unusable": self.unusable, "reference_images": self.reference_images,
            "alert_psi": self.alert_psi, "psi": self.image, "class_psi": self.classes,
            "answered": self.answered, "alerts": self.alerts, "judged": self.judged,
            "min_photos": self.minimum,
        }  # fmt: skip

    def text(self) -> str:
        """The report as the command prints it."""
        lines = [
            f"{self.photos} photos from {self.source} ({self.unusable} unusable) against "
            f"{self.model}, profiled on {self.reference_images} training photos",
            f"{'score':<24}{'PSI':>8}",
        ]
        rows = [*self.image.items(), *((f"classes:{t}", v) for t, v in self.classes.items())]
        for name, value in rows:
            flag = "  ALERT" if self.judged and value > self.alert_psi else ""
            lines.append(f"{name:<24}{value:>8.3f}{flag}")
        for task, counts in self.answered.items():
            lines.append(f"answered {task}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
        if not self.judged:
            lines.append(
                f"not judged: {self.photos - self.unusable} answered photos, fewer than "
                f"DRIFT_MIN_PHOTOS {self.minimum} (a PSI over so few photos is noise)"
            )
            return "\n".join(lines)
        verdict = ", ".join(self.alerts) if self.alerts else "none"
        lines.append(f"alerts (PSI above {self.alert_psi:g}): {verdict}")
        return "\n".join(lines)


def photos_in(target: str) -> list[tuple[str, Reader]]:
    """The photos under ``target``, leaving out a feedback log's record files."""
    found = [(n, r) for n, r in list_inputs(target) if not n.lower().endswith(SIDE_FILES)]
    if not found:
        raise InputError(f"{target}: no photos here")
    return found[-MOST:]


def load_for_drift(uri: str, photos: int) -> LoadedModel:
    """The model at ``uri`` with a drift window of ``photos``; refused without a profile."""
    settings = ServeSettings(MODEL_URI=uri, DRIFT_WINDOW=max(1, min(photos, MOST)))
    store = ModelStore(settings)
    if not store.refresh() or store.current is None:
        raise ModelLoadError(f"{uri}: {store.last_error or 'no model'}")
    model = store.current
    if model.drift is None:
        raise InputError(
            f"{uri}: this version has no drift.json (exported before drift profiles, or it "
            "did not read): export and register it again"
        )
    return model


def drift_report(
    model: LoadedModel, target: str, items: list[tuple[str, Reader]], settings: ServeSettings
) -> DriftReport:
    """Answer every photo with ``model`` and score its window."""
    assert model.drift is not None
    limits = ImageLimits(max_pixels=settings.max_pixels, max_bytes=settings.max_upload_bytes)
    rows = predict_inputs(model, items, limits, settings.max_batch_size)
    answered = label_counts(model, rows)
    scores = model.drift.scores()
    which = f"{model.ref.name} version {model.version}" if model.version else str(model.folder)
    return DriftReport(
        source=target,
        model=which,
        photos=len(rows),
        unusable=sum(1 for r in rows if "error" in r),
        reference_images=model.drift.profile.images,
        alert_psi=model.drift.profile.alert_psi,
        image={k: round(v, 4) for k, v in scores["image"].items()},
        classes={k: round(v, 4) for k, v in scores["classes"].items()},
        answered={t: dict(sorted(c.items())) for t, c in answered.items()},
        minimum=settings.drift_min_photos,
    )
