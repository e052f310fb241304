"""The feedback policy on a real exported model: which answers are worth a look, and the budgets."""

from pathlib import Path

import numpy as np
import pytest

from carinspect.contracts.feedback import KeptBecause
from carinspect.drift.profile import EMBEDDING
from carinspect.serving.inference import answer
from carinspect.serving.loaded import LoadedModel, ModelRef, PhotoScores
from carinspect.serving.opening import open_model
from carinspect.serving.selection import Budget, Policy
from carinspect.serving.settings import ServeSettings


@pytest.fixture(scope="module")
def model(upstream: dict[str, Path]) -> LoadedModel:
    folder = upstream["export"]
    return open_model(ModelRef.parse(str(folder)), None, folder, ServeSettings())


def _policy(**env: object) -> Policy:
    quiet = {"FEEDBACK_PERCENT": 0, "FEEDBACK_MARGIN": 0, "FEEDBACK_MC_STD": 0,
             "FEEDBACK_DRIFT_FACTOR": 0, "FEEDBACK_UNCERTAIN": False}  # fmt: skip
    return Policy(ServeSettings(**{**quiet, **env}))


def _scores(model: LoadedModel, first: float, **extra: object) -> PhotoScores:
    """A photo whose first class has probability ``first`` (the rest share what is left)."""
    k = len(model.classes)
    probs = np.full(k, (1.0 - first) / (k - 1), dtype=np.float32)
    probs[0] = first
    return PhotoScores(probs, **extra)  # type: ignore[arg-type]


def _kinds(found: list[KeptBecause]) -> list[str]:
    return [r.kind for r in found]


def test_a_close_call_is_kept_for_its_margin_and_a_confident_one_is_not(
    model: LoadedModel,
) -> None:
    policy = _policy(FEEDBACK_MARGIN=0.2)
    close = _scores(model, 0.55)
    found = policy.reasons(model, close, answer(model, close))
    assert _kinds(found) == ["margin"] and found[0].score == pytest.approx(0.9, abs=1e-3)
    sure = _scores(model, 0.97)
    assert policy.reasons(model, sure, answer(model, sure)) == []


def test_an_uncertain_answer_is_kept(model: LoadedModel) -> None:
    band = ServeSettings(T_LOW=0.3, T_HIGH=0.9)
    banded = open_model(model.ref, None, model.folder, band)
    assert banded.decision["task"] == "binary"
    scores = _scores(banded, 0.5)
    reply = answer(banded, scores)
    assert reply.labels == {"label": "uncertain"}
    assert "uncertain" in _kinds(_policy(FEEDBACK_UNCERTAIN=True).reasons(banded, scores, reply))
    assert _policy().reasons(banded, scores, reply) == []  # every reason off


def test_mc_spread_is_a_reason_when_the_model_samples(model: LoadedModel) -> None:
    k = len(model.classes)
    spread = _scores(model, 0.9, mc_mean=np.full(k, 0.5), mc_std=np.full(k, 0.3))
    found = _policy(FEEDBACK_MC_STD=0.1).reasons(model, spread, answer(model, spread))
    assert _kinds(found) == ["mc_spread"] and found[0].score == pytest.approx(0.6)
    calm = _scores(model, 0.9, mc_mean=np.full(k, 0.5), mc_std=np.full(k, 0.02))
    assert _policy(FEEDBACK_MC_STD=0.1).reasons(model, calm, answer(model, calm)) == []


def test_a_photo_far_from_anything_trained_on_is_kept_as_drift(model: LoadedModel) -> None:
    assert model.drift is not None
    high = model.drift.profile.stats[EMBEDDING].edges[-1]
    policy = _policy(FEEDBACK_DRIFT_FACTOR=2.0)
    far = _scores(model, 0.97, distance=high * 4)
    found = policy.reasons(model, far, answer(model, far))
    assert _kinds(found) == ["drift"] and found[0].score == pytest.approx(0.75, abs=1e-4)
    assert "embedding distance" in found[0].detail
    near = _scores(model, 0.97, distance=high * 1.5)
    assert policy.reasons(model, near, answer(model, near)) == []


def test_the_random_share_only_takes_photos_without_a_reason(model: LoadedModel) -> None:
    sure = _scores(model, 0.97)
    everything = _policy(FEEDBACK_PERCENT=100)
    assert _kinds(everything.reasons(model, sure, answer(model, sure))) == ["random"]
    close = _scores(model, 0.55)
    both = _policy(FEEDBACK_PERCENT=100, FEEDBACK_MARGIN=0.2)
    assert _kinds(both.reasons(model, close, answer(model, close))) == ["margin"]
    share = _policy(FEEDBACK_PERCENT=10)
    kept = sum(bool(share.reasons(model, sure, answer(model, sure))) for _ in range(2000))
    assert 140 < kept < 260  # about 10% of 2000


def test_reasons_come_strongest_first_and_name_their_task(model: LoadedModel) -> None:
    high = model.drift.profile.stats[EMBEDDING].edges[-1] if model.drift else 1.0
    photo = _scores(model, 0.7, distance=high * 100)
    found = _policy(FEEDBACK_MARGIN=0.5, FEEDBACK_DRIFT_FACTOR=2.0).reasons(
        model, photo, answer(model, photo)
    )
    assert _kinds(found) == ["drift", "margin"]
    assert [r.score for r in found] == sorted((r.score for r in found), reverse=True)
    assert found[1].task == model.tasks[0].name and found[0].task == ""


def test_a_disagreement_is_a_reason_per_task_it_differs_on(model: LoadedModel) -> None:
    ours = answer(model, _scores(model, 0.97))
    other = _scores(model, 0.02)
    theirs = answer(model, other)
    assert ours.labels != theirs.labels
    found = _policy(FEEDBACK_DISAGREEMENTS=True).disagreement(ours, theirs)
    assert _kinds(found) == ["disagreement"] and found[0].score == 1.0
    assert found[0].detail == f"shadow said {theirs.labels['label']}"
    assert _policy(FEEDBACK_DISAGREEMENTS=True).disagreement(ours, ours) == []
    assert _policy(FEEDBACK_DISAGREEMENTS=False).disagreement(ours, theirs) == []


def test_budgets_per_hour_and_per_class_reset_on_the_hour() -> None:
    now = [3600.0 * 10]
    budget = Budget(per_hour=5, per_class=2, clock=lambda: now[0])
    dirty, clean = {"label": "dirty"}, {"label": "clean"}
    assert [budget.take(dirty) for _ in range(3)] == [None, None, "class"]
    assert [budget.take(clean) for _ in range(2)] == [None, None]
    assert budget.take({"label": "muddy"}) is None  # the fifth of the hour
    assert budget.take({"label": "wet"}) == "hour"
    now[0] += 3600  # the next clock hour: both budgets afresh
    assert budget.take(dirty) is None
    several = Budget(per_hour=0, per_class=1, clock=lambda: now[0])
    assert several.take({"clean": "dirty", "damage": "dent"}) is None
    assert several.take({"clean": "clean", "damage": "dent"}) == "class"  # dent's is spent
