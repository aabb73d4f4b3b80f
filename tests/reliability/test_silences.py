"""Silences around a fix against the lab's real Alertmanager and the session's operator (issue 26):
the alert is muted in Alertmanager while the incident is remediated, and speaks again once it
resolves, escalates or is deleted, also when the operator was killed with SIGKILL in between."""

from __future__ import annotations

from typing import Any

import httpx

from tests.fixtures.alertmanager import fire
from tests.fixtures.cluster import Kubectl
from tests.fixtures.common import wait_for
from tests.fixtures.operator import OperatorProcess
from tests.reliability.conftest import GateServer, incident, policy, statuses, step


def silenced_by(url: str, labels: dict[str, str]) -> list[str]:
    alerts = httpx.get(f"{url}/api/v2/alerts", timeout=5).json()
    [found] = [a for a in alerts if a["labels"] == labels]
    return found["status"]["silencedBy"]  # type: ignore[no-any-return]


def silenced_policy(name: str, namespace: str, am: str, fix_url: str, verify_url: str) -> dict[str, Any]:
    return policy(name, namespace, limits={"maxAttempts": 1},
                  remediate=[step("silence", "alertmanager.silence", **{"with": {"url": am, "duration": "30m"}}),
                             step("fix", "http.request", timeout="90s", **{"with": {"url": fix_url}})],
                  verify=[step("fixed", "http.check", retries=20, backoff="500ms", **{"with": {"url": verify_url}})])  # fmt: skip


def opened(kubectl: Kubectl, namespace: str, name: str, alert: str, am: str) -> dict[str, str]:
    """Fire the alert in Alertmanager and open its Incident; the alert's labels."""
    labels = {"alertname": f"Alert-{alert}", "service": f"svc-{namespace}-{name}", "namespace": namespace}
    fire(am, labels)
    kubectl.apply(incident(name, namespace, alert, labels={"service": labels["service"]}))
    return labels


def test_kill_9_mid_remediation_the_restarted_operator_still_expires_the_silence(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str, gates: GateServer, alertmanager: str
) -> None:
    gates.shut("held")
    kubectl.apply(silenced_policy("held", namespace, alertmanager, f"{gates.url}/gate/held", f"{gates.url}/done/held"))
    labels = opened(kubectl, namespace, "held", "held", alertmanager)
    wait_for(lambda: gates.waiting["held"] == 1, 60, "the fix to be held at the gate")
    [ident] = wait_for(lambda: silenced_by(alertmanager, labels), 15, "the alert muted while it is remediated")
    assert "runbook_silences_active 1.0" in operator.scrape()
    status = statuses(kubectl, namespace)["held"]
    assert [(s["id"], s["url"]) for s in status["silences"]] == [(ident, alertmanager)]
    operator.kill9()
    operator.start()
    gates.open("held")  # the fix is not destructive: the restarted operator runs it again, and it lands
    wait_for(lambda: statuses(kubectl, namespace)["held"].get("phase") == "Resolved", 90, "the incident to resolve")
    wait_for(lambda: silenced_by(alertmanager, labels) == [], 30, "the silence to be expired")
    [record] = statuses(kubectl, namespace)["held"]["silences"]
    assert record["id"] == ident and record["expiredAt"]
    assert "runbook_silences_active 0.0" in operator.scrape()


def test_the_silence_is_expired_when_the_incident_escalates_or_is_deleted(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str, gates: GateServer, alertmanager: str
) -> None:
    kubectl.apply(silenced_policy("broken", namespace, alertmanager, f"{gates.url}/fail/broken", f"{gates.url}/fail/x"))
    broken = opened(kubectl, namespace, "broken", "broken", alertmanager)
    wait_for(lambda: statuses(kubectl, namespace)["broken"].get("phase") == "Escalated", 60, "the incident to escalate")
    wait_for(lambda: silenced_by(alertmanager, broken) == [], 30, "the silence to be expired on escalation")
    assert statuses(kubectl, namespace)["broken"]["silences"][0]["expiredAt"]

    gates.shut("gone")
    kubectl.apply(silenced_policy("gone", namespace, alertmanager, f"{gates.url}/gate/gone", f"{gates.url}/done/gone"))
    gone = opened(kubectl, namespace, "gone", "gone", alertmanager)
    wait_for(lambda: gates.waiting["gone"] == 1, 60, "the fix to be held at the gate")
    wait_for(lambda: len(silenced_by(alertmanager, gone)) == 1, 15, "the alert muted")
    kubectl("delete", "incident", "gone", "-n", namespace)
    wait_for(lambda: silenced_by(alertmanager, gone) == [], 30, "the deleted incident's silence to be expired")
