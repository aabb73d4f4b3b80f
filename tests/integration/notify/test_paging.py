"""notify.pagerduty and notify.opsgenie over real HTTP, against receivers that check each
request against the provider's documented schema (tests/fixtures/paging.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import pytest

from runbook_operator.actions.api import ActionContext
from runbook_operator.actions.catalog import default_registry
from runbook_operator.domain.expressions import check_templates
from runbook_operator.domain.lifecycle import StepCall
from runbook_operator.domain.model import Incident, InvalidPolicy, Stage, Step
from runbook_operator.domain.parsing import parse_policy
from runbook_operator.domain.results import StepResult
from runbook_operator.engine.executor import Executor, run_action
from tests.fixtures.listeners import Listener
from tests.fixtures.paging import Opsgenie, PagerDuty, opsgenie_action_errors, opsgenie_create_errors, pagerduty_errors
from tests.fixtures.secrets import Secrets
from tests.unit.builders import incident, policy_body

REGISTRY = default_registry()
ROUTING_KEY = "0123456789abcdef01234pd5ecr3tkey"  # 32 characters, as PagerDuty's integration keys
API_KEY = "0g5ecr3t-faa2-4ba2-a551-1afdf565c889"
SECRETS = {("ns", "pd", "routingKey"): ROUTING_KEY, ("ns", "og", "apiKey"): API_KEY}
UID = "6a0c1f3e-1b2c-4d5e-8f90-123456789abc"
PD_KEY, OG_KEY = "pagerduty/pd/routingKey", "opsgenie/og/apiKey"
DEDUP, ALIAS = f"runbook-operator/{UID}", f"runbook-operator-{UID}"
PD_REF, OG_REF = {"name": "pd", "key": "routingKey"}, {"name": "og", "key": "apiKey"}


@pytest.fixture
def pd() -> Iterator[PagerDuty]:
    receiver = PagerDuty(ROUTING_KEY).start()
    yield receiver
    receiver.stop()


@pytest.fixture
def og() -> Iterator[Opsgenie]:
    receiver = Opsgenie(API_KEY).start()
    yield receiver
    receiver.stop()


def details(phase: str | None = None, **extra: Any) -> dict[str, Any]:
    """The engine's view of an incident; ``phase`` makes it a status-change announcement."""
    view: dict[str, Any] = {
        "name": "web-down", "namespace": "ns", "alert": "WebDown", "severity": "Critical",
        "summary": "web answers 503", "description": "", "labels": {"app": "web"},
        "target": {"kind": "Deployment", "name": "web", "namespace": "ns"},
        "phase": "Escalated", "level": "on-call", "acknowledgedBy": None,
        "findings": [{"step": "health", "message": "503 Service Unavailable"}],
        "steps": [{"name": "restart", "stage": "Remediate", "state": "Failed", "message": "timed out"}],
    }  # fmt: skip
    if phase is not None:
        view["announcement"] = {"phase": phase, "number": 2, "at": "2024-05-01T10:00:00Z", "reason": "Escalated",
                                "message": "remediation did not help"}  # fmt: skip
    return view | extra


def context(
    view: dict[str, Any] | None = None, conversations: dict[str, str] | None = None, timeout: float = 5.0
) -> ActionContext:
    return ActionContext("ns", "web-down", timeout, view, Secrets(dict(SECRETS)), "p", UID, conversations or {})


async def run(action: str, params: dict[str, Any], ctx: ActionContext) -> StepResult:
    return await run_action(REGISTRY.get(action), REGISTRY.parse(action, params), ctx)


def pd_params(pd: PagerDuty, **extra: Any) -> dict[str, Any]:
    return {"baseUrl": pd.url, "routingKeySecretRef": PD_REF, "backoff": "10ms", **extra}


def og_params(og: Opsgenie, **extra: Any) -> dict[str, Any]:
    return {"baseUrl": og.url, "apiKeySecretRef": OG_REF, "backoff": "10ms", **extra}


def assert_no_key(*results: StepResult) -> None:
    for result in results:
        text = result.message + repr(dict(result.output)) + repr(result.conversation)
        assert ROUTING_KEY not in text and API_KEY not in text, result
        assert "5ecr3t" not in text, result


# -- the life of one incident's alert -------------------------------------------------------


async def test_pagerduty_trigger_acknowledge_resolve_name_one_alert(pd: PagerDuty) -> None:
    triggered = await run("notify.pagerduty", pd_params(pd), context(details("Escalated")))
    assert triggered.ok, triggered.message
    assert triggered.message == f"PagerDuty: trigger accepted (dedup key {DEDUP})"
    assert triggered.output == {"status": 202, "event": "trigger", "dedupKey": DEDUP, "sent": True}
    assert triggered.conversation == (PD_KEY, DEDUP)
    paged = {PD_KEY: DEDUP}
    acked = await run("notify.pagerduty", pd_params(pd), context(details("Acknowledged", acknowledgedBy="ana"), paged))
    resolved = await run("notify.pagerduty", pd_params(pd), context(details("Resolved"), paged))
    assert acked.ok and resolved.ok, (acked, resolved)
    assert acked.message == f"PagerDuty: acknowledge accepted (dedup key {DEDUP})" and acked.conversation is None
    assert resolved.message == f"PagerDuty: resolve accepted (dedup key {DEDUP})" and resolved.conversation is None
    assert [(e["event_action"], e["dedup_key"]) for e in pd.events] == [
        ("trigger", DEDUP), ("acknowledge", DEDUP), ("resolve", DEDUP)]  # fmt: skip
    assert pd.alerts == {DEDUP: "resolved"}
    assert {r.path for r in pd.requests} == {"/v2/enqueue"}
    assert all(r.headers["Content-Type"] == "application/json" for r in pd.requests)
    assert set(pd.events[1]) == set(pd.events[2]) == {"routing_key", "event_action", "dedup_key"}
    assert_no_key(triggered, acked, resolved)


async def test_a_pagerduty_trigger_says_what_the_runbook_knows(pd: PagerDuty) -> None:
    view = details("Escalated")
    result = await run("notify.pagerduty", pd_params(pd), context(view))
    assert result.ok, result.message
    (event,) = pd.events
    assert event["client"] == "runbook-operator" and event["routing_key"] == ROUTING_KEY
    payload = event["payload"]
    assert payload["summary"] == "[Critical] WebDown ns/web-down: escalated: needs people"
    assert (payload["source"], payload["severity"], payload["component"], payload["group"], payload["class"]) == (
        "Deployment/ns/web", "critical", "web", "ns", "WebDown")  # fmt: skip
    assert datetime.fromisoformat(payload["timestamp"]).tzinfo is not None
    custom = payload["custom_details"]
    assert (custom["incident"], custom["namespace"], custom["phase"], custom["level"]) == (
        "web-down", "ns", "Escalated", "on-call")  # fmt: skip
    assert custom["findings"] == ["health: 503 Service Unavailable"]
    assert custom["announcement"]["phase"] == "Escalated" and custom["announcement"]["number"] == 2
    assert "Inspect: kubectl describe incident web-down -n ns" in custom["details"]
    assert "Escalated: remediation did not help" in custom["details"]


@pytest.mark.parametrize(("severity", "expected"), [("Critical", "critical"), ("High", "error"),
                                                    ("Medium", "warning"), ("Low", "info"), (None, "warning")])  # fmt: skip
async def test_pagerduty_severity_follows_the_incident(pd: PagerDuty, severity: str | None, expected: str) -> None:
    result = await run("notify.pagerduty", pd_params(pd), context(details(severity=severity)))
    assert result.ok, result.message
    assert pd.events[0]["payload"]["severity"] == expected


async def test_pagerduty_source_and_component_may_be_written_in_the_policy(pd: PagerDuty) -> None:
    params = pd_params(pd, source="web.example.com", component="nginx")
    result = await run("notify.pagerduty", params, context(details(target=None)))
    assert result.ok, result.message
    payload = pd.events[0]["payload"]
    assert (payload["source"], payload["component"]) == ("web.example.com", "nginx")


async def test_opsgenie_create_acknowledge_close_name_one_alert(og: Opsgenie) -> None:
    created = await run("notify.opsgenie", og_params(og, tags=["team:web"]), context(details("Escalated")))
    assert created.ok, created.message
    assert created.message == f"Opsgenie: create accepted (alias {ALIAS})"
    assert created.conversation == (OG_KEY, ALIAS)
    assert created.output["requestId"] and created.output["alias"] == ALIAS and created.output["status"] == 202
    paged = {OG_KEY: ALIAS}
    acked = await run("notify.opsgenie", og_params(og), context(details("Acknowledged", acknowledgedBy="ana"), paged))
    closed = await run("notify.opsgenie", og_params(og), context(details("Resolved"), paged))
    assert acked.ok and closed.ok, (acked, closed)
    assert acked.message == f"Opsgenie: acknowledge accepted (alias {ALIAS})"
    assert closed.message == f"Opsgenie: close accepted (alias {ALIAS})"
    assert [r.status for r in og.requests] == [202, 202, 202]
    assert [r.path for r in og.requests] == [
        "/v2/alerts", f"/v2/alerts/{ALIAS}/acknowledge", f"/v2/alerts/{ALIAS}/close"]  # fmt: skip
    assert [r.query for r in og.requests] == [{}, {"identifierType": ["alias"]}, {"identifierType": ["alias"]}]
    assert all(r.headers["Authorization"] == f"GenieKey {API_KEY}" for r in og.requests)
    assert og.alerts == {ALIAS: "closed"}
    alert = og.requests[0].json
    assert alert["message"] == "[Critical] WebDown ns/web-down: escalated: needs people"
    assert (alert["alias"], alert["priority"], alert["source"], alert["entity"]) == (
        ALIAS, "P1", "runbook-operator", "Deployment/ns/web")  # fmt: skip
    assert alert["tags"] == ["runbook-operator", "WebDown", "Critical", "namespace:ns", "team:web"]
    assert alert["details"]["incident"] == "web-down" and alert["details"]["phase"] == "Escalated"
    assert "Findings:\n- health: 503 Service Unavailable" in alert["description"]
    ack = og.requests[1].json
    assert ack["user"] == "ana" and ack["source"] == "runbook-operator"
    assert ack["note"].startswith("[Critical] WebDown ns/web-down: acknowledged by ana")
    assert_no_key(created, acked, closed)


@pytest.mark.parametrize(("severity", "expected"), [("Critical", "P1"), ("High", "P2"), ("Medium", "P3"),
                                                    ("Low", "P4"), (None, "P3")])  # fmt: skip
async def test_opsgenie_priority_follows_the_incident(og: Opsgenie, severity: str | None, expected: str) -> None:
    result = await run("notify.opsgenie", og_params(og), context(details(severity=severity)))
    assert result.ok, result.message
    assert og.requests[0].json["priority"] == expected


# -- event: auto ---------------------------------------------------------------------------

PHASES = [("Diagnosing", "trigger"), ("AwaitingApproval", "trigger"), ("Remediating", "trigger"),
          ("Verifying", "trigger"), ("Escalated", "trigger"), ("Resolved", "resolve"),
          ("Acknowledged", "acknowledge"), ("", "trigger"), (None, "trigger")]  # fmt: skip
OG_EVENT = {"trigger": "create", "acknowledge": "acknowledge", "resolve": "close"}


@pytest.mark.parametrize(("phase", "event"), PHASES)
async def test_auto_follows_the_announced_phase_on_pagerduty(pd: PagerDuty, phase: str | None, event: str) -> None:
    """None: no announcement (an escalation level's step), which pages."""
    result = await run("notify.pagerduty", pd_params(pd), context(details(phase), {PD_KEY: DEDUP}))
    assert result.ok and result.output["event"] == event, result
    assert [e["event_action"] for e in pd.events] == [event]


@pytest.mark.parametrize(("phase", "event"), PHASES)
async def test_auto_follows_the_announced_phase_on_opsgenie(og: Opsgenie, phase: str | None, event: str) -> None:
    result = await run("notify.opsgenie", og_params(og), context(details(phase), {OG_KEY: ALIAS}))
    assert result.ok and result.output["event"] == OG_EVENT[event], result
    expected = "/v2/alerts" if event == "trigger" else f"/v2/alerts/{ALIAS}/{OG_EVENT[event]}"
    assert [r.path for r in og.requests] == [expected]


async def test_no_details_at_all_still_pages(pd: PagerDuty, og: Opsgenie) -> None:
    results = [await run("notify.pagerduty", pd_params(pd), context(None)),
               await run("notify.opsgenie", og_params(og), context(None))]  # fmt: skip
    assert all(r.ok for r in results), results
    assert pd.events[0]["payload"]["source"] == "ns/web-down" and og.requests[0].json["entity"] == "ns/web-down"


@pytest.mark.parametrize(("phase", "event"), [("Acknowledged", "acknowledge"), ("Resolved", "resolve")])
async def test_auto_does_not_acknowledge_or_resolve_what_it_never_paged(
    pd: PagerDuty, og: Opsgenie, phase: str, event: str
) -> None:
    other = {"pagerduty/other-secret/routingKey": "x", "opsgenie/og/otherKey": "y"}  # another service's alert
    on_pd = await run("notify.pagerduty", pd_params(pd), context(details(phase), other))
    on_og = await run("notify.opsgenie", og_params(og), context(details(phase), other))
    assert on_pd.ok and on_pd.message == f"nothing to {event} on PagerDuty: this incident never paged it"
    og_event = OG_EVENT[event]
    assert on_og.ok and on_og.message == f"nothing to {og_event} on Opsgenie: this incident never paged it"
    assert on_pd.output["sent"] is False and on_og.output["sent"] is False
    assert pd.requests == [] and og.requests == []


async def test_an_explicit_event_is_always_sent(pd: PagerDuty, og: Opsgenie) -> None:
    resolved = await run("notify.pagerduty", pd_params(pd, event="resolve"), context(details()))
    closed = await run("notify.opsgenie", og_params(og, event="close"), context(details()))
    triggered = await run("notify.pagerduty", pd_params(pd, event="trigger"), context(details("Resolved")))
    assert resolved.ok and closed.ok and triggered.ok, (resolved, closed, triggered)
    assert [(e["event_action"], e["dedup_key"]) for e in pd.events] == [("resolve", DEDUP), ("trigger", DEDUP)]
    assert og.requests[0].path == f"/v2/alerts/{ALIAS}/close"


async def test_without_a_uid_the_alert_is_named_by_namespace_and_name(pd: PagerDuty, og: Opsgenie) -> None:
    ctx = ActionContext("ns", "web-down", 5.0, details(), Secrets(dict(SECRETS)), "p")
    assert (await run("notify.pagerduty", pd_params(pd), ctx)).conversation == (PD_KEY, "runbook-operator/ns/web-down")
    assert (await run("notify.opsgenie", og_params(og), ctx)).conversation == (OG_KEY, "runbook-operator-ns-web-down")


# -- what fails, and how often it is tried --------------------------------------------------


async def test_a_refused_pagerduty_event_is_not_retried_and_says_why(pd: PagerDuty) -> None:
    pd.keys = {"f" * 32}  # the service no longer knows our key
    result = await run("notify.pagerduty", pd_params(pd), context(details()))
    assert not result.ok
    assert result.message == "PagerDuty: trigger refused (status 400): Event object is invalid; Invalid routing key"
    assert result.output == {"status": 400, "event": "trigger"} and len(pd.requests) == 1


async def test_a_refused_opsgenie_request_is_not_retried_and_says_why(og: Opsgenie) -> None:
    og.api_key = "another-key"
    unauthenticated = await run("notify.opsgenie", og_params(og), context(details()))
    assert not unauthenticated.ok and len(og.requests) == 1
    assert unauthenticated.message == (
        "Opsgenie: create refused (status 401): Could not authenticate (check the API key in Secret 'og' key "
        "'apiKey' and that its integration is enabled)"
    )
    og.api_key = API_KEY
    og.fail_next(1, 422, {"message": "Request body is not processable. Please check the errors.",
                          "errors": {"message": "Message can not be empty."}, "took": 0.0, "requestId": "r"})  # fmt: skip
    invalid = await run("notify.opsgenie", og_params(og), context(details()))
    assert not invalid.ok and len(og.requests) == 2
    assert invalid.message == (
        "Opsgenie: create refused (status 422): Request body is not processable. Please check the errors.; "
        "message: Message can not be empty."
    )


@pytest.mark.parametrize("status", [500, 502, 503, 429])
async def test_5xx_and_429_are_retried_until_accepted(pd: PagerDuty, og: Opsgenie, status: int) -> None:
    pd.fail_next(2, status, {"status": "error", "message": "try later"})
    og.fail_next(2, status, {"message": "try later", "took": 0.0, "requestId": "r"})
    on_pd = await run("notify.pagerduty", pd_params(pd), context(details()))
    on_og = await run("notify.opsgenie", og_params(og), context(details()))
    assert on_pd.ok and on_og.ok, (on_pd, on_og)
    assert [r.status for r in pd.requests] == [status, status, 202]
    assert [r.status for r in og.requests] == [status, status, 202]
    assert pd.alerts == {DEDUP: "triggered"} and og.alerts == {ALIAS: "open"}


async def test_retries_end_after_attempts_with_the_last_reason(pd: PagerDuty) -> None:
    pd.fail_next(5, 503, {"status": "error", "message": "overloaded"})
    result = await run("notify.pagerduty", pd_params(pd, attempts=2), context(details()))
    assert not result.ok and result.message == "PagerDuty: status 503: overloaded (after 2 tries)"
    assert result.output == {"status": 503} and len(pd.requests) == 2


async def test_a_service_that_is_down_is_a_clear_failure() -> None:
    params = {"baseUrl": "http://127.0.0.1:9", "routingKeySecretRef": PD_REF, "attempts": 2, "backoff": "10ms"}
    result = await run("notify.pagerduty", params, context(details()))
    assert not result.ok and result.message == "PagerDuty: cannot reach 127.0.0.1: ConnectError (after 2 tries)"


async def test_a_slow_service_never_holds_the_step_past_its_timeout(pd: PagerDuty) -> None:
    pd.delay = 5.0
    params = pd_params(pd, attempts=3)
    step = Step("page", Stage.ESCALATE, "notify.pagerduty", params, timeout=0.6)
    executor = Executor(REGISTRY, services=Secrets(dict(SECRETS)))
    started = time.monotonic()
    result = await executor.run(incident(), StepCall(step, 1, params), details(), policy="p")
    elapsed = time.monotonic() - started
    assert not result.ok and elapsed < 0.8, (result, elapsed)
    assert result.message == "PagerDuty: no answer in time (1 of 3 tries before the step's timeout)"
    assert len(pd.requests) == 1


async def test_retries_stop_at_the_step_timeout_with_the_last_reason(og: Opsgenie) -> None:
    og.fail_next(10, 503, {"message": "unavailable", "took": 0.0, "requestId": "r"})
    result = await run("notify.opsgenie", og_params(og, attempts=10, backoff="300ms"), context(details(), timeout=1.0))
    assert not result.ok and len(og.requests) == 3
    assert result.message == "Opsgenie: status 503: unavailable (3 of 10 tries before the step's timeout)"


async def test_a_redirect_is_not_followed(pd: PagerDuty) -> None:
    elsewhere = Listener(redirect_to=f"{pd.url}/v2/enqueue").start()
    try:
        result = await run("notify.pagerduty", pd_params(pd, baseUrl=elsewhere.url), context(details()))
    finally:
        elsewhere.stop()
    assert not result.ok and pd.requests == []
    assert result.message == (
        "PagerDuty: trigger refused (status 302): a redirect, which is not followed (is baseUrl right?)"
    )


async def test_a_metadata_address_is_refused_without_trying() -> None:
    params = {"baseUrl": "http://169.254.169.254", "apiKeySecretRef": OG_REF, "backoff": "2s"}
    result = await run("notify.opsgenie", params, context(details()))
    assert not result.ok and result.message.startswith("Opsgenie: 169.254.169.254 is a link-local")


@pytest.mark.parametrize(("status", "event"), [(503, "status 503"), (400, "trigger refused (status 400)")])
async def test_an_answer_that_is_not_the_api_s_json_is_not_quoted(status: int, event: str) -> None:
    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY"
    elsewhere = Listener(answer=(status, "text/html", f"<html><pre>{secret}</pre></html>".encode())).start()
    try:
        result = await run("notify.pagerduty", {"baseUrl": elsewhere.url, "routingKeySecretRef": PD_REF,
                                                "attempts": 1}, context(details()))  # fmt: skip
    finally:
        elsewhere.stop()
    assert not result.ok
    assert result.message == f"PagerDuty: {event}: no explanation (an answer of text/html, not shown)"
    assert secret not in str(result)


# -- the key stays secret -----------------------------------------------------------------


async def test_the_keys_never_leave_the_step_through_the_executor(pd: PagerDuty, og: Opsgenie) -> None:
    executor = Executor(REGISTRY, services=Secrets(dict(SECRETS)))

    async def step(action: str, params: dict[str, Any]) -> StepResult:
        call = StepCall(Step("page", Stage.ESCALATE, action, params), 1, params)
        return await executor.run(incident(), call, details("Escalated"), policy="p")

    pd_ok, og_ok = await step("notify.pagerduty", pd_params(pd)), await step("notify.opsgenie", og_params(og))
    assert pd_ok.ok and og_ok.ok, (pd_ok, og_ok)
    pd.keys, pd.echo_key = {"f" * 32}, True  # a refusal that quotes the key back
    og.fail_next(1, 422, {"message": f"bad key {API_KEY}", "errors": {"key": repr(API_KEY)}})
    pd_no, og_no = await step("notify.pagerduty", pd_params(pd)), await step("notify.opsgenie", og_params(og))
    assert not pd_no.ok and not og_no.ok
    assert (
        pd_no.message == "PagerDuty: trigger refused (status 400): Event object is invalid; Invalid routing key '***'"
    )
    assert og_no.message == "Opsgenie: create refused (status 422): bad key ***; key: '***'"
    assert_no_key(pd_ok, og_ok, pd_no, og_no)
    assert ROUTING_KEY in pd.requests[0].body and pd.requests[-1].headers["Content-Type"] == "application/json"


async def test_the_action_itself_scrubs_what_a_service_quotes_back(pd: PagerDuty) -> None:
    """Without the executor's redaction: the action must not rely on it for the provider's words."""
    pd.keys, pd.echo_key = {"f" * 32}, True
    result = await run("notify.pagerduty", pd_params(pd), context(details()))
    assert not result.ok and result.message.endswith("Invalid routing key '***'")
    assert_no_key(result)


async def test_a_missing_secret_fails_before_anything_is_sent(pd: PagerDuty) -> None:
    params = pd_params(pd, routingKeySecretRef={"name": "pd", "key": "nope"})
    result = await run("notify.pagerduty", params, context(details()))
    assert not result.ok and pd.requests == []
    assert (
        result.message
        == "PagerDuty: cannot read the routing key from Secret 'pd' key 'nope': secret ns/pd has no key 'nope'"
    )


async def test_through_the_executor_the_trigger_opens_the_conversation_that_resolve_joins(pd: PagerDuty) -> None:
    """The engine's path: the Incident's uid names the alert, the conversation survives redaction,
    and the next step sees it in status.conversations."""
    body = {
        "metadata": {"name": "web-down", "namespace": "ns", "uid": UID, "generation": 1},
        "spec": {"alert": "WebDown"},
    }
    executor, params = Executor(REGISTRY, services=Secrets(dict(SECRETS))), pd_params(pd)
    call = StepCall(Step("page", Stage.ANNOUNCE, "notify.pagerduty", params), 1, params)
    triggered = await executor.run(Incident.from_body(body), call, details("Escalated"), "p")
    assert triggered.ok and triggered.conversation == (PD_KEY, DEDUP), triggered
    conversations = dict([triggered.conversation])
    resolved = await executor.run(Incident.from_body(body), call, details("Resolved"), "p", conversations)
    assert resolved.ok and resolved.message == f"PagerDuty: resolve accepted (dedup key {DEDUP})", resolved
    assert pd.alerts == {DEDUP: "resolved"}


# -- the receivers catch a schema slip ------------------------------------------------------


def good_trigger() -> dict[str, Any]:
    return {"routing_key": ROUTING_KEY, "event_action": "trigger", "dedup_key": DEDUP,
            "payload": {"summary": "s", "source": "h", "severity": "critical"}}  # fmt: skip


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"routing_key": "short"}, "Length of 'routing_key' is incorrect (should be 32 characters)"),
        ({"event_action": "ack"}, "'event_action' is invalid"),
        ({"dedup_key": "k" * 256}, "'dedup_key' must be a string of 1 to 255 characters"),
        ({"payload": {"summary": "s" * 1025, "source": "h", "severity": "critical"}}, "longer than 1024"),
        ({"payload": {"summary": "s", "source": "h", "severity": "high"}}, "'payload.severity' is invalid"),
        ({"payload": {"summary": "s", "severity": "info"}}, "'payload.source' is missing"),
        ({"payload": {"summary": "s", "source": "h", "severity": "info", "timestamp": "yesterday"}}, "ISO 8601"),
        ({"payload": {"summary": "s", "source": "h", "severity": "info", "details": {}}}, "'payload.details' is not"),
        ({"routingKey": ROUTING_KEY}, "'routingKey' is not a field"),
        ({"payload": None}, "'payload' is missing"),
    ],
)
def test_the_pagerduty_receiver_refuses_what_pagerduty_would(change: dict[str, Any], error: str) -> None:
    assert pagerduty_errors(good_trigger()) == []
    assert any(error in e for e in pagerduty_errors(good_trigger() | change)), pagerduty_errors(good_trigger() | change)


def test_acknowledge_and_resolve_need_a_dedup_key() -> None:
    for action in ("acknowledge", "resolve"):
        event = {"routing_key": ROUTING_KEY, "event_action": action}
        assert pagerduty_errors(event) == [f"'dedup_key' is required for {action} events"]
        assert pagerduty_errors(event | {"dedup_key": DEDUP}) == []


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"message": ""}, "message"),
        ({"message": "m" * 131}, "message"),
        ({"alias": "a" * 513}, "alias"),
        ({"description": "d" * 15001}, "description"),
        ({"priority": "P0"}, "priority"),
        ({"tags": ["t"] * 21}, "tags"),
        ({"tags": ["t" * 51]}, "tags"),
        ({"details": {"n": 1}}, "details"),
        ({"details": {"k": "v" * 8000}}, "details"),
        ({"source": "s" * 101}, "source"),
        ({"severity": "P1"}, "severity"),
    ],
)
def test_the_opsgenie_receiver_refuses_what_opsgenie_would(change: dict[str, Any], field: str) -> None:
    good = {"message": "m", "alias": ALIAS, "priority": "P1", "tags": ["a"], "details": {"k": "v"}}
    assert opsgenie_create_errors(good) == {}
    assert field in opsgenie_create_errors(good | change)


def test_the_opsgenie_receiver_checks_acknowledge_and_close_bodies() -> None:
    assert opsgenie_action_errors({"user": "ana", "source": "runbook-operator", "note": "n"}) == {}
    assert set(opsgenie_action_errors({"user": "u" * 101, "message": "m"})) == {"user", "message"}


async def test_the_receivers_answer_a_malformed_request_as_the_providers_do(pd: PagerDuty, og: Opsgenie) -> None:
    async with httpx.AsyncClient() as client:
        bad_pd = await client.post(f"{pd.url}/v2/enqueue", json=good_trigger() | {"event_action": "page"})
        bad_json = await client.post(f"{pd.url}/v2/enqueue", content="{", headers={"Content-Type": "application/json"})
        headers = {"Authorization": f"GenieKey {API_KEY}"}
        bad_og = await client.post(f"{og.url}/v2/alerts", json={"message": "m" * 131}, headers=headers)
        bad_kind = await client.post(f"{og.url}/v2/alerts/a/close?identifierType=name", json={}, headers=headers)
        no_key = await client.post(f"{og.url}/v2/alerts", json={"message": "m"})
    assert bad_pd.status_code == 400 and bad_pd.json()["message"] == "Event object is invalid"
    assert bad_json.status_code == 400 and bad_json.json()["errors"] == ["JSON parse error"]
    assert bad_og.status_code == 422 and bad_og.json()["errors"] == {"message": "is longer than 130 characters"}
    assert bad_kind.status_code == 422 and no_key.status_code == 401
    assert len(pd.requests) == 2 and len(og.requests) == 3  # recorded, valid or not


async def test_long_incident_texts_are_cut_to_the_providers_limits(pd: PagerDuty, og: Opsgenie) -> None:
    long = details("Escalated", alert="A" * 600, summary="s" * 20000, acknowledgedBy="x" * 300,
                   findings=[{"step": f"s{i}", "message": "m" * 3000} for i in range(40)],
                   labels={"app": "web"})  # fmt: skip
    on_pd = await run("notify.pagerduty", pd_params(pd), context(long))
    on_og = await run("notify.opsgenie", og_params(og, tags=["t" * 80] * 16), context(long))
    acked = await run("notify.opsgenie", og_params(og, event="acknowledge"), context(long | {"announcement": None}))
    assert on_pd.ok and on_og.ok and acked.ok, (on_pd, on_og, acked)
    assert len(pd.events[0]["payload"]["summary"]) <= 1024 and len(og.requests[0].json["message"]) == 130


# -- parameters ---------------------------------------------------------------------------

TEMPLATE = "{{ incident.labels.app }}"


@pytest.mark.parametrize(
    ("action", "params", "key"),
    [
        ("notify.pagerduty", {"routingKeySecretRef": PD_REF, "baseUrl": f"http://{TEMPLATE}.example"}, "baseUrl"),
        ("notify.pagerduty", {"routingKeySecretRef": {"name": TEMPLATE, "key": "k"}}, "routingKeySecretRef"),
        ("notify.opsgenie", {"apiKeySecretRef": OG_REF, "baseUrl": TEMPLATE}, "baseUrl"),
        ("notify.opsgenie", {"apiKeySecretRef": {"name": "og", "key": TEMPLATE}}, "apiKeySecretRef"),
    ],
)
def test_where_the_key_goes_and_which_key_are_literal(action: str, params: dict[str, Any], key: str) -> None:
    traits = REGISTRY.check(action, params)
    with pytest.raises(ValueError, match=f"^{key}: must be literal in the policy"):
        check_templates(params, traits.languages)
    parsed = parse_policy(policy_body(diagnose=[{"name": "page", "action": action, "with": params}]), REGISTRY.check)
    assert isinstance(parsed, InvalidPolicy)
    assert parsed.error.startswith(f"spec.diagnose[0].with ({action}): {key}: must be literal in the policy")


def test_the_texts_may_template_incident_data() -> None:
    params = {"routingKeySecretRef": PD_REF, "source": TEMPLATE, "component": TEMPLATE}
    check_templates(params, REGISTRY.check("notify.pagerduty", params).languages)
    og = {"apiKeySecretRef": OG_REF, "tags": [TEMPLATE]}
    check_templates(og, REGISTRY.check("notify.opsgenie", og).languages)


@pytest.mark.parametrize(
    ("action", "params", "message"),
    [
        ("notify.pagerduty", {}, "routingKeySecretRef: Field required"),
        ("notify.pagerduty", {"routingKeySecretRef": PD_REF, "event": "create"}, "event: Input should be 'auto'"),
        ("notify.pagerduty", {"routingKeySecretRef": PD_REF, "baseUrl": "https://x/?k=1"}, "no query or fragment"),
        ("notify.pagerduty", {"routingKeySecretRef": PD_REF, "attempts": 0}, "attempts: Input should be greater"),
        ("notify.opsgenie", {"apiKeySecretRef": OG_REF, "event": "resolve"}, "event: Input should be 'auto'"),
        ("notify.opsgenie", {"apiKeySecretRef": OG_REF, "baseUrl": "ftp://x"}, "baseUrl: URL scheme should be"),
        ("notify.opsgenie", {"apiKeySecretRef": OG_REF, "tags": ["t"] * 17}, "tags: List should have at most 16"),
        ("notify.opsgenie", {"apiKeySecretRef": OG_REF, "routingKeySecretRef": PD_REF}, "Extra inputs"),
    ],
)
def test_parameters_are_checked_when_the_policy_is_applied(action: str, params: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        REGISTRY.check(action, params)


def test_the_defaults_are_the_providers_us_endpoints() -> None:
    pd = REGISTRY.parse("notify.pagerduty", {"routingKeySecretRef": PD_REF})
    og = REGISTRY.parse("notify.opsgenie", {"apiKeySecretRef": OG_REF})
    assert str(pd.base_url) == "https://events.pagerduty.com/"  # type: ignore[attr-defined]
    assert str(og.base_url) == "https://api.opsgenie.com/"  # type: ignore[attr-defined]
    assert REGISTRY.get("notify.pagerduty").default_timeout == REGISTRY.get("notify.opsgenie").default_timeout == 30.0


async def test_a_first_page_for_an_incident_already_acknowledged_is_acknowledged_at_once(
    pd: PagerDuty, og: Opsgenie
) -> None:
    """Someone acknowledged before anything paged (e.g. during diagnosis): when the page opens
    at Escalated, nobody is woken for what a person holds."""
    view = details("Escalated", acknowledgedBy="alice")
    paged = await run("notify.pagerduty", pd_params(pd), context(view))
    assert paged.ok, paged.message
    assert [e["event_action"] for e in pd.events] == ["trigger", "acknowledge"]
    assert {e["dedup_key"] for e in pd.events} == {DEDUP} and pd.alerts == {DEDUP: "acknowledged"}
    assert paged.conversation == (PD_KEY, DEDUP) and paged.message.endswith("alice acknowledged the incident")
    created = await run("notify.opsgenie", og_params(og), context(view))
    assert created.ok, created.message
    assert [r.path for r in og.requests] == ["/v2/alerts", f"/v2/alerts/{ALIAS}/acknowledge"]
    assert og.requests[1].json["user"] == "alice"
    assert created.conversation == (OG_KEY, ALIAS)
    again = await run("notify.pagerduty", pd_params(pd), context(view, {PD_KEY: DEDUP}))  # paged before: no new ack
    assert again.ok and [e["event_action"] for e in pd.events][2:] == ["trigger"]


async def test_when_the_acknowledgement_after_a_first_page_fails_the_page_is_still_the_incidents(pd: PagerDuty) -> None:
    pd.fail_next(1, 400, {"status": "invalid event", "message": "Event object is invalid", "errors": ["nope"]}, after=1)
    result = await run("notify.pagerduty", pd_params(pd), context(details("Escalated", acknowledgedBy="alice")))
    assert not result.ok and "not acknowledged for alice" in result.message and "nope" in result.message
    assert result.conversation == (PD_KEY, DEDUP)  # the page is this incident's: it is resolved later all the same
    assert [r.status for r in pd.requests] == [202, 400]
    assert_no_key(result)
