"""Consent enforced by the API server: the admission policy from manifests/, as different users.

alice is in group oncall, bound to runbook-operator-approver in the test's namespace (the
``approver`` fixture); carol may edit incidents there but holds no ``approve`` verb; the
operator's own ServiceAccount is the Alertmanager intake's identity. Each attack of issue
11 is tried as that person would, through kubectl, and refused with a message that says
which rule and what to do.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from runbook_lab.demo import DemoService
from runbook_operator.domain import consent
from tests.e2e.conftest import SA, Kubectl, OperatorProcess, wait_for
from tests.e2e.test_foundation import awaiting, conditions, demo_policy, incident, settled

REFUSED = "ValidatingAdmissionPolicy 'runbook-operator-consent' with binding 'runbook-operator-consent' denied request"


def failover_policy(namespace: str, demo: DemoService, **spec: Any) -> dict[str, Any]:
    remediate = [{"name": "failover", "action": "http.request",
                  "with": {"url": f"{demo.url}/admin/failover", "destructive": True}}]  # fmt: skip
    return demo_policy("im-down", namespace, demo.url, **({"remediate": remediate} | spec))


@pytest.fixture
def waiting(kubectl: Kubectl, operator: OperatorProcess, namespace: str, demo: DemoService) -> dict[str, Any]:
    """An incident whose destructive failover waits for approval: its step record, with the open request."""
    kubectl.apply(failover_policy(namespace, demo))
    kubectl.apply(incident("consent", namespace))
    return awaiting(settled(kubectl, "consent", namespace, "AwaitingApproval"), "failover")


def approval(record: dict[str, Any], by: str, **changes: Any) -> str:
    """The JSON patch that appends an approval of the record's request (fields overridable)."""
    round_, nonce = changes.pop("round", record["attempt"]), changes.pop("nonce", record["approvalRequest"]["nonce"])
    return json.dumps(consent.append_patch(changes.pop("step", "failover"), round_, nonce, by))


def patch(who: Kubectl, namespace: str, body: str, kind: str = "json", name: str = "consent") -> Any:
    return who("patch", "incident", name, "-n", namespace, f"--type={kind}", "-p", body, check=False)


def approvals(kubectl: Kubectl, namespace: str, name: str = "consent") -> list[dict[str, Any]]:
    return kubectl.get("incident", name, namespace)["spec"]["approvals"]  # type: ignore[no-any-return]


def test_an_incident_cannot_be_created_already_approved(kubectl: Kubectl, approver: Kubectl, namespace: str) -> None:
    pre = incident("pre", namespace, approvals=[{"step": "failover", "by": "alice", "round": 1, "nonce": "00ff"}])
    for who in (approver, kubectl):  # an approver, and even a cluster admin
        proc = who.apply(pre, check=False)
        assert proc.returncode != 0 and REFUSED in proc.stderr, proc.stderr
        assert "spec.approvals must be empty when an Incident is created" in proc.stderr
        assert f"kubectl runbook approve pre STEP -n {namespace}" in proc.stderr
    assert kubectl("get", "incident", "pre", "-n", namespace, check=False).returncode != 0  # nothing was created
    kubectl.apply(incident("plain", namespace))
    assert approvals(kubectl, namespace, "plain") == []  # the schema's default: approvals can always be appended


def test_an_approvers_approval_is_accepted_recorded_under_their_name_and_runs_once(
    kubectl: Kubectl, approver: Kubectl, namespace: str, demo: DemoService, waiting: dict[str, Any]
) -> None:
    assert demo.failovers == 0
    proc = patch(approver, namespace, approval(waiting, "alice"))
    assert proc.returncode == 0, proc.stderr
    status = settled(kubectl, "consent", namespace, "Resolved")
    record = next(s for s in status["steps"] if s["name"] == "failover")
    assert record["state"] == "Succeeded" and record["approvedBy"] == "alice"
    assert record["approvedDigest"] == waiting["approvalRequest"]["digest"] and demo.failovers == 1
    assert approvals(kubectl, namespace) == [
        {"step": "failover", "round": 1, "nonce": waiting["approvalRequest"]["nonce"], "by": "alice"}
    ]


def test_an_approval_in_another_persons_name_is_refused(
    kubectl: Kubectl, approver: Kubectl, namespace: str, demo: DemoService, waiting: dict[str, Any]
) -> None:
    proc = patch(approver, namespace, approval(waiting, "bob"))
    assert proc.returncode != 0 and REFUSED in proc.stderr
    assert 'an approval must be in your own name: by must be alice (the authenticated user), not "bob"' in proc.stderr
    assert approvals(kubectl, namespace) == [] and demo.failovers == 0


def test_an_approval_by_someone_without_the_approve_verb_is_refused_naming_the_role(
    kubectl: Kubectl, carol: Kubectl, namespace: str, demo: DemoService, waiting: dict[str, Any]
) -> None:
    proc = patch(carol, namespace, approval(waiting, "carol"))
    assert proc.returncode != 0 and REFUSED in proc.stderr
    assert f"user carol may not approve steps of incidents in namespace {namespace}" in proc.stderr
    assert (
        f"kubectl create rolebinding runbook-approvers -n {namespace} --clusterrole=runbook-operator-approver "
        "--user=carol" in proc.stderr
    )
    assert patch(carol, namespace, '{"spec":{"labels":{"seen":"yes"}}}', "merge").returncode == 0  # editing is fine
    assert approvals(kubectl, namespace) == [] and demo.failovers == 0


def test_existing_approvals_can_be_neither_changed_nor_removed_even_by_an_admin(
    kubectl: Kubectl, approver: Kubectl, namespace: str, waiting: dict[str, Any]
) -> None:
    first = awaiting(kubectl.get("incident", "consent", namespace)["status"], "failover")
    assert patch(approver, namespace, approval(first, "alice")).returncode == 0
    kept = approvals(kubectl, namespace)
    attempts = [
        ('[{"op":"replace","path":"/spec/approvals/0/by","value":"mallory"}]', "json"),
        ('[{"op":"replace","path":"/spec/approvals/0/round","value":2}]', "json"),
        ('[{"op":"remove","path":"/spec/approvals/0"}]', "json"),
        ('{"spec":{"approvals":[]}}', "merge"),
    ]
    for who in (approver, kubectl):
        for body, kind in attempts:
            proc = patch(who, namespace, body, kind)
            assert proc.returncode != 0 and "spec.approvals is append-only" in proc.stderr, (body, proc.stderr)
    assert approvals(kubectl, namespace) == kept


def test_an_approval_naming_no_open_request_is_refused(
    kubectl: Kubectl, approver: Kubectl, namespace: str, waiting: dict[str, Any]
) -> None:
    for wrong in ({"nonce": "feedfacefeedface"}, {"round": 2}, {"step": "restart"}):
        proc = patch(approver, namespace, approval(waiting, "alice", **wrong))
        assert proc.returncode != 0 and "names no open request" in proc.stderr, (wrong, proc.stderr)
    assert f"kubectl runbook approve consent failover -n {namespace}" in proc.stderr
    assert approvals(kubectl, namespace) == []


def test_acknowledged_by_must_be_the_callers_own_name(
    kubectl: Kubectl, approver: Kubectl, carol: Kubectl, namespace: str, waiting: dict[str, Any]
) -> None:
    proc = patch(carol, namespace, '{"spec":{"acknowledgedBy":"alice"}}', "merge")
    assert proc.returncode != 0 and "spec.acknowledgedBy must be your own username, carol" in proc.stderr
    assert f"kubectl runbook ack consent -n {namespace}" in proc.stderr
    create = incident("acked", namespace, acknowledgedBy="alice")
    assert "spec.acknowledgedBy must be your own username, carol" in carol.apply(create, check=False).stderr
    assert patch(approver, namespace, '{"spec":{"acknowledgedBy":"alice"}}', "merge").returncode == 0
    assert patch(carol, namespace, '{"spec":{"labels":{"x":"y"}}}', "merge").returncode == 0  # unchanged ack is fine

    def acknowledged() -> tuple[str, str] | None:
        return conditions(kubectl.get("incident", "consent", namespace)["status"]).get("Acknowledged")

    wait_for(lambda: acknowledged() == ("True", "Acknowledged"), 30, "the operator to see the acknowledgement")


def test_the_alertmanager_intakes_identity_cannot_approve(
    kubectl: Kubectl, operator_kubeconfig: Path, namespace: str, waiting: dict[str, Any]
) -> None:
    """The intake creates and resolves Incidents as the operator's ServiceAccount, which may patch them."""
    intake = Kubectl(kubectl.binary, operator_kubeconfig)
    proc = patch(intake, namespace, approval(waiting, SA))
    assert proc.returncode != 0, proc.stderr
    assert f"user {SA} may not approve steps of incidents in namespace {namespace}" in proc.stderr
    assert approvals(kubectl, namespace) == []


# -- the status subresource (issue 22, finding 3) --------------------------------------------------

STATUS_REFUSED = "ValidatingAdmissionPolicy 'runbook-operator-status' with binding 'runbook-operator-status' denied"


@pytest.fixture
def status_writer(kubectl: Kubectl, namespace: str) -> Kubectl:
    """A ServiceAccount that may read incidents and patch their status, nothing else: the red team's."""
    kubectl.apply(
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": {"name": "status-writer", "namespace": namespace},
         "rules": [{"apiGroups": ["remediation.ishchat.io"], "resources": ["incidents"], "verbs": ["get"]},
                   {"apiGroups": ["remediation.ishchat.io"], "resources": ["incidents/status"],
                    "verbs": ["get", "patch", "update"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": "status-writer", "namespace": namespace},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "status-writer"},
         "subjects": [{"kind": "ServiceAccount", "name": "status-writer", "namespace": namespace}]},
    )  # fmt: skip
    return kubectl.as_user(f"system:serviceaccount:{namespace}:status-writer", "system:serviceaccounts")


def patch_status(who: Kubectl, namespace: str, status: dict[str, Any], name: str = "consent") -> Any:
    body = json.dumps({"status": status})
    return who("patch", "incident", name, "-n", namespace, "--subresource=status", "--type=merge", "-p", body,
               check=False)  # fmt: skip


def test_only_the_operator_may_change_an_incidents_status(
    kubectl: Kubectl, status_writer: Kubectl, namespace: str, demo: DemoService, waiting: dict[str, Any]
) -> None:
    """(a) a gated step marked Running without approval, (b) a harmless request shown beside the
    real digest: both refused by the API server, whatever the writer's RBAC on incidents/status."""
    kubectl.apply(incident("probe", namespace, alert="Probe"))  # tried until the policy is in force
    wait_for(lambda: STATUS_REFUSED in patch_status(status_writer, namespace, {"phase": "Resolved"}, "probe").stderr,
             60, "the status admission policy to be enforced")  # fmt: skip
    before = kubectl.get("incident", "consent", namespace)["status"]
    running = [s | {"state": "Running"} if s["name"] == "failover" else s for s in before["steps"]]
    harmless = {"url": f"{demo.url}/db/health"}
    shown = [s | {"approvalRequest": s["approvalRequest"] | {"parameters": harmless}} if s["name"] == "failover"
             else s for s in before["steps"]]  # fmt: skip
    for forged in ({"steps": running, "phase": "Remediating"}, {"steps": shown}):
        proc = patch_status(status_writer, namespace, forged)
        assert proc.returncode != 0 and STATUS_REFUSED in proc.stderr, proc.stderr
        assert f"user system:serviceaccount:{namespace}:status-writer may not change it" in proc.stderr
        assert "written by the operator only" in proc.stderr and "verb remediate" in proc.stderr
    after = kubectl.get("incident", "consent", namespace)["status"]
    assert awaiting(after, "failover")["approvalRequest"] == waiting["approvalRequest"] and demo.failovers == 0
    # a status write that changes nothing is no attack, and the operator's own writes go on (the fixture's)
    assert patch_status(status_writer, namespace, {"phase": after["phase"]}).returncode == 0
