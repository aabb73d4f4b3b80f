"""Secrets by reference: read under the operator's own RBAC, and never echoed anywhere."""

from __future__ import annotations

import base64
import json

import pytest

from runbook_lab.demo import DemoService
from tests.e2e.conftest import ROOT, Kubectl, OperatorProcess
from tests.e2e.test_foundation import demo_policy, incident, settled

pytestmark = pytest.mark.e2e
TOKEN = "Bearer tok-9f8e7d6c5b4a"


def test_a_secret_value_never_appears_in_status_events_logs_or_notifications(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str, demo: DemoService
) -> None:
    kubectl("apply", "-n", namespace, "-k", str(ROOT / "manifests/namespace-access"))
    kubectl.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "admin-api", "namespace": namespace},
                   "data": {"token": base64.b64encode(TOKEN.encode()).decode()}})  # fmt: skip
    demo.fixable = False
    secret_header = {"Authorization": {"name": "admin-api", "key": "token"}}
    kubectl.apply(demo_policy("im-down", namespace, demo.url,
        diagnose=[{"name": "echo", "action": "http.request",
                   "with": {"url": f"{demo.url}/admin/echo", "headersFromSecrets": secret_header}}],
        escalate={"levels": [{"name": "on-call", "notify": [
            {"name": "page", "action": "notify.webhook", "with": {"url": f"{demo.url}/hooks/page", "format": "json"}}]}]},
    ))  # fmt: skip
    kubectl.apply(incident("leaky", namespace))
    status = settled(kubectl, "leaky", namespace, "Escalated")

    assert any(h.get("Authorization") == TOKEN for h in demo.headers)  # the secret really was used
    echo = next(s for s in status["steps"] if s["name"] == "echo")
    assert echo["state"] == "Succeeded" and '"Authorization": "*' in echo["output"]["body"]  # scrubbed, then cut
    assert demo.hooks, "the on-call webhook was not called"
    places = {
        "status": json.dumps(kubectl.get("incident", "leaky", namespace)),
        "events": json.dumps(kubectl.events("leaky", namespace)),
        "notifications": json.dumps(demo.hooks),
        "operator log": operator.log.read_text(),
    }
    for place, text in places.items():
        assert "tok-9f8e7d6c5b4a" not in text, f"the secret leaked into {place}"


def test_without_the_namespace_role_the_step_fails_saying_so(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str, demo: DemoService
) -> None:
    kubectl.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "admin-api", "namespace": namespace},
                   "stringData": {"token": TOKEN}})  # fmt: skip
    kubectl.apply(demo_policy("im-down", namespace, demo.url, remediate=[
        {"name": "restart", "action": "http.request", "with": {
            "url": f"{demo.url}/admin/restart", "expectStatus": 202,
            "headersFromSecrets": {"Authorization": {"name": "admin-api", "key": "token"}}}}]))  # fmt: skip
    kubectl.apply(incident("forbidden", namespace))
    status = settled(kubectl, "forbidden", namespace, "Escalated")
    restart = next(s for s in status["steps"] if s["name"] == "restart")
    assert restart["state"] == "Failed"
    assert restart["message"] == f"header Authorization: secret {namespace}/admin-api: Forbidden (403)"
    assert demo.restarts == 0
