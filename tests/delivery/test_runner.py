"""A rollout's look when Prometheus cannot answer: the share holds, says why, never promotes;
queries that do not give one number are named (against a real Prometheus)."""

import os
import subprocess
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from carinspect.config import Check, RolloutConfig
from carinspect.delivery.analysis import Prometheus, PrometheusError, judge
from carinspect.delivery.runner import look
from carinspect.tracking import rollout as state
from tests.conftest import VENV_BIN, free_port, stop_process, tiny_params
from tests.monitoring.prometheus import start_prometheus
from tests.serving.test_second import NAME, registry, template

__all__ = ["registry", "template"]  # test_second.py's store: versions 1 (champion), 2, 3


def _never(_: object) -> None:
    raise AssertionError("promoted on figures it could not read")


def test_an_unreachable_prometheus_holds_the_step_and_says_why(registry: str) -> None:
    client = MlflowClient(registry)
    rollout = state.start(client, NAME, "challenger", [5, 100], "tester")
    url = f"http://127.0.0.1:{free_port()}"
    cfg = RolloutConfig(schedule=[5, 100], min_requests=1)
    with Prometheus(url, 2.0) as prom:
        first = look(client, NAME, cfg, prom, "tester", _never)
        again = look(client, NAME, cfg, prom, "tester", _never)
    assert first.verdict == again.verdict == "hold"
    assert f"no analysis, the share holds: {url}: Prometheus is not reachable" in first.reason
    now = state.running(client, NAME)
    assert now is not None and (now.step, now.share) == (0, 5.0) and now.id == rollout.id
    assert [e.event for e in state.history(client, NAME, rollout.id)] == ["start", "hold"]


def test_a_query_that_is_not_one_number_is_named(tmp_path: Path) -> None:
    prom = start_prometheus(tmp_path, f"127.0.0.1:{free_port()}")  # scraping nothing: up is 0
    try:
        with Prometheus(prom.url, 5.0) as asked:
            deadline = time.monotonic() + 30
            while asked.value("up") is None:  # the first scrape
                assert time.monotonic() < deadline
                time.sleep(0.3)
            assert asked.value("up") == 0.0 and asked.value("sum(up) / 0") is None  # NaN: no data
            with pytest.raises(PrometheusError, match="gives 2 series, not one number"):
                asked.value('{__name__=~"up|scrape_samples_scraped"}')
            with pytest.raises(PrometheusError, match=r"refused 'up\{': bad_data: "):
                asked.value("up{")
    finally:
        stop_process(prom.proc)


def test_a_value_is_judged_against_its_limit() -> None:
    at_most = Check(name="errors", query="q", max=0.01)
    at_least = Check(name="agreement", query="q", min=0.9)
    assert judge(at_most, "q", 0.02).passed is False and judge(at_most, "q", 0.01).passed
    assert judge(at_least, "q", 0.95).passed and judge(at_least, "q", 0.5).passed is False
    assert judge(at_most, "q", None).passed is None  # no data: neither
    assert judge(at_most, "q", 0.02).describe() == "errors = 0.02 (limit <= 0.01)"
    with pytest.raises(ValueError, match="exactly one of max and min"):
        Check(name="both", query="q", max=1, min=0)
    with pytest.raises(ValueError, match=r"\$window is not one of the placeholders"):
        Check(name="typo", query="rate(x[$window])", max=1)
    with pytest.raises(ValueError, match="must rise at every step"):
        RolloutConfig(schedule=[50, 50])


def test_the_cli_refuses_a_bad_schedule_and_a_second_rollout_in_one_line(
    registry: str, tmp_path: Path
) -> None:
    params = tiny_params(tmp_path, register__model_name=NAME)
    env = {**os.environ, "MLFLOW_TRACKING_URI": registry, "CARINSPECT_USER": "ana"}

    def rollout(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(VENV_BIN / "carinspect"), "rollout", *args, "--params",
                               str(params)], env=env, capture_output=True, text=True,
                              timeout=120, check=False)  # fmt: skip

    for schedule, why in (("50,25", "the schedule must rise at every step: 25 follows 50"),
                          ("5,150", "share 150 is not in (0, 100]"),
                          ("5,x", "--schedule '5,x': not a comma-separated list of numbers")):  # fmt: skip
        done = rollout("start", "--schedule", schedule)
        assert done.returncode == 2 and why in done.stderr and done.stderr.count("\n") == 1, (
            done.stderr
        )
    first = rollout("start", "--schedule", "10,100")
    assert first.returncode == 0 and first.stdout.startswith("rollout "), first.stderr
    second = rollout("start")
    assert second.returncode == 2 and "already has a rollout in progress: rollout " in second.stderr
    assert "by ana" in second.stderr and second.stderr.count("\n") == 1
    shown = rollout("status")
    assert (
        shown.stdout.startswith(first.stdout.split(":")[0])
        and "start 0% -> 10% by ana" in shown.stdout
    )
    assert rollout("abort", "--reason", "changed my mind").returncode == 0
    assert "no rollout in progress" in rollout("abort").stderr
