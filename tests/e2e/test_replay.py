"""`runbook-operator replay --from-cluster` over an incident the real operator handled (issue 25)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from runbook_lab.demo import DemoService
from runbook_operator.entrypoints import cli
from tests.e2e.conftest import Kubectl, OperatorProcess
from tests.e2e.test_foundation import demo_policy, incident, settled
from tests.fixtures.cluster import ONCALL


def test_a_failover_that_loses_its_approval_is_named_and_fails_ci(
    kubectl: Kubectl,
    operator: OperatorProcess,
    namespace: str,
    demo: DemoService,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    approver: Kubectl,
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(kubectl.kubeconfig))
    failover = {"name": "failover", "action": "http.request",
                "with": {"url": f"{demo.url}/admin/failover", "destructive": True}}  # fmt: skip
    merged = demo_policy("im-down", namespace, demo.url, remediate=[failover])
    kubectl.apply(merged)
    kubectl.apply(incident("replayed", namespace))
    settled(kubectl, "replayed", namespace, "AwaitingApproval")
    args = ["approve", "replayed", "failover", "-n", namespace, "--yes", "--as", "alice", "--as-group", ONCALL]
    assert cli.main(args) == 0
    settled(kubectl, "replayed", namespace, "Resolved")
    capsys.readouterr()
    (tmp_path / "main").mkdir(), (tmp_path / "pr").mkdir()
    (tmp_path / "main" / "p.yaml").write_text(yaml.safe_dump(merged))
    proposed = {**merged, "spec": {**merged["spec"], "remediate": [{**failover, "requiresApproval": False}]}}
    (tmp_path / "pr" / "p.yaml").write_text(yaml.safe_dump(proposed))
    common = ["replay", "--from-cluster", "-n", namespace, "--baseline", str(tmp_path / "main"), "--output", "json"]

    assert cli.main([*common, "--policies", str(tmp_path / "main"), "--fail-on", "unapproved-destructive"]) == 0
    (same,) = json.loads(capsys.readouterr().out)["incidents"]
    assert same["changes"] == [] and same["before"][0]["end"] == "Resolved"
    assert all(s["recorded"] for s in same["before"][0]["steps"])  # every call the operator made, matched
    assert [s["approvedBy"] for s in same["before"][0]["steps"] if s["name"] == "failover"] == ["alice"]

    assert cli.main([*common, "--policies", str(tmp_path / "pr"), "--fail-on", "unapproved-destructive"]) == 1
    out, err = capsys.readouterr()
    (changed,) = json.loads(out)["incidents"]
    assert changed["changes"][0] == "unapproved-destructive"
    assert changed["after"][0]["unapprovedDestructive"] == ["failover"]
    assert err.strip() == "runbook-operator replay: --fail-on: unapproved-destructive (1)"
