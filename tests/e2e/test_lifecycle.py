"""The whole lifecycle on a real kube-apiserver, each case asserting status, conditions and Events."""

from __future__ import annotations

import json
import time
from typing import Any

from runbook_lab.demo import DemoService
from runbook_operator.domain import consent
from tests.e2e.conftest import Kubectl, OperatorProcess, wait_for
from tests.e2e.test_foundation import approval_commands, awaiting, conditions, demo_policy, incident, settled

TARGET = {"kind": "Deployment", "name": "instance-manager"}


def reasons(kubectl: Kubectl, name: str, namespace: str) -> list[str]:
    return [e["reason"] for e in kubectl.events(name, namespace)]


def step_states(status: dict[str, Any]) -> list[tuple[str, str, int, str]]:
    return [(s["stage"], s["name"], s["attempt"], s["state"]) for s in status["steps"]]


def test_fixed_on_the_second_round(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str, demo: DemoService
) -> None:
    demo.ineffective_restarts = 1
    kubectl.apply(demo_policy("im-down", namespace, demo.url, limits={"maxAttempts": 3}))
    kubectl.apply(incident("second", namespace))
    status = settled(kubectl, "second", namespace, "Resolved")
    assert status["attempts"] == 2 and demo.restarts == 2
    assert ("Verify", "healthy-again", 1, "Failed") in step_states(status)
    assert ("Verify", "healthy-again", 2, "Succeeded") in step_states(status)
    assert conditions(status)["Resolved"] == ("True", "Verified")
    assert "VerificationFailed" in reasons(kubectl, "second", namespace)


def test_never_fixed_escalates_and_notifies_once_per_level(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str, demo: DemoService
) -> None:
    demo.fixable = False

    def hook(name: str) -> dict[str, Any]:
        return {
            "name": name,
            "action": "notify.webhook",
            "with": {"url": f"{demo.url}/hooks/{name}", "format": "slack"},
        }

    escalate = {"levels": [{"name": "on-call", "notify": [hook("page-oncall")]},
                           {"name": "team-lead", "after": "8s", "notify": [hook("page-lead")]}]}  # fmt: skip
    kubectl.apply(demo_policy("im-down", namespace, demo.url, escalate=escalate, verify=[
        {"name": "healthy-again", "action": "http.check", "with": {"url": f"{demo.url}/health"}}]))  # fmt: skip
    kubectl.apply(incident("stuck", namespace, severity="Critical"))
    status = settled(kubectl, "stuck", namespace, "Escalated")
    assert conditions(status)["Escalated"] == ("True", "RemediationExhausted")
    wait_for(
        lambda: kubectl.get("incident", "stuck", namespace)["status"]["escalation"].get("level") == "team-lead",
        30,
        "level 2",
    )
    time.sleep(2)  # give a second notification the chance to (wrongly) happen
    assert sorted(name for name, _ in demo.hooks) == ["page-lead", "page-oncall"]
    text = dict(demo.hooks)["page-oncall"]["text"]
    assert "InstanceManagerDown" in text and f"kubectl describe incident stuck -n {namespace}" in text
    status = kubectl.get("incident", "stuck", namespace)["status"]
    assert status["escalation"]["fired"] == ["on-call", "team-lead"]
    assert reasons(kubectl, "stuck", namespace).count("EscalationLevelReached") == 2


def test_approval_flow_with_the_documented_raw_patch(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str, demo: DemoService, approver: Kubectl
) -> None:
    kubectl.apply(demo_policy("im-down", namespace, demo.url, remediate=[
        {"name": "failover", "action": "http.request", "with": {"url": f"{demo.url}/admin/failover", "destructive": True}}]))  # fmt: skip
    kubectl.apply(incident("consent", namespace))
    status = settled(kubectl, "consent", namespace, "AwaitingApproval")
    assert ("Remediate", "failover", 1, "AwaitingApproval") in step_states(status)
    assert status["currentStep"] == "failover" and demo.failovers == 0
    event = next(e for e in kubectl.events("consent", namespace) if e["reason"] == "AwaitingApproval")
    approve, patch = approval_commands(event)
    assert approve == ["kubectl", "runbook", "approve", "consent", "failover", "-n", namespace]
    assert patch[:3] == ["kubectl", "patch", "incident"]
    approver(*[arg.replace("YOUR-NAME", "alice") for arg in patch[1:]])
    status = settled(kubectl, "consent", namespace, "Resolved")
    record = next(s for s in status["steps"] if s["name"] == "failover")
    assert record["state"] == "Succeeded" and record["approvedBy"] == "alice" and record["approvedAt"]
    assert record["approvedDigest"] == record["approvalRequest"]["digest"]
    assert demo.failovers == 1
    assert "Approved" in reasons(kubectl, "consent", namespace)


def test_approval_timeout_escalates(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str, demo: DemoService
) -> None:
    kubectl.apply(demo_policy("im-down", namespace, demo.url, limits={"approvalTimeout": "3s"}, remediate=[
        {"name": "failover", "action": "http.request", "with": {"url": f"{demo.url}/admin/failover", "destructive": True}}]))  # fmt: skip
    kubectl.apply(incident("ignored", namespace))
    status = settled(kubectl, "ignored", namespace, "Escalated")
    assert conditions(status)["Escalated"] == ("True", "ApprovalTimeout")
    assert demo.failovers == 0 and "ApprovalTimeout" in reasons(kubectl, "ignored", namespace)


def test_dry_run_changes_nothing(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str, demo: DemoService
) -> None:
    kubectl.apply(demo_policy("im-down", namespace, demo.url))
    kubectl.apply(incident("rehearsal", namespace, dryRun=True))
    status = settled(kubectl, "rehearsal", namespace, "Escalated")
    assert conditions(status)["Escalated"] == ("True", "DryRun")
    restart = next(s for s in status["steps"] if s["name"] == "restart")
    assert restart["state"] == "Skipped" and restart["message"].startswith("dry run: would run http.request")
    assert demo.restarts == 0
    assert ("Diagnose", "health", 1, "Failed") in step_states(status)  # read-only diagnosis still ran


def test_a_duplicate_incident_does_not_act(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str, demo: DemoService
) -> None:
    kubectl.apply(demo_policy("im-down", namespace, demo.url, remediate=[
        {"name": "failover", "action": "http.request", "with": {"url": f"{demo.url}/admin/failover", "destructive": True}}]))  # fmt: skip
    kubectl.apply(incident("first", namespace, target=TARGET))
    settled(kubectl, "first", namespace, "AwaitingApproval")
    kubectl.apply(incident("again", namespace, target=TARGET))
    status = settled(kubectl, "again", namespace, "Resolved")
    assert conditions(status)["Resolved"] == ("True", "Duplicate") and status["duplicateOf"] == "first"
    assert status["steps"] == [] and demo.failovers == 0


def test_spec_resolved_stops_pending_work(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str, demo: DemoService, approver: Kubectl
) -> None:
    kubectl.apply(demo_policy("im-down", namespace, demo.url, remediate=[
        {"name": "failover", "action": "http.request", "with": {"url": f"{demo.url}/admin/failover", "destructive": True}}]))  # fmt: skip
    kubectl.apply(incident("over", namespace))
    settled(kubectl, "over", namespace, "AwaitingApproval")
    kubectl("patch", "incident", "over", "-n", namespace, "--type=merge", "-p", '{"spec":{"resolved":true}}')
    status = settled(kubectl, "over", namespace, "Resolved")
    assert conditions(status)["Resolved"] == ("True", "ResolvedExternally")
    record = awaiting(status, "failover")  # the request was open when it resolved: a late approval is accepted
    approval = consent.append_patch("failover", record["attempt"], record["approvalRequest"]["nonce"], "alice")
    approver("patch", "incident", "over", "-n", namespace, "--type=json", "-p", json.dumps(approval))
    time.sleep(2)
    assert demo.failovers == 0 and phase(kubectl, "over", namespace) == "Resolved"


def phase(kubectl: Kubectl, name: str, namespace: str) -> str:
    return kubectl.get("incident", name, namespace)["status"]["phase"]  # type: ignore[no-any-return]


def test_kill_9_during_a_slow_destructive_step_runs_it_once(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str, demo: DemoService
) -> None:
    demo.failover_seconds = 4
    kubectl.apply(demo_policy("im-down", namespace, demo.url, remediate=[
        {"name": "failover", "action": "http.request", "requiresApproval": False,
         "with": {"url": f"{demo.url}/admin/failover", "destructive": True}, "timeout": "30s"}],
        verify=[{"name": "healthy-again", "action": "http.check", "with": {"url": f"{demo.url}/health"},
                 "retries": 15, "backoff": "1s"}]))  # fmt: skip
    kubectl.apply(incident("crash", namespace))
    wait_for(lambda: demo.failovers == 1, 30, "the failover to start")
    operator.kill9()
    operator.start()
    status = settled(kubectl, "crash", namespace, "Resolved", timeout=60)
    record = next(s for s in status["steps"] if s["name"] == "failover")
    assert record["state"] == "Skipped" and "outcome unknown" in record["message"]
    assert conditions(status)["Resolved"] == ("True", "Verified")  # verification decided
    time.sleep(1)
    assert demo.failovers == 1
    assert "StepInterrupted" in reasons(kubectl, "crash", namespace)
