"""notify.pagerduty and notify.opsgenie: page people through the paging service, as the
escalation procedure says, and tell it when the incident is acknowledged or resolved.

- PagerDuty Events API v2: ``POST {baseUrl}/v2/enqueue`` with ``event_action`` trigger,
  acknowledge or resolve; the integration (routing) key travels in the body.
- Opsgenie Alert API v2: ``POST {baseUrl}/v2/alerts`` creates an alert;
  ``POST {baseUrl}/v2/alerts/{alias}/acknowledge|close?identifierType=alias`` updates it;
  the API key travels in ``Authorization: GenieKey <key>``.

Every event of one incident names the same alert: a dedup key (PagerDuty) or alias
(Opsgenie) derived from the Incident's uid. A successful trigger/create returns it as the
step's conversation (``pagerduty/<secret>/<key>`` or ``opsgenie/<secret>/<key>``), so in
``event: auto`` a later acknowledge/resolve is sent only when this incident paged that
service. Both services answer 202 once the event is queued: acceptance, not delivery.

The key is read from a Secret when the step runs and never appears in a message or an
output; the executor scrubs it too. Like notify.webhook, a try that meets a connection
error, a timeout, 429 or 5xx is repeated (``attempts``, ``backoff``) while the step's
timeout allows; any other answer is final.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from urllib.parse import quote

import httpx
import pydantic

from runbook_operator.actions import api, egress
from runbook_operator.actions.api import Action, ActionContext, ActionFailure, Params, StepResult
from runbook_operator.actions.egress import EgressRefused
from runbook_operator.actions.notify import messages
from runbook_operator.domain.model import ACKNOWLEDGED, DEFAULT_SEVERITY
from runbook_operator.domain.wire import clipped, printable

CLIENT = "runbook-operator"
REASON_LIMIT = 300  # of a provider's explanation quoted in a failed step's message
DETAIL_LIMIT = 1000  # of one finding or body line in custom_details / details
ERRORS_SHOWN = 5

# PagerDuty Events API v2 (developer.pagerduty.com/docs/events-api-v2/trigger-events)
PD_SEVERITY = {"Critical": "critical", "High": "error", "Medium": "warning", "Low": "info"}
PD_SUMMARY_LIMIT = 1024
PD_DEDUP_LIMIT = 255
# Opsgenie Alert API v2 (docs.opsgenie.com/docs/alert-api)
OG_PRIORITY = {"Critical": "P1", "High": "P2", "Medium": "P3", "Low": "P4"}
OG_LIMITS = {"message": 130, "alias": 512, "description": 15000, "entity": 512, "source": 100, "user": 100,
             "note": 25000, "tag": 50, "tags": 20, "details": 8000}  # fmt: skip

BaseUrl = Annotated[pydantic.AnyHttpUrl, api.Language.LITERAL]


ATTEMPTS_DOC = "tries on connection errors, timeouts, 429 and 5xx answers, within the step's timeout"


def _base_url(default: str, api_name: str, eu: str) -> Any:
    return pydantic.Field(
        default,  # a str, made a URL by validate_default
        alias="baseUrl",
        validate_default=True,
        description=f"the {api_name}'s address; {eu} for an EU account",
    )


def _event(resolve: str, opened: str, open_: str) -> Any:
    return pydantic.Field(
        "auto",
        description=f"auto: {resolve} when announcing Resolved, acknowledge when announcing Acknowledged (both only "
        f"if this incident {opened}), else {open_}",
    )


class _PagingParams(Params):
    attempts: int = pydantic.Field(3, ge=1, le=10, description=ATTEMPTS_DOC)
    backoff: api.Duration = pydantic.Field(1.0, description="wait between tries, e.g. 1s")

    @pydantic.field_validator("base_url", check_fields=False)
    @classmethod
    def _plain_base(cls, value: pydantic.AnyHttpUrl) -> pydantic.AnyHttpUrl:
        if value.query or value.fragment:
            raise ValueError("baseUrl takes no query or fragment: the API's paths are added to it")
        return value


class PagerDutyParams(_PagingParams):
    routing_key_secret_ref: api.SecretRef = pydantic.Field(
        alias="routingKeySecretRef",
        description="the Events API v2 integration key (routing key) of the service to page, from a Secret",
    )
    base_url: BaseUrl = _base_url("https://events.pagerduty.com", "Events API", "https://events.eu.pagerduty.com")
    event: Literal["auto", "trigger", "acknowledge", "resolve"] = _event("resolve", "paged the service", "trigger")
    source: str | None = pydantic.Field(
        None, description="payload.source (default: the target kind/namespace/name, else namespace/incident)"
    )
    component: str | None = pydantic.Field(None, description="payload.component (default: the target's name)")


class OpsgenieParams(_PagingParams):
    api_key_secret_ref: api.SecretRef = pydantic.Field(
        alias="apiKeySecretRef", description="the API key of an Opsgenie API integration, from a Secret"
    )
    base_url: BaseUrl = _base_url("https://api.opsgenie.com", "Alert API", "https://api.eu.opsgenie.com")
    event: Literal["auto", "create", "acknowledge", "close"] = _event("close", "created the alert", "create")
    tags: list[str] = pydantic.Field(
        default_factory=list, max_length=16, description="tags to add to the alert's own (each cut to 50 characters)"
    )


# -- shared -------------------------------------------------------------------------------


def _announced(details: Mapping[str, Any]) -> str:
    return str((details.get("announcement") or {}).get("phase") or "")


def _alert_id(ctx: ActionContext, sep: str) -> str:
    """The incident's alert across every event: its uid, or (no uid, e.g. a dry run) namespace and name."""
    return f"{CLIENT}{sep}{ctx.uid}" if ctx.uid else f"{CLIENT}{sep}{ctx.namespace}{sep}{ctx.incident}"


def _target(details: Mapping[str, Any]) -> str:
    target = details.get("target") or {}
    if target.get("name"):
        return f"{target.get('kind') or 'Object'}/{target.get('namespace') or details['namespace']}/{target['name']}"
    return f"{details['namespace']}/{details['name']}"


def _reason(response: httpx.Response, ctx: ActionContext) -> str:
    """What the provider said about a refused request: ``message`` and ``errors`` (PagerDuty:
    a list; Opsgenie: a map by field), scrubbed, then bounded. Any other answer (an HTML error
    page, a proxy's text: baseUrl may lead somewhere else) is not quoted: its content type only."""
    try:
        doc = response.json()
    except ValueError:
        doc = None
    parts: list[str] = []
    if isinstance(doc, dict):
        if doc.get("message"):
            parts.append(str(doc["message"]))
        errors = doc.get("errors")
        if isinstance(errors, list):
            parts += [str(e) for e in errors[:ERRORS_SHOWN]]
        elif isinstance(errors, dict):
            parts += [f"{k}: {v}" for k, v in list(errors.items())[:ERRORS_SHOWN]]
    if not parts:
        return f"no explanation (an answer of {egress.content_type(response.headers)}, not shown)"
    return clipped(printable(ctx.redact("; ".join(parts))), REASON_LIMIT) or "(no explanation)"


async def _post(
    ctx: ActionContext,
    where: str,
    url: httpx.URL,
    document: Mapping[str, Any],
    headers: Mapping[str, str],
    attempts: int,
    backoff: float,
) -> httpx.Response:
    """POST ``document`` as JSON; the answer, unless it is 429 or 5xx (or none came) on every try
    the step's timeout leaves room for: then :class:`ActionFailure` saying why the last one failed.

    The same loop as notify.webhook's, plus: each try is bounded by the time left (so the step
    says "no answer in time" rather than being cut off by the executor), 429 is retried, and
    the failure is raised rather than returned."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + ctx.timeout
    margin = min(0.2, ctx.timeout / 10)  # answer before the executor's own timeout does
    content = json.dumps(document)
    last, output = "not sent", dict[str, Any]()
    async with egress.client() as client:
        for attempt in range(attempts):
            if attempt:
                if loop.time() + backoff + margin >= deadline:
                    raise ActionFailure(
                        f"{where}: {last} ({attempt} of {attempts} tries before the step's timeout)", output
                    )
                await asyncio.sleep(backoff)
            budget = deadline - loop.time() - margin
            try:
                async with asyncio.timeout(budget):
                    response = await client.post(url, content=content, headers=dict(headers), timeout=budget)
            except EgressRefused as err:  # the same answer on every try
                raise ActionFailure(f"{where}: {err}") from None
            except (TimeoutError, httpx.TimeoutException):
                last, output = "no answer in time", {}
                continue
            except httpx.HTTPError as err:
                last, output = f"cannot reach {url.host}: {type(err).__name__}", {}
                continue
            if response.status_code == 429 or response.status_code >= 500:
                last = f"status {response.status_code}: {_reason(response, ctx)}"
                output = {"status": response.status_code}
                continue
            return response
    raise ActionFailure(f"{where}: {last}" + (f" (after {attempts} tries)" if attempts > 1 else ""), output)


def _refused(where: str, event: str, response: httpx.Response, ctx: ActionContext, hint: str = "") -> ActionFailure:
    code = response.status_code
    if 300 <= code < 400:
        reason = "a redirect, which is not followed (is baseUrl right?)"
    else:
        reason = _reason(response, ctx) + (" (is baseUrl right?)" if code in (404, 405) else hint)
    return ActionFailure(f"{where}: {event} refused (status {code}): {reason}", {"status": code, "event": event})


def _endpoint(base: pydantic.AnyHttpUrl, path: str, query: str = "") -> httpx.URL:
    return httpx.URL(str(base).rstrip("/") + path + (f"?{query}" if query else ""))


def _never_paged(service: str, event: str) -> StepResult:
    return StepResult(
        True,
        f"nothing to {event} on {service}: this incident never paged it",
        {"event": event, "sent": False},
    )


async def _acknowledged_already(
    result: StepResult,
    details: Mapping[str, Any],
    event: str,
    send: Callable[[str, ActionContext], Awaitable[httpx.Response]],
    ctx: ActionContext,
    started: float,
) -> StepResult:
    """A page opened for an incident someone has already acknowledged (before it paged, or when
    it was created) is acknowledged at once, so nobody is paged for what a person holds.
    The page stays this incident's conversation whatever happens, so it is resolved later."""
    who = details.get("acknowledgedBy")
    if not who:
        return result
    left = ctx.timeout - (asyncio.get_running_loop().time() - started)
    if left <= 1.0:
        return replace(result, ok=False, message=f"{result.message}; no time left to {event} it for {who}")
    try:
        await send(event, replace(ctx, timeout=left))
    except ActionFailure as failure:
        return replace(result, ok=False, message=f"{result.message}; but not acknowledged for {who}: {failure.message}")
    return replace(result, message=f"{result.message}, and acknowledged at once: {who} acknowledged the incident")


# -- PagerDuty ----------------------------------------------------------------------------


def _pd_event(params: PagerDutyParams, details: Mapping[str, Any]) -> str:
    if params.event != "auto":
        return params.event
    return {"Resolved": "resolve", ACKNOWLEDGED: "acknowledge"}.get(_announced(details), "trigger")


def _pd_payload(params: PagerDutyParams, details: Mapping[str, Any]) -> dict[str, Any]:
    severity = str(details.get("severity") or DEFAULT_SEVERITY)
    target = details.get("target") or {}
    custom: dict[str, Any] = {
        "incident": details["name"],
        "namespace": details["namespace"],
        "phase": details.get("phase"),
        "level": details.get("level"),
        "severity": severity,
        "summary": clipped(str(details.get("summary") or ""), DETAIL_LIMIT),
        "findings": [
            clipped(f"{f.get('step')}: {f.get('message')}", DETAIL_LIMIT)
            for f in list(details.get("findings") or ())[: messages.FINDINGS_SHOWN]
        ],
        "details": [clipped(line, DETAIL_LIMIT) for line in messages.body(details)],
    }
    if _announced(details):
        custom["announcement"] = {k: v for k, v in (details.get("announcement") or {}).items() if v}
    payload: dict[str, Any] = {
        "summary": clipped(messages.headline(details), PD_SUMMARY_LIMIT),
        "source": clipped(params.source or _target(details), 255),
        "severity": PD_SEVERITY.get(severity, PD_SEVERITY[DEFAULT_SEVERITY]),
        "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "group": details["namespace"],
        "custom_details": custom,
    }
    component = params.component or target.get("name")
    if component:
        payload["component"] = clipped(str(component), 255)
    if details.get("alert"):
        payload["class"] = clipped(str(details["alert"]), 255)
    return payload


async def pagerduty(params: PagerDutyParams, ctx: ActionContext) -> StepResult:
    details = messages.details(ctx)
    event = _pd_event(params, details)
    ref = params.routing_key_secret_ref
    key = f"pagerduty/{ref.name}/{ref.key}"
    dedup_key = ctx.conversations.get(key) or _alert_id(ctx, "/")
    if params.event == "auto" and event != "trigger" and key not in ctx.conversations:
        return _never_paged("PagerDuty", event)
    dedup_key = dedup_key[:PD_DEDUP_LIMIT]
    routing_key = await ctx.secret(ref, "PagerDuty", "the routing key")
    url = _endpoint(params.base_url, "/v2/enqueue")
    headers = {"Content-Type": "application/json", "Accept": "application/json"}

    async def send(event: str, ctx: ActionContext) -> httpx.Response:
        document: dict[str, Any] = {"routing_key": routing_key, "event_action": event, "dedup_key": dedup_key}
        if event == "trigger":
            document |= {"client": CLIENT, "payload": _pd_payload(params, details)}
        response = await _post(ctx, "PagerDuty", url, document, headers, params.attempts, params.backoff)
        if not 200 <= response.status_code < 300:
            raise _refused("PagerDuty", event, response, ctx)
        return response

    started = asyncio.get_running_loop().time()
    response = await send(event, ctx)
    output = {"status": response.status_code, "event": event, "dedupKey": dedup_key, "sent": True}
    result = StepResult(
        True,
        f"PagerDuty: {event} accepted (dedup key {dedup_key})",
        output,
        conversation=(key, dedup_key) if event == "trigger" else None,
    )
    if params.event == "auto" and event == "trigger" and key not in ctx.conversations:
        return await _acknowledged_already(result, details, "acknowledge", send, ctx, started)
    return result


# -- Opsgenie -----------------------------------------------------------------------------


def _og_event(params: OpsgenieParams, details: Mapping[str, Any]) -> str:
    if params.event != "auto":
        return params.event
    return {"Resolved": "close", ACKNOWLEDGED: "acknowledge"}.get(_announced(details), "create")


def _og_details(details: Mapping[str, Any]) -> dict[str, str]:
    """Opsgenie's custom properties: a string map of at most 8000 characters in all."""
    announcement = details.get("announcement") or {}
    found = {
        "incident": details["name"],
        "namespace": details["namespace"],
        "alert": details.get("alert"),
        "severity": details.get("severity"),
        "phase": details.get("phase"),
        "level": details.get("level"),
        "target": _target(details) if details.get("target") else None,
        "announcement": f"{announcement['phase']} (#{announcement.get('number')})" if _announced(details) else None,
        "acknowledgedBy": details.get("acknowledgedBy"),
        "inspect": messages.inspect_command(details),
    }
    out: dict[str, str] = {}
    room = OG_LIMITS["details"]
    for name, value in found.items():
        if value in (None, ""):
            continue
        if room - len(name) < 4:
            break
        out[name] = clipped(str(value), min(DETAIL_LIMIT, room - len(name)))
        room -= len(name) + len(out[name])
    return out


def _og_tags(params: OpsgenieParams, details: Mapping[str, Any]) -> list[str]:
    own = [CLIENT, details.get("alert"), details.get("severity"), f"namespace:{details['namespace']}"]
    tags = [clipped(str(t).strip(), OG_LIMITS["tag"]) for t in [*own, *params.tags] if t and str(t).strip()]
    return list(dict.fromkeys(tags))[: OG_LIMITS["tags"]]


def _og_create(params: OpsgenieParams, details: Mapping[str, Any], alias: str) -> dict[str, Any]:
    severity = str(details.get("severity") or DEFAULT_SEVERITY)
    return {
        "message": clipped(messages.headline(details), OG_LIMITS["message"]),
        "alias": alias,
        "description": clipped("\n".join(messages.body(details)), OG_LIMITS["description"]),
        "priority": OG_PRIORITY.get(severity, OG_PRIORITY[DEFAULT_SEVERITY]),
        "source": CLIENT,
        "tags": _og_tags(params, details),
        "details": _og_details(details),
        "entity": clipped(_target(details), OG_LIMITS["entity"]),
    }


def _og_action(details: Mapping[str, Any]) -> dict[str, Any]:
    """The body of acknowledge and close: who (the incident's acknowledger), from where, and why."""
    body = {"source": CLIENT, "note": clipped(messages.text(details), OG_LIMITS["note"])}
    if details.get("acknowledgedBy"):
        body["user"] = clipped(str(details["acknowledgedBy"]), OG_LIMITS["user"])
    return body


async def opsgenie(params: OpsgenieParams, ctx: ActionContext) -> StepResult:
    details = messages.details(ctx)
    event = _og_event(params, details)
    ref = params.api_key_secret_ref
    key = f"opsgenie/{ref.name}/{ref.key}"
    if params.event == "auto" and event != "create" and key not in ctx.conversations:
        return _never_paged("Opsgenie", event)
    # no "/" in the alias: acknowledge and close name it in the URL's path
    alias = (ctx.conversations.get(key) or _alert_id(ctx, "-"))[: OG_LIMITS["alias"]]
    api_key = await ctx.secret(ref, "Opsgenie", "the API key")
    headers = {"Content-Type": "application/json", "Accept": "application/json", "Authorization": f"GenieKey {api_key}"}

    async def send(event: str, ctx: ActionContext) -> httpx.Response:
        if event == "create":
            url, document = _endpoint(params.base_url, "/v2/alerts"), _og_create(params, details, alias)
        else:
            path = f"/v2/alerts/{quote(alias, safe='')}/{event}"
            url, document = _endpoint(params.base_url, path, "identifierType=alias"), _og_action(details)
        response = await _post(ctx, "Opsgenie", url, document, headers, params.attempts, params.backoff)
        if not 200 <= response.status_code < 300:
            hint = ""
            if response.status_code in (401, 403):
                hint = (
                    f" (check the API key in Secret {ref.name!r} key {ref.key!r} and that its integration is enabled)"
                )
            raise _refused("Opsgenie", event, response, ctx, hint)
        return response

    started = asyncio.get_running_loop().time()
    response = await send(event, ctx)
    try:
        answer = response.json()
    except ValueError:
        answer = {}
    request_id = str(answer.get("requestId") or "") if isinstance(answer, dict) else ""
    output = {"status": response.status_code, "event": event, "alias": alias, "requestId": request_id, "sent": True}
    result = StepResult(
        True,
        f"Opsgenie: {event} accepted (alias {alias})",
        output,
        conversation=(key, alias) if event == "create" else None,
    )
    if params.event == "auto" and event == "create" and key not in ctx.conversations:
        return await _acknowledged_already(result, details, "acknowledge", send, ctx, started)
    return result


ACTIONS: tuple[Action[Any], ...] = (
    Action(
        "notify.pagerduty",
        PagerDutyParams,
        pagerduty,
        "page through PagerDuty's Events API v2: trigger, acknowledge or resolve the incident's alert "
        "(one dedup key per incident)",
        default_timeout=30.0,
    ),
    Action(
        "notify.opsgenie",
        OpsgenieParams,
        opsgenie,
        "page through Opsgenie's Alert API: create, acknowledge or close the incident's alert (one alias per incident)",
        default_timeout=30.0,
    ),
)
