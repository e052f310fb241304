"""k8s/monitoring: the operator's objects validate, the rules pass promtool, every series exists.

The Prometheus Operator schemas are carried as data (tests/schemas/prometheus-operator-v0.80.1,
made by tests/schemas/prometheus_operator.py from PyPI's models of that release).
"""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from carinspect.config import load_params
from carinspect.serving.metrics import ServingMetrics
from tests.conftest import REPO_ROOT
from tests.test_k8s import OPERATOR_GROUP, render

OPERATOR = "v0.80.1"  # the Prometheus Operator release the schemas are of
SCHEMAS = REPO_ROOT / "tests" / "schemas" / f"prometheus-operator-{OPERATOR}"
MONITORING = REPO_ROOT / "k8s" / "monitoring"
RUNBOOKS = REPO_ROOT / "docs" / "monitoring.md"
HERE = Path(__file__).parent


def _validator(kind: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((SCHEMAS / f"{kind.lower()}.json").read_text())
    return jsonschema.Draft202012Validator(schema)


def _operator_objects() -> list[dict[str, Any]]:
    return [d for d in render("overlays/prod") if d["apiVersion"].startswith(OPERATOR_GROUP)]


def test_the_operator_objects_validate_against_the_operator_schemas() -> None:
    found = _operator_objects()
    assert sorted(d["kind"] for d in found) == ["PrometheusRule", "ServiceMonitor"]
    for doc in found:
        errors = [e.message for e in _validator(doc["kind"]).iter_errors(doc)]
        assert not errors, f"{doc['kind']}: {errors[:3]}"
    # the check can fail: a misspelt field and a wrong type are refused
    monitor = next(d for d in found if d["kind"] == "ServiceMonitor")
    typo = {**monitor, "spec": {**monitor["spec"], "endpoint": monitor["spec"]["endpoints"]}}
    assert any("'endpoint' was unexpected" in e.message
               for e in _validator("ServiceMonitor").iter_errors(typo))  # fmt: skip
    rule = next(d for d in found if d["kind"] == "PrometheusRule")
    bad = json.loads(json.dumps(rule))
    bad["spec"]["groups"][0]["rules"][0]["for"] = 600
    assert list(_validator("PrometheusRule").iter_errors(bad))


def test_the_service_monitor_selects_the_serving_service_and_its_port() -> None:
    docs = render("overlays/prod")
    monitor = next(d for d in docs if d["kind"] == "ServiceMonitor")
    service = next(d for d in docs if d["kind"] == "Service")
    wanted = monitor["spec"]["selector"]["matchLabels"]
    assert wanted.items() <= service["metadata"]["labels"].items()
    ports = {p["name"] for p in service["spec"]["ports"]}
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= ports
    assert monitor["metadata"]["namespace"] == service["metadata"]["namespace"]
    dashboard = next(d for d in docs if d["metadata"]["name"] == "carinspect-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    json.loads(dashboard["data"]["carinspect.json"])


def _rules_spec() -> dict[str, Any]:
    doc = yaml.safe_load((MONITORING / "prometheusrule.yaml").read_text())
    spec: dict[str, Any] = doc["spec"]
    return spec


def _promtool() -> str:
    found = shutil.which("promtool")
    if found is None:  # scripts/system.sh installs Debian's prometheus, which has it
        message = "promtool not found (apt-get install prometheus; scripts/system.sh does)"
        if os.environ.get("CARINSPECT_SLOW") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return found


def test_the_rules_pass_promtool_check_and_their_unit_tests(tmp_path: Path) -> None:
    promtool = _promtool()
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(_rules_spec()))
    shutil.copy(HERE / "alerts_test.yaml", tmp_path / "alerts_test.yaml")
    check = subprocess.run([promtool, "check", "rules", "rules.yaml"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
    tested = subprocess.run([promtool, "test", "rules", "alerts_test.yaml"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert tested.returncode == 0, tested.stdout + tested.stderr
    # every alert has a test that makes it fire
    fired = set(re.findall(r"alertname: (\w+)\n\s+exp_alerts:\n\s+- exp_labels",
                           (HERE / "alerts_test.yaml").read_text()))  # fmt: skip
    assert fired == set(alert_names())


def alert_names() -> list[str]:
    """Every alert of the PrometheusRule."""
    return [r["alert"] for g in _rules_spec()["groups"] for r in g["rules"] if "alert" in r]


def test_every_alert_has_a_runbook_section() -> None:
    text = RUNBOOKS.read_text()
    headings = {h.strip().lower() for h in re.findall(r"^### (\w+)$", text, re.MULTILINE)}
    for group in _rules_spec()["groups"]:
        for rule in group["rules"]:
            name = rule["alert"]
            assert name.lower() in headings, f"docs/monitoring.md has no section ### {name}"
            assert rule["annotations"]["runbook_url"].endswith(f"monitoring.md#{name.lower()}")


def exported_series() -> set[str]:
    """Every series name the service can put on /metrics (labelled ones before their first use
    included), with the suffixes Prometheus sees."""
    from prometheus_client.metrics import MetricWrapperBase

    names = set()
    registry = ServingMetrics().registry
    for collector in list(registry._collector_to_names):
        assert isinstance(collector, MetricWrapperBase)
        base, kind = collector._name, collector._type
        names |= {
            "counter": {f"{base}_total"},
            "gauge": {base},
            "histogram": {f"{base}_bucket", f"{base}_sum", f"{base}_count"},
        }[kind]
    return names


def queries() -> dict[str, str]:
    """Every PromQL expression of the rules, the dashboard and the rollout checks, by where."""
    found = {f"rule {r.get('alert')}": r["expr"]
             for g in _rules_spec()["groups"] for r in g["rules"]}  # fmt: skip
    board = json.loads((MONITORING / "dashboard.json").read_text())
    for panel in board["panels"]:
        for target in panel["targets"]:
            found[f"panel {panel['title']!r} {target['refId']}"] = target["expr"]
    cfg = load_params(REPO_ROOT / "params.yaml").rollout
    for check in cfg.checks:
        found[f"rollout check {check.name}"] = check.query
    found["rollout requests_query"] = cfg.requests_query
    return found


def test_every_series_read_is_one_the_service_exports() -> None:
    exported = exported_series()
    assert "carinspect_answers_total" in exported  # the check sees the real registry
    for where, expr in queries().items():
        used = set(re.findall(r"\bcarinspect_[a-z0-9_]+", expr))
        assert used or "ALERTS{" in expr, where  # ALERTS: Prometheus's own, of these rules
        assert used <= exported, f"{where} reads {sorted(used - exported)}, not exported"
