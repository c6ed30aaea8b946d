"""The chart's monitoring: alerts that promtool accepts and that fire when they should, a dashboard and rules
that use only metrics the operator exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart import exported_series, find, objects
from tests.helm import CHART, REPO, Helm, helm_fixture  # noqa: F401

MONITORING = ["--set", "metrics.prometheusRule.enabled=true", "--set", "metrics.grafanaDashboard.create=true"]


@pytest.fixture(scope="module")
def rendered(helm: Helm) -> list[dict[str, Any]]:
    return objects(helm.template(*MONITORING))


def _series_in(text: str) -> set[str]:
    return set(re.findall(r"\bpoolbudget_[a-z_]+\b", text))


def test_rules_use_only_exported_metrics(rendered: list[dict[str, Any]]) -> None:
    rule = find(rendered, "PrometheusRule")
    expressions = " ".join(r["expr"] for g in rule["spec"]["groups"] for r in g["rules"])
    used = _series_in(expressions)
    assert used, "the rules use the operator's metrics"
    assert used <= exported_series()


def test_dashboard_uses_only_exported_metrics(rendered: list[dict[str, Any]]) -> None:
    config_map = find(rendered, "ConfigMap", "-dashboard")
    dashboard = json.loads(config_map["data"]["poolbudget.json"])
    assert dashboard == json.loads((CHART / "files" / "dashboards" / "poolbudget.json").read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p.get("targets", []))
    assert _series_in(exprs) <= exported_series()
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"


def test_docs_name_only_exported_metrics_and_every_one() -> None:
    documented = _series_in((REPO / "docs" / "metrics.md").read_text())
    exported = exported_series()
    histograms = {n.removesuffix("_bucket") for n in exported if n.endswith("_bucket")}
    public = {n for n in exported if not n.endswith(("_created", "_bucket", "_sum", "_count"))} | histograms
    assert documented <= exported | histograms
    assert public <= documented


needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool (Prometheus) not installed"
)


def _rule_file(rendered: list[dict[str, Any]], directory: Path) -> Path:
    groups = find(rendered, "PrometheusRule")["spec"]["groups"]
    path = directory / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": groups}))
    return path


@needs_promtool
def test_promtool_accepts_the_rules(rendered: list[dict[str, Any]], tmp_path: Path) -> None:
    path = _rule_file(rendered, tmp_path)
    result = subprocess.run(
        ["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr


# promtool unit tests: series over time, and the alerts expected at given times (the rule's `for` is 10m).
ALERT_TESTS = """
rule_files: [rules.yaml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'poolbudget_overcommitted{budget="main-db"}'
        values: '0 0 1x30'
      - series: 'poolbudget_shortfall_connections{budget="main-db"}'
        values: '0 0 21x30'
      - series: 'poolbudget_available_connections{budget="main-db"}'
        values: '87x30'
      - series: 'poolbudget_deployment_observed_connections{budget="main-db", namespace="api", deployment="api"}'
        values: '50x5 83x25'
      - series: 'poolbudget_deployment_observed_connections{budget="main-db", namespace="ai", deployment="langflow"}'
        values: '0x30'
      - series: 'poolbudget_database_errors_total{budget="main-db"}'
        values: '0x5 1+1x25'
      - series: 'up{job="poolbudget-metrics", namespace="poolbudget-system"}'
        values: '1x5 0x25'
    alert_rule_test:
      - eval_time: 5m
        alertname: PoolBudgetOvercommitted
        exp_alerts: []
      - eval_time: 15m
        alertname: PoolBudgetOvercommitted
        exp_alerts:
          - exp_labels: {severity: critical, budget: main-db}
            exp_annotations:
              summary: PoolBudget main-db is overcommitted by 21 connections
              description: >-
                Even every Deployment at its minimum needs 21 more connections than PoolBudget main-db has
                available; every Deployment runs below its minimum. Give the database more connections, or run
                fewer pods or processes (kubectl describe pb main-db).
      - eval_time: 20m
        alertname: PoolBudgetNearExhaustion
        exp_alerts:
          - exp_labels: {severity: warning, budget: main-db}
            exp_annotations:
              summary: 'PoolBudget main-db: pods hold 95.4% of the available connections'
              description: >-
                The pods drawing on PoolBudget main-db hold 95.4% of what it may hand out. New connections may
                soon meet "too many clients".
      - eval_time: 4m
        alertname: PoolBudgetDatabaseUnreachable
        exp_alerts: []
      - eval_time: 20m
        alertname: PoolBudgetDatabaseUnreachable
        exp_alerts:
          - exp_labels: {severity: warning, budget: main-db}
            exp_annotations:
              summary: poolbudget cannot read the limits of PoolBudget main-db's database
              description: >-
                Reads of the database's limits for PoolBudget main-db keep failing. The operator keeps the last
                known limits and allows only decreases until it can read them again (condition DatabaseReachable).
      - eval_time: 20m
        alertname: PoolBudgetOperatorDown
        exp_alerts:
          - exp_labels: {severity: critical}
            exp_annotations:
              summary: The poolbudget operator is down
              description: >-
                No poolbudget operator target is up: pool sizes are not adjusted to scale events, and new pods
                may pass the databases' limits.
"""


@needs_promtool
def test_alerts_fire_when_they_should(helm: Helm, tmp_path: Path) -> None:
    rendered = objects(
        helm.template(*MONITORING, release="poolbudget")  # job label: poolbudget-metrics
    )
    _rule_file(rendered, tmp_path)
    (tmp_path / "tests.yaml").write_text(ALERT_TESTS)
    result = subprocess.run(
        ["promtool", "test", "rules", "tests.yaml"], cwd=tmp_path, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr
