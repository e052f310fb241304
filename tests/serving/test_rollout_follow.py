"""A rollout recorded in the registry sets the canary's share of every replica, without a redeploy.

The store is test_second.py's: version 1 (champion) answers every car dirty, version 2
(challenger) every car clean, so which side answered is in each answer.
"""

import re
from collections.abc import Callable

import httpx
import pytest
from mlflow.tracking import MlflowClient

from carinspect.contracts.rollout import TAG
from carinspect.serving.second import client_bucket
from carinspect.tracking import rollout as state
from carinspect.tracking.rollout import RolloutError
from tests.serving.conftest import Server
from tests.serving.test_second import NAME, _champion_and, _post, _second, _wait, registry, template

__all__ = ["registry", "template"]  # the store's fixtures, shared with test_second.py

KEYS = [f"client-{i}" for i in range(40)]


def _versions(server: Server) -> dict[str, str]:
    """Which version answered each client."""
    return {k: _post(server.url, k).json()["model"]["version"] for k in KEYS}


def _metric(server: Server, name: str, **labels: str) -> float:
    text = httpx.get(server.url + "/metrics").text
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
            if all(found.get(k) == v for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_the_share_follows_the_rollout_within_one_poll_and_abort_sends_all_back(
    serve: Callable[..., Server], registry: str
) -> None:
    s = _champion_and(serve, registry, POLL_SECONDS="0.5")
    _wait(lambda: "not wanted" in (_second(s)["waiting_for"] or ""), 20, "canary idle", s)
    assert _second(s)["version"] is None  # no share: the canary model is not even loaded
    assert set(_versions(s).values()) == {"1"}

    client = MlflowClient(registry)
    rollout = state.start(client, NAME, "challenger", [50, 100], "tester")
    _wait(lambda: _second(s)["version"] == "2", 30, "canary loaded at 50%", s)
    assert _second(s)["canary_percent"] == 50.0 and rollout.id in _second(s)["rollout"]
    assert _versions(s) == {k: "2" if client_bucket(k) < 5000 else "1" for k in KEYS}
    assert _metric(s, "carinspect_canary_percent") == 50.0
    on_canary = sum(client_bucket(k) < 5000 for k in KEYS)
    assert _metric(s, "carinspect_answers_total", side="canary", version="2",
                   outcome="ok") == on_canary  # fmt: skip
    assert _metric(s, "carinspect_answers_total", side="canary", outcome="error") == 0.0
    assert _metric(s, "carinspect_answered_class_total", side="canary", **{"class": "clean"}) > 0

    rollout = state.advance(client, rollout, "tester", [])
    _wait(lambda: _second(s)["canary_percent"] == 100.0, 20, "share 100%", s)
    assert set(_versions(s).values()) == {"2"}

    state.abort(client, rollout, "tester", "enough")
    _wait(lambda: _second(s)["canary_percent"] == 0.0, 20, "share back to 0", s)
    assert set(_versions(s).values()) == {"1"}
    _wait(lambda: _second(s)["version"] is None, 20, "canary let go", s)
    assert "ERROR" not in s.log.read_text()


def test_without_a_rollout_canary_percent_applies(
    serve: Callable[..., Server], registry: str
) -> None:
    s = _champion_and(serve, registry, CANARY_PERCENT="100", POLL_SECONDS="0.5")
    _wait(lambda: _second(s)["version"] == "2", 30, "canary loaded", s)
    assert _second(s)["rollout"] is None and set(_versions(s).values()) == {"2"}


def test_a_rollout_is_refused_when_it_cannot_be_one(registry: str) -> None:
    client = MlflowClient(registry)
    for schedule, why in (([50, 25], "must rise at every step: 25 follows 50"),
                          ([5, 150], "share 150 is not in"), ([], "schedule is empty")):  # fmt: skip
        with pytest.raises(RolloutError, match=why):
            state.start(client, NAME, "challenger", schedule, "tester")
    with pytest.raises(RolloutError, match="no version with alias 'nobody'"):
        state.start(client, NAME, "nobody", [5, 100], "tester")
    client.set_registered_model_alias(NAME, "same", "1")
    with pytest.raises(RolloutError, match=r"version 1 \(@same\) is already the champion"):
        state.start(client, NAME, "same", [5, 100], "tester")

    first = state.start(client, NAME, "challenger", [5, 100], "alice")
    client.set_registered_model_alias(NAME, "other", "3")
    with pytest.raises(RolloutError, match=rf"already has a rollout in progress: rollout {first.id} "
                       r"of cars version 2 .* by alice"):  # fmt: skip
        state.start(client, NAME, "other", [5, 100], "bob")
    # one look changed the record meanwhile: a stale copy writes nothing
    state.advance(client, first, "alice", [])
    with pytest.raises(RolloutError, match="changed meanwhile"):
        state.abort(client, first, "bob", "stale")
    held = state.hold(client, state.running(client, NAME), "alice", "12 of 200 canary answers")
    state.hold(client, held, "alice", "12 of 200 canary answers")  # the same reason: one entry
    events = [e.event for e in state.history(client, NAME, first.id)]
    assert events == ["start", "step", "hold"]
    assert state.read(client, NAME, "2") == state.running(client, NAME)


def test_a_hand_edited_record_falls_back_to_canary_percent_loudly(
    serve: Callable[..., Server], registry: str
) -> None:
    MlflowClient(registry).set_model_version_tag(NAME, "2", TAG, '{"share": 50}')
    s = _champion_and(serve, registry, CANARY_PERCENT="0", POLL_SECONDS="0.5")
    _wait(lambda: "is not a rollout record" in s.log.read_text(), 20, "the refusal logged", s)
    assert _second(s)["canary_percent"] == 0.0 and set(_versions(s).values()) == {"1"}
