"""Secrets by reference: read under the operator's own RBAC, and never echoed anywhere."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import pytest

from runbook_lab.demo import DemoService
from runbook_operator.entrypoints import cli
from tests.e2e.conftest import ROOT, Kubectl, OperatorProcess
from tests.e2e.test_foundation import demo_policy, incident, settled
from tests.fixtures.listeners import Listener

TOKEN = "Bearer tok-9f8e7d6c5b4a"
CONSENT = "remediation.ishchat.io/policies"


def test_a_secret_value_never_appears_in_status_events_logs_or_notifications(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str, demo: DemoService
) -> None:
    kubectl("apply", "-n", namespace, "-k", str(ROOT / "manifests/namespace-access"))
    kubectl.apply({"apiVersion": "v1", "kind": "Secret",
                   "metadata": {"name": "admin-api", "namespace": namespace, "annotations": {CONSENT: "other,im-down"}},
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


def test_a_secret_that_does_not_name_the_policy_is_not_read(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str, demo: DemoService
) -> None:
    """The confused deputy: whoever may create policies may not send the operator's Secrets anywhere."""
    kubectl("apply", "-n", namespace, "-k", str(ROOT / "manifests/namespace-access"))
    kubectl.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "admin-api", "namespace": namespace},
                   "stringData": {"token": TOKEN}})  # fmt: skip
    demo.fixable = False
    kubectl.apply(demo_policy("im-down", namespace, demo.url, diagnose=[
        {"name": "exfiltrate", "action": "http.request", "with": {
            "url": f"{demo.url}/admin/echo", "headersFromSecrets": {"Authorization": {"name": "admin-api", "key": "token"}}}}]))  # fmt: skip
    kubectl.apply(incident("deputy", namespace))
    status = settled(kubectl, "deputy", namespace, "Escalated")
    step = next(s for s in status["steps"] if s["name"] == "exfiltrate")
    assert step["state"] == "Failed"
    assert step["message"] == (
        f"header Authorization: secret {namespace}/admin-api is not shared with policy 'im-down': its owner must add "
        f"it to the annotation {CONSENT} (kubectl annotate secret admin-api -n {namespace} --overwrite {CONSENT}=im-down)"
    )
    assert not [r for r in demo.requests if r[1] == "/admin/echo"]  # the listener it targets received nothing


@pytest.fixture
def listeners() -> Iterator[tuple[Listener, Listener]]:
    elsewhere = Listener().start()
    home = Listener(redirect_to=f"{elsewhere.url}/collect").start()
    yield home, elsewhere
    home.stop()
    elsewhere.stop()


def test_metadata_redirects_and_a_trailing_newline_leak_nothing(
    kubectl: Kubectl,
    operator: OperatorProcess,
    namespace: str,
    demo: DemoService,
    listeners: tuple[Listener, Listener],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    home, elsewhere = listeners
    newline = "tok-NL-5a4b3c2d\n"  # as `kubectl create secret --from-file` stores a file with its last newline
    kubectl("apply", "-n", namespace, "-k", str(ROOT / "manifests/namespace-access"))
    kubectl.apply({"apiVersion": "v1", "kind": "Secret",
                   "metadata": {"name": "shared", "namespace": namespace, "annotations": {CONSENT: "*"}},
                   "stringData": {"key": "k3y-7e6f5a", "nl": newline}})  # fmt: skip
    demo.fixable = False

    def step(name: str, url: str, key: str, header: str = "Authorization") -> dict[str, object]:
        return {"name": name, "action": "http.request", "continueOnFailure": True, "with": {
            "url": url, "method": "GET", "headersFromSecrets": {header: {"name": "shared", "key": key}}}}  # fmt: skip

    kubectl.apply(demo_policy("im-down", namespace, demo.url,
        diagnose=[step("metadata", "http://169.254.169.254/latest/meta-data/iam/", "key"),
                  step("redirect", f"{home.url}/admin", "key", "X-Api-Key"),
                  step("newline", f"{demo.url}/admin/echo", "nl")],
        escalate={"levels": [{"name": "on-call", "notify": [
            {"name": "page", "action": "notify.webhook", "with": {"url": f"{demo.url}/hooks/page", "format": "json"}}]}]},
    ))  # fmt: skip
    kubectl.apply(incident("boundaries", namespace))
    status = settled(kubectl, "boundaries", namespace, "Escalated")
    steps = {s["name"]: s for s in status["steps"]}

    assert steps["metadata"]["message"] == (
        "GET http://169.254.169.254/latest/meta-data/iam/: 169.254.169.254 is a link-local or cloud metadata "
        "address: refused (start the operator with --allow-link-local to allow it)"
    )
    assert steps["redirect"]["message"] == (
        f"GET {home.url}/admin: redirected to {elsewhere.url}, another origin: not followed, "
        "it would carry X-Api-Key from a Secret there"
    )
    assert home.requests[0][2]["X-Api-Key"] == "k3y-7e6f5a"  # "*" lent it to the policy, at home
    assert elsewhere.requests == []
    assert steps["newline"]["message"] == (
        "header Authorization: Secret 'shared' key 'nl': the value contains a control character (often the trailing "
        "newline `kubectl create secret --from-file` keeps): refused; store the value without it"
    )
    assert demo.hooks, "the on-call webhook was not called"

    monkeypatch.setenv("KUBECONFIG", str(kubectl.kubeconfig))
    capsys.readouterr()
    assert cli.main(["report", "boundaries", "-n", namespace]) == 0
    places = {
        "status": json.dumps(kubectl.get("incident", "boundaries", namespace)),
        "events": json.dumps(kubectl.events("boundaries", namespace)),
        "notifications": json.dumps(demo.hooks),
        "operator log": operator.log.read_text(),
        "report": capsys.readouterr().out,
    }
    for place, text in places.items():
        for form in ("tok-NL-5a4b3c2d", repr(newline), json.dumps(newline), "k3y-7e6f5a"):
            assert form not in text, f"{form!r} leaked into {place}"
