"""deploy/prometheus/rules.yaml: valid for Prometheus, unit-tested with promtool, read only
metrics the worker exports, every alert labelled with the success criterion it guards, and the
Kubernetes PrometheusRule rendered from it."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.promql_checks import selectors, unguarded_divisions, unknown_references

REPO = Path(__file__).resolve().parent.parent
RULES = REPO / "deploy" / "prometheus" / "rules.yaml"
RULES_TEST = REPO / "deploy" / "prometheus" / "rules_test.yaml"
MANIFEST = REPO / "deploy" / "k8s" / "prometheusrule.yaml"
RENDER = REPO / "deploy" / "prometheus" / "render_prometheusrule.py"

#: The system's success criteria, as the alerts' `criterion` label names them.
CRITERIA = {
    "latency_under_5s": "end-to-end latency < 5 s",
    "valid_over_99.5pct": "data quality > 99.5 % valid",
    "1m_events_per_day": "1M events/day",
    "uptime_99.9pct": "99.9 % uptime",
    "errors_zero": "errors = 0",
}
SEVERITIES = {"page", "ticket"}

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not on PATH (Debian package `prometheus`; .ci/run installs it)")


def _rules() -> list[dict]:
    doc = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [rule for group in doc["groups"] for rule in group["rules"]]


def _alerts() -> list[dict]:
    return [rule for rule in _rules() if "alert" in rule]


def _promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], cwd=REPO, capture_output=True, text=True, timeout=120)


@needs_promtool
def test_promtool_accepts_the_rules():
    out = _promtool("check", "rules", str(RULES.relative_to(REPO)))
    assert out.returncode == 0, out.stdout + out.stderr


@needs_promtool
def test_the_rules_pass_their_promtool_unit_tests():
    out = _promtool("test", "rules", str(RULES_TEST.relative_to(REPO)))
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_alert_has_a_case_that_fires_and_one_that_does_not():
    tests = yaml.safe_load(RULES_TEST.read_text(encoding="utf-8"))
    assert tests["rule_files"] == ["rules.yaml"]
    fires, quiet = set(), set()
    for case in tests["tests"]:
        for check in case.get("alert_rule_test", []):
            (fires if check["exp_alerts"] else quiet).add(check["alertname"])
    names = {alert["alert"] for alert in _alerts()}
    assert names - fires == set(), "alerts never shown to fire"
    assert names - quiet == set(), "alerts never shown to stay quiet"


def test_every_recording_rule_has_its_value_checked():
    tests = yaml.safe_load(RULES_TEST.read_text(encoding="utf-8"))
    checked_exprs = [check["expr"] for case in tests["tests"] for check in case.get("promql_expr_test", [])]
    read = {s.name for expr in checked_exprs for s in selectors(expr)}
    recorded = {rule["record"] for rule in _rules() if "record" in rule}
    assert recorded - read == set()


def test_every_alert_names_its_severity_criterion_and_summary():
    for alert in _alerts():
        labels, annotations = alert.get("labels", {}), alert.get("annotations", {})
        assert labels.get("severity") in SEVERITIES, alert["alert"]
        assert labels.get("criterion") in CRITERIA, alert["alert"]
        assert annotations.get("summary", "").strip(), alert["alert"]
        assert annotations.get("description", "").strip(), alert["alert"]
        is_state = re.search(r"== [01]$", alert["expr"].strip()) or alert["expr"].startswith("absent(")
        if not is_state:  # a state (== 1, absent) has no value worth saying
            assert "$value" in annotations["summary"], f"{alert['alert']}: say the value that fired it"


def test_every_success_criterion_is_guarded_by_an_alert():
    guarded = {alert["labels"]["criterion"] for alert in _alerts()}
    assert guarded == set(CRITERIA)


def test_the_rules_read_only_metrics_and_labels_the_worker_exports():
    recorded = frozenset(rule["record"] for rule in _rules() if "record" in rule)
    problems = {rule.get("alert") or rule["record"]: unknown_references(rule["expr"], recorded)
                for rule in _rules()}
    assert {name: p for name, p in problems.items() if p} == {}


def test_no_ratio_divides_by_a_rate_that_can_be_zero():
    """0/0 is NaN: a ratio over no traffic must be no sample, which no alert fires on."""
    problems = {rule.get("alert") or rule["record"]: unguarded_divisions(rule["expr"]) for rule in _rules()}
    assert {name: p for name, p in problems.items() if p} == {}


def test_recording_rules_are_named_level_metric_operations():
    """https://prometheus.io/docs/practices/rules/: ``level:metric:operations``."""
    for rule in _rules():
        if "record" in rule:
            level, metric, operations = rule["record"].split(":")
            assert re.fullmatch(r"[a-z_]+", level) and metric.startswith("memory_worker_"), rule["record"]
            assert not metric.endswith("_total"), f"{rule['record']}: drop _total once rated"
            assert re.fullmatch(r"[a-z0-9_]+", operations), rule["record"]


def _render_module():
    spec = importlib.util.spec_from_file_location("render_prometheusrule", RENDER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_prometheusrule_is_what_the_render_script_makes_now():
    committed = MANIFEST.read_text(encoding="utf-8")
    assert committed == _render_module().render(RULES), \
        "deploy/k8s/prometheusrule.yaml is stale: run python deploy/prometheus/render_prometheusrule.py"


def test_the_prometheusrule_carries_exactly_the_rule_files_groups():
    manifest = yaml.safe_load(MANIFEST.read_text(encoding="utf-8"))
    assert manifest["apiVersion"] == "monitoring.coreos.com/v1"
    assert manifest["kind"] == "PrometheusRule"
    assert manifest["metadata"]["labels"]["app.kubernetes.io/name"] == "ai-memory-worker"
    assert manifest["spec"]["groups"] == yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]


def test_the_render_script_check_mode_fails_on_a_stale_manifest(tmp_path, monkeypatch):
    module = _render_module()
    stale = tmp_path / "prometheusrule.yaml"
    stale.write_text(module.render(RULES) + "# edited by hand\n", encoding="utf-8")
    monkeypatch.setattr(module, "MANIFEST", stale)
    monkeypatch.setattr(module, "REPO", tmp_path)
    assert module.main(["--check"]) == 1
    assert module.main([]) == 0
    assert module.main(["--check"]) == 0
