"""Security through the running operator, under its own RBAC from manifests/.

Covered elsewhere and not repeated here (docs/reliability.md says where):
secret values never in status, Events, logs or notifications (tests/e2e/test_secrets.py, and
test_outages.py here for PostgreSQL, Redis and webhook-URL secrets on the failure paths);
a secret read without the namespace Role fails saying so (tests/e2e/test_secrets.py);
the intake refuses requests without or with a wrong token (tests/e2e/test_intake.py, and
the fuzzed webhooks of test_bad_input.py here).
"""

from __future__ import annotations

import pytest

from tests.fixtures.cluster import ROOT, Kubectl
from tests.fixtures.common import wait_for
from tests.fixtures.operator import OperatorProcess
from tests.reliability.conftest import incident, policy, record, statuses, step

pytestmark = pytest.mark.e2e


def test_a_missing_permission_is_named_in_status_and_events_and_granting_it_fixes_it(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    kubectl("create", "deployment", "web", "-n", namespace, "--image=busybox", "--replicas=1")
    kubectl.apply(policy("restart-web", namespace, limits={"maxAttempts": 1},
                         remediate=[step("restart", "kubernetes.rolloutRestart", **{"with": {"name": "web"}})]))  # fmt: skip
    kubectl.apply(incident("denied", namespace, "restart-web"))
    wait_for(lambda: statuses(kubectl, namespace)["denied"].get("phase") == "Escalated", 30, "escalated")
    denied = record(statuses(kubectl, namespace)["denied"], "restart")
    expected = (
        f"forbidden: the operator may not get deployments in namespace {namespace}; bind the Role "
        f"runbook-operator-actions there (kubectl apply -n {namespace} -k manifests/namespace-access)"
    )
    assert denied["state"] == "Failed" and denied["message"] == expected, denied
    events = [e["message"] for e in kubectl.events("denied", namespace) if e["reason"] == "StepFailed"]
    assert any(expected in message for message in events), events
    template = kubectl.get("deployment", "web", namespace)["spec"]["template"]["metadata"]
    assert "kubectl.kubernetes.io/restartedAt" not in (template.get("annotations") or {})

    kubectl("apply", "-n", namespace, "-k", str(ROOT / "manifests/namespace-access"))
    kubectl.apply(incident("granted", namespace, "restart-web"))
    wait_for(lambda: statuses(kubectl, namespace)["granted"].get("phase") == "Resolved", 30, "resolved")
    assert record(statuses(kubectl, namespace)["granted"], "restart")["state"] == "Succeeded"
    template = kubectl.get("deployment", "web", namespace)["spec"]["template"]["metadata"]
    assert "kubectl.kubernetes.io/restartedAt" in template["annotations"]
    assert operator.alive()
