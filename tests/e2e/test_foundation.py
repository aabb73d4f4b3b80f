"""End to end on a real kube-apiserver: schema, the lifecycle, status, Events, RBAC."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from runbook_lab.demo import DemoService
from tests.e2e.conftest import ROOT, SA, Kubectl, OperatorProcess, wait_for

API = "remediation.ishchat.io/v1alpha1"


def incident(name: str, namespace: str, alert: str = "InstanceManagerDown", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": API, "kind": "Incident", "metadata": {"name": name, "namespace": namespace},
            "spec": {"alert": alert, **spec}}  # fmt: skip


def demo_policy(name: str, namespace: str, url: str, **spec: Any) -> dict[str, Any]:
    body = {
        "match": {"alerts": ["InstanceManagerDown"]},
        "severity": "Critical",
        "diagnose": [{"name": "health", "action": "http.check", "with": {"url": f"{url}/health"}}],
        "remediate": [{"name": "restart", "action": "http.request",
                       "with": {"url": f"{url}/admin/restart", "json": {"service": "instance-manager"}, "expectStatus": 202}}],
        "settle": "1s",
        "verify": [{"name": "healthy-again", "action": "http.check", "with": {"url": f"{url}/health"},
                    "retries": 3, "backoff": "500ms"}],
    } | spec  # fmt: skip
    return {
        "apiVersion": API,
        "kind": "RemediationPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": body,
    }


def phase_of(kubectl: Kubectl, name: str, namespace: str) -> str | None:
    return (kubectl.get("incident", name, namespace).get("status") or {}).get("phase")  # type: ignore[no-any-return]


def settled(kubectl: Kubectl, name: str, namespace: str, phase: str, timeout: float = 60) -> dict[str, Any]:
    try:
        wait_for(lambda: phase_of(kubectl, name, namespace) == phase, timeout, f"incident {name} to be {phase}")
    except AssertionError as err:
        status = kubectl.get("incident", name, namespace).get("status") or {}
        timeline = [(t["type"], t["message"]) for t in status.get("timeline", [])]
        raise AssertionError(f"{err}\nphase: {status.get('phase')}; timeline: {timeline}") from None
    return kubectl.get("incident", name, namespace)["status"]  # type: ignore[no-any-return]


def awaiting(status: dict[str, Any], step: str) -> dict[str, Any]:
    """The record of ``step`` waiting for approval; its approvalRequest has the round (attempt) and nonce."""
    record = next(s for s in status["steps"] if s["name"] == step and s["state"] == "AwaitingApproval")
    assert record["approvalRequest"]["nonce"], record
    return record  # type: ignore[no-any-return]


def approval_commands(event: dict[str, Any]) -> list[list[str]]:
    """The commands an AwaitingApproval (or ApprovalRequestChanged) Event hands out, as argv."""
    return [shlex.split(command) for command in re.findall(r"`([^`]*)`", event["message"])]


def conditions(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def test_crds_explain_their_fields(kubectl: Kubectl) -> None:
    out = kubectl("explain", "incident.spec.severity").stdout
    assert "Critical (response within 15m)" in out and "ENUM" in out
    assert "CEL expression" in kubectl("explain", "rpol.spec.verify.when").stdout


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"alert": "RedisDown", "severity": "Urgent"}, 'spec.severity: Unsupported value: "Urgent"'),
        ({"severity": "High"}, "spec.alert: Required value"),
        ({"alert": "X", "target": {"kind": "Pod", "name": "p"}}, 'spec.target.kind: Unsupported value: "Pod"'),
    ],
)
def test_the_api_server_rejects_invalid_incidents_naming_the_field(
    kubectl: Kubectl, namespace: str, spec: dict[str, Any], message: str
) -> None:
    doc = {"apiVersion": API, "kind": "Incident", "metadata": {"name": "bad", "namespace": namespace}, "spec": spec}
    proc = kubectl.apply(doc, check=False)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert kubectl("get", "incidents", "-n", namespace, "-o", "name").stdout == ""


def test_the_api_server_rejects_duplicate_step_names_across_stages(kubectl: Kubectl, namespace: str) -> None:
    doc = demo_policy("dup", namespace, "http://127.0.0.1:1")
    doc["spec"]["verify"][0]["name"] = "health"
    proc = kubectl.apply(doc, check=False)
    assert "step names must be unique across diagnose and verify" in proc.stderr


def test_an_incident_with_a_matching_policy_is_resolved(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str, demo: DemoService
) -> None:
    kubectl.apply(demo_policy("im-down", namespace, demo.url))
    kubectl.apply(incident("im-1", namespace))
    status = settled(kubectl, "im-1", namespace, "Resolved")

    assert demo.restarts == 1
    assert ("POST", "/admin/restart", {"service": "instance-manager"}) in demo.requests
    assert status["policy"] == "im-down" and status["severity"] == "Critical" and status["attempts"] == 1
    assert status["observedGeneration"] == 1 and status["resolvedAt"]
    assert [(s["stage"], s["name"], s["state"]) for s in status["steps"]] == [
        ("Diagnose", "health", "Failed"),
        ("Remediate", "restart", "Succeeded"),
        ("Verify", "healthy-again", "Succeeded"),
    ]
    assert "status 503" in status["findings"][0]["message"]
    assert conditions(status) | {} == {
        "Diagnosed": ("True", "DiagnosisComplete"),
        "Remediated": ("True", "RemediationApplied"),
        "Resolved": ("True", "Verified"),
    }
    reasons = [e["reason"] for e in kubectl.events("im-1", namespace)]
    for expected in (
        "PolicyMatched",
        "StepFailed",
        "DiagnosisComplete",
        "StepSucceeded",
        "RemediationApplied",
        "Verified",
    ):
        assert expected in reasons
    policy = kubectl.get("remediationpolicy", "im-down", namespace)["status"]
    assert conditions(policy)["Ready"] == ("True", "Valid")


def test_kubectl_get_incidents_prints_the_columns(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str, demo: DemoService
) -> None:
    kubectl.apply(demo_policy("im-down", namespace, demo.url))
    kubectl.apply(incident("im-2", namespace))
    settled(kubectl, "im-2", namespace, "Resolved")
    header, row = kubectl("get", "inc", "-n", namespace).stdout.splitlines()
    assert header.split() == ["NAME", "ALERT", "SEVERITY", "PHASE", "POLICY", "ATTEMPTS", "STEP", "AGE"]
    assert row.split()[:6] == ["im-2", "InstanceManagerDown", "Critical", "Resolved", "im-down", "1"]
    wide = kubectl("get", "inc", "-n", namespace, "-o", "wide").stdout
    assert "REASON" in wide and "Verified" in wide
    assert "im-2" in kubectl("get", "ishchat", "-n", namespace).stdout  # the category


def test_no_matching_policy_escalates_saying_so(kubectl: Kubectl, operator: OperatorProcess, namespace: str) -> None:
    kubectl.apply(incident("orphan", namespace, alert="NobodyHandlesThis"))
    status = settled(kubectl, "orphan", namespace, "Escalated")
    assert conditions(status)["Escalated"] == ("True", "NoMatchingPolicy")
    assert status["steps"] == []
    escalated = next(e for e in kubectl.events("orphan", namespace) if e["reason"] == "NoMatchingPolicy")
    assert escalated["type"] == "Warning" and "NobodyHandlesThis" in escalated["message"]
    assert status["escalation"]["level"] == "on-call"  # the runbook's first level, without a policy to say more


def test_failed_verification_escalates_after_max_attempts(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str, demo: DemoService
) -> None:
    demo.fixable = False
    kubectl.apply(demo_policy("im-down", namespace, demo.url, limits={"maxAttempts": 2}, verify=[
        {"name": "healthy-again", "action": "http.check", "with": {"url": f"{demo.url}/health"}}]))  # fmt: skip
    kubectl.apply(incident("stuck", namespace))
    status = settled(kubectl, "stuck", namespace, "Escalated")
    assert conditions(status)["Escalated"] == ("True", "RemediationExhausted")
    assert (
        conditions(status)["Remediated"] == ("False", "RemediationExhausted")
        or conditions(status)["Remediated"][0] == "False"
    )
    assert status["attempts"] == 2 and demo.restarts == 2
    assert [s["attempt"] for s in status["steps"] if s["name"] == "healthy-again"] == [1, 2]


def test_a_policy_the_schema_accepts_but_the_operator_cannot_use(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    bad = demo_policy("im-down", namespace, "http://127.0.0.1:1")
    bad["spec"]["remediate"] = [{"name": "restart", "action": "ssh.run", "with": {"cmd": "reboot"}}]
    kubectl.apply(bad)

    def ready() -> Any:
        conds = (kubectl.get("remediationpolicy", "im-down", namespace).get("status") or {}).get("conditions") or []
        return next((c for c in conds if c["type"] == "Ready"), None)

    cond = wait_for(ready, 30, "the policy's Ready condition")
    assert (cond["status"], cond["reason"]) == ("False", "InvalidPolicy")
    assert cond["message"].startswith("spec.remediate[0].with (ssh.run): unknown action 'ssh.run'")
    assert any(e["reason"] == "InvalidPolicy" for e in kubectl.events("im-down", namespace))

    kubectl.apply(incident("im-3", namespace))
    status = settled(kubectl, "im-3", namespace, "Escalated")
    assert conditions(status)["Escalated"] == ("True", "InvalidPolicy")
    escalated = next(e for e in kubectl.events("im-3", namespace) if e["reason"] == "InvalidPolicy")
    assert "unknown action 'ssh.run'" in escalated["message"]


def test_the_examples_reach_resolved(kubectl: Kubectl, operator: OperatorProcess) -> None:
    """manifests/examples/ as `make run` serves them: the demo endpoint on 127.0.0.1:18080."""
    try:
        service = DemoService(port=18080, restart_seconds=0.5).start()
    except OSError as err:
        raise AssertionError(f"port 18080 (the examples' demo endpoint) is busy: {err}") from err
    try:
        kubectl("apply", "-f", str(ROOT / "manifests/examples"))
        status = settled(kubectl, "instance-manager-down", "default", "Resolved")
        assert status["policy"] == "instance-manager-down" and service.restarts == 1
    finally:
        kubectl("delete", "-f", str(ROOT / "manifests/examples"), "--wait=false", check=False)
        service.stop()


def test_the_install_manifests_pass_server_side_dry_run(kubectl: Kubectl) -> None:
    proc = kubectl("apply", "-k", str(ROOT / "manifests"), "--dry-run=server")
    assert "deployment.apps/runbook-operator" in proc.stdout and "(server dry run)" in proc.stdout
    kinds = {d["kind"] for d in yaml.safe_load_all(kubectl("kustomize", str(ROOT / "manifests")).stdout)}
    assert kinds == {
        "CustomResourceDefinition",
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",  # the leader-election Lease, in the operator's namespace
        "RoleBinding",
        "Deployment",
        "PodDisruptionBudget",
        "Service",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    }


def test_the_operator_runs_with_its_own_least_privilege_rbac(
    kubectl: Kubectl, operator: OperatorProcess, operator_kubeconfig: Path
) -> None:
    who = kubectl(
        "auth", "whoami", "--kubeconfig", str(operator_kubeconfig), "-o", "jsonpath={.status.userInfo.username}"
    )
    assert who.stdout == SA

    def can(verb: str, resource: str, *extra: str) -> str:
        return kubectl("auth", "can-i", verb, resource, *extra, "--as", SA, "-A", check=False).stdout.strip()

    assert can("patch", "incidents.remediation.ishchat.io", "--subresource=status") == "yes"
    assert can("list", "remediationpolicies.remediation.ishchat.io") == "yes"
    for verb in ("create", "patch"):  # the Alertmanager intake creates Incidents and sets spec.resolved
        assert can(verb, "incidents.remediation.ishchat.io") == "yes"
    for verb, res in [("delete", "deployments"), ("get", "secrets"), ("update", "incidents.remediation.ishchat.io"),
                      ("patch", "remediationpolicies.remediation.ishchat.io"),
                      ("update", "remediationpolicies.remediation.ishchat.io"), ("create", "pods")]:  # fmt: skip
        assert can(verb, res) == "no", f"the operator may {verb} {res}"
    assert "Forbidden" not in operator.log.read_text()


def test_metrics_after_a_real_incident(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str, demo: DemoService
) -> None:
    kubectl.apply(demo_policy("im-down", namespace, demo.url))
    kubectl.apply(incident("measured", namespace))
    settled(kubectl, "measured", namespace, "Resolved")
    text = operator.scrape()
    finished = 'runbook_incidents_finished_total{alert="InstanceManagerDown",phase="Resolved",reason="Verified"}'
    assert finished in text and float(text.split(finished)[1].split()[0]) >= 1
    assert 'runbook_action_duration_seconds_count{action="http.request",outcome="success"}' in text
    assert 'runbook_incident_time_to_resolve_seconds_count{severity="Critical"}' in text
    assert 'runbook_incidents{phase="Resolved"}' in text


def test_json_logs_have_one_line_per_step_outcome(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str, demo: DemoService
) -> None:
    kubectl.apply(demo_policy("im-down", namespace, demo.url))
    kubectl.apply(incident("logged", namespace))
    settled(kubectl, "logged", namespace, "Resolved")
    lines = [json.loads(line) for line in operator.log.read_text().splitlines() if line.startswith("{")]
    steps = [line for line in lines if line.get("incident") == f"{namespace}/logged" and "step" in line]
    assert [(s["stage"], s["step"], s["action"], s["outcome"]) for s in steps] == [
        ("Diagnose", "health", "http.check", "failed"),
        ("Remediate", "restart", "http.request", "succeeded"),
        ("Verify", "healthy-again", "http.check", "succeeded"),
    ]
    assert all(s["policy"] == "im-down" and isinstance(s["duration"], float) for s in steps)
