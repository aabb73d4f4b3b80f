"""Security through the running operator, under its own RBAC from manifests/.

Covered elsewhere and not repeated here (docs/reliability.md says where):
secret values never in status, Events, logs or notifications (tests/e2e/test_secrets.py, and
test_outages.py here for PostgreSQL, Redis and webhook-URL secrets on the failure paths);
a secret read without the namespace Role fails saying so (tests/e2e/test_secrets.py);
the intake refuses requests without or with a wrong token (tests/e2e/test_intake.py, and
the fuzzed webhooks of test_bad_input.py here).
"""

from __future__ import annotations

import socket

from tests.fixtures.cluster import ROOT, Kubectl
from tests.fixtures.common import silent, wait_for
from tests.fixtures.operator import OperatorProcess
from tests.reliability.conftest import incident, policy, policy_ready, record, statuses, step


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


def test_alert_labels_cannot_choose_where_credentials_go(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    """The attack: `host: "{{ incident.labels.instance }}"` sent Redis' AUTH and PostgreSQL's
    password to whatever address the alert named. Now such a policy is not Ready, and the
    attacker's listeners hear nothing; the same step written literally does connect."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    secret = {"passwordSecretRef": {"name": "db-auth", "key": "password"}}
    steps = {
        "redis-by-label": step("ping", "redis.ping", timeout="2s",
                               **{"with": {"host": "{{ incident.labels.instance }}", "port": port, **secret}}),
        "pg-by-label": step("ping", "postgres.ping", timeout="2s", **{"with": {
            "host": "{{ incident.labels.instance }}", "port": port, "dbname": "app", "user": "app", **secret}}),
        "redis-literal": step("ping", "redis.ping", timeout="2s", **{"with": {"host": "127.0.0.1", "port": port}}),
    }  # fmt: skip
    with silent(sock) as accepted:
        kubectl.apply(*(policy(name, namespace, diagnose=[s], limits={"maxAttempts": 1}) for name, s in steps.items()))
        for name in ("redis-by-label", "pg-by-label"):
            ready = wait_for(lambda n=name: policy_ready(kubectl, n, namespace), 30, f"{name} judged")  # type: ignore[misc]
            assert ready["status"] == "False" and ready["message"].startswith(
                f"spec.diagnose[0].with ({steps[name]['action']}): host: must be literal in the policy"
            ), ready
            kubectl.apply(incident(f"{name}-1", namespace, name, labels={"instance": "127.0.0.1"}))
            wait_for(lambda n=name: statuses(kubectl, namespace)[f"{n}-1"].get("phase") == "Escalated", 30, "escalated")  # type: ignore[misc]
        assert accepted == []  # no connection, so no AUTH and no password exchange
        kubectl.apply(incident("literal-1", namespace, "redis-literal"))
        wait_for(lambda: len(accepted) > 0, 30, "the literal destination is contacted")
    assert operator.alive()
