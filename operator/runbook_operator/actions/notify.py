"""notify.webhook: tell people (Slack-compatible or generic JSON), as the escalation procedure says."""

from __future__ import annotations

import json
from typing import Any, Literal

import httpx
import pydantic

from runbook_operator.actions.registry import Action, ActionContext, Params
from runbook_operator.domain.lifecycle import StepResult


class WebhookParams(Params):
    url: pydantic.AnyHttpUrl = pydantic.Field(description="webhook URL; comes from the policy")
    format: Literal["slack", "json"] = pydantic.Field("json", description="slack: {text}; json: the incident document")
    text: str | None = pydantic.Field(None, description="a message to lead with (may template incident fields)")


def _document(ctx: ActionContext, text: str | None) -> dict[str, Any]:
    details = dict(ctx.details or {})
    return {
        "incident": ctx.incident,
        "namespace": ctx.namespace,
        "alert": details.get("alert"),
        "severity": details.get("severity"),
        "phase": details.get("phase"),
        "level": details.get("level"),
        "summary": details.get("summary"),
        "findings": details.get("findings", []),
        "text": text,
        "inspect": f"kubectl describe incident {ctx.incident} -n {ctx.namespace}",
    }


def _slack(doc: dict[str, Any]) -> dict[str, Any]:
    lines = [
        doc["text"] or f"[{doc['severity']}] {doc['alert']}: incident {doc['incident']} is {doc['phase']}",
        *(f"• {f['step']}: {f['message']}" for f in doc["findings"][:10]),
        f"Inspect: `{doc['inspect']}`",
    ]
    return {"text": "\n".join(line for line in lines if line)}


async def webhook(params: WebhookParams, ctx: ActionContext) -> StepResult:
    doc = _document(ctx, params.text)
    payload = _slack(doc) if params.format == "slack" else doc
    try:
        async with httpx.AsyncClient(timeout=ctx.timeout, follow_redirects=False) as client:
            response = await client.post(
                str(params.url), content=json.dumps(payload), headers={"Content-Type": "application/json"}
            )
    except httpx.TimeoutException:
        return StepResult(False, f"webhook {params.url}: no answer within {ctx.timeout:g}s")
    except httpx.HTTPError as err:
        return StepResult(False, f"webhook {params.url}: {type(err).__name__}: {err or 'connection failed'}")
    if response.status_code >= 300:
        return StepResult(
            False, f"webhook {params.url}: status {response.status_code}", {"status": response.status_code}
        )
    return StepResult(True, f"notified {params.url.host} ({params.format})", {"status": response.status_code})


ACTIONS: tuple[Action[Any], ...] = (
    Action("notify.webhook", WebhookParams, webhook, "post the incident to a webhook (Slack-compatible or JSON)", 10.0),
)
