"""manifests/monitoring: the alert rules pass promtool's checks and its unit tests;
the dashboard asks only for metrics the operator exposes."""

from __future__ import annotations

import json
import re
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from runbook_operator.adapters.metrics import Metrics

ROOT = Path(__file__).resolve().parents[3]
MONITORING = ROOT / "manifests/monitoring"
PROMTOOL = "/usr/bin/promtool"  # Debian's prometheus package


@pytest.fixture
def rules_file(tmp_path: Path) -> Path:
    rule = yaml.safe_load((MONITORING / "prometheusrule.yaml").read_text())
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    return path


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60)


def test_the_rules_are_valid(rules_file: Path) -> None:
    proc = promtool("check", "rules", str(rules_file))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    count = len(yaml.safe_load(rules_file.read_text())["groups"][0]["rules"])
    assert count >= 9 and f"SUCCESS: {count} rules found" in proc.stdout


UNIT_TESTS = """
rule_files: [{rules}]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'runbook_approvals_waiting'
        values: '2x60'
      - series: 'runbook_incidents{{phase="Remediating"}}'
        values: '1x60'
      - series: 'runbook_action_duration_seconds_count{{action="http.check",outcome="success"}}'
        values: '10x60'
      - series: 'runbook_action_duration_seconds_count{{action="redis.ping",outcome="failure"}}'
        values: '0+3x60'
      - series: 'runbook_action_duration_seconds_count{{action="redis.ping",outcome="success"}}'
        values: '0+1x60'
      - series: 'up{{job="runbook-operator"}}'
        values: '1x60'
    alert_rule_test:
      - eval_time: 20m
        alertname: RunbookApprovalsWaiting
        exp_alerts: []
      - eval_time: 40m
        alertname: RunbookApprovalsWaiting
        exp_alerts:
          - exp_labels: {{severity: warning}}
            exp_annotations:
              summary: '2 incident(s) have waited 30m for an approval (kubectl get inc | grep AwaitingApproval).'
      - eval_time: 50m
        alertname: RunbookActionsFailing
        exp_alerts:
          - exp_labels: {{severity: warning, action: redis.ping}}
            exp_annotations:
              summary: 'More than half of the redis.ping runs failed in the last 15m.'
      - eval_time: 50m
        alertname: RunbookOperatorDown
        exp_alerts: []
  - interval: 1m
    input_series:
      - series: 'runbook_incidents{{phase="Remediating"}}'
        values: '1x90'
      - series: 'runbook_action_duration_seconds_count{{action="http.request",outcome="success"}}'
        values: '0+1x20 20x70'
      - series: 'runbook_notifications_total{{channel="slack",result="failed"}}'
        values: '0+1x90'
      - series: 'runbook_notifications_total{{channel="webhook",result="failed"}}'
        values: '0+1x90'
      - series: 'runbook_notifications_total{{channel="webhook",result="sent"}}'
        values: '0+1x90'
    alert_rule_test:
      - eval_time: 3m
        alertname: RunbookNotificationsFailing
        exp_alerts: []
      - eval_time: 30m
        alertname: RunbookNotificationsFailing
        exp_alerts:
          - exp_labels: {{severity: warning, channel: slack}}
            exp_annotations:
              summary: 'Every slack notification of the last hour failed: check its Secret, URL and the channel (runbook_notifications_total).'

      - eval_time: 60m
        alertname: RunbookIncidentsStuck
        exp_alerts: []
      - eval_time: 70m
        alertname: RunbookIncidentsStuck
        exp_alerts:
          - exp_labels: {{severity: warning}}
            exp_annotations:
              summary: '1 incident(s) in a working phase and no action ran for 30m.'
      - eval_time: 10m
        alertname: RunbookOperatorNoLeader
        exp_alerts: []
      - eval_time: 10m
        alertname: RunbookOperatorDown
        exp_alerts:
          - exp_labels: {{severity: critical}}
            exp_annotations:
              summary: The runbook operator is not being scraped; incidents are not being handled.
  - interval: 1m
    input_series:  # two replicas report the same budgets; "restarts" is spent from 10m, "none" allows 0 on purpose
      - series: 'runbook_budget_used{{pod="a",namespace="ishchat",budget="restarts",kind="destructive_steps"}}'
        values: '0x10 2x40'
      - series: 'runbook_budget_used{{pod="b",namespace="ishchat",budget="restarts",kind="destructive_steps"}}'
        values: '0x10 2x40'
      - series: 'runbook_budget_limit{{pod="a",namespace="ishchat",budget="restarts",kind="destructive_steps"}}'
        values: '2x50'
      - series: 'runbook_budget_used{{pod="a",namespace="ishchat",budget="none",kind="destructive_steps"}}'
        values: '0x50'
      - series: 'runbook_budget_limit{{pod="a",namespace="ishchat",budget="none",kind="destructive_steps"}}'
        values: '0x50'
    alert_rule_test:
      - eval_time: 20m
        alertname: RunbookBudgetSpent
        exp_alerts: []
      - eval_time: 30m
        alertname: RunbookBudgetSpent
        exp_alerts:
          - exp_labels: {{severity: warning, namespace: ishchat, budget: restarts, kind: destructive_steps}}
            exp_annotations:
              summary: 'Budget ishchat/restarts has been spent (destructive_steps) for 15m; remediation steps wait Throttled (kubectl get rbud -n ishchat).'
  - interval: 1m
    input_series:  # two replicas: a leads until 5m, then neither does (a Lease held by someone else)
      - series: 'runbook_leader{{pod="a"}}'
        values: '1x5 0x20'
      - series: 'runbook_leader{{pod="b"}}'
        values: '0x25'
    alert_rule_test:
      - eval_time: 5m
        alertname: RunbookOperatorNoLeader
        exp_alerts: []
      - eval_time: 7m
        alertname: RunbookOperatorNoLeader
        exp_alerts: []
      - eval_time: 8m
        alertname: RunbookOperatorNoLeader
        exp_alerts:
          - exp_labels: {{severity: critical}}
            exp_annotations:
              summary: 'No runbook-operator replica has led for 2m; incidents are not being handled (kubectl get lease -n runbook-operator runbook-operator -o yaml shows the holder).'
"""


def test_the_alerts_fire_when_they_should_and_not_before(rules_file: Path, tmp_path: Path) -> None:
    tests = tmp_path / "tests.yaml"
    tests.write_text(UNIT_TESTS.format(rules=rules_file.name))
    proc = subprocess.run(
        [PROMTOOL, "test", "rules", tests.name], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def exposed_names() -> set[str]:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.watch(lambda: ["Resolved"])
    metrics.leader()  # registered when leader election runs
    metrics.budgets(lambda: [], lambda: datetime.now(UTC))
    suffixes = {"histogram": ("_bucket", "_count", "_sum"), "counter": ("_total",), "gauge": ("",)}
    return {family.name + suffix for family in registry.collect() for suffix in suffixes[family.type]}


def test_the_dashboard_only_uses_metrics_the_operator_exposes() -> None:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    used = {name for expr in exprs for name in re.findall(r"\brunbook_[a-z_]+", expr)}
    assert used, "the dashboard queries nothing"
    assert used <= exposed_names(), used - exposed_names()
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])


def test_the_rules_only_use_metrics_the_operator_exposes() -> None:
    rule = yaml.safe_load((MONITORING / "prometheusrule.yaml").read_text())
    used = {name for r in rule["spec"]["groups"][0]["rules"] for name in re.findall(r"\brunbook_[a-z_]+", r["expr"])}
    known = exposed_names() | {"runbook_archive_up"}  # the archive's gauge exists when an archive is configured
    assert used <= known, used - known
