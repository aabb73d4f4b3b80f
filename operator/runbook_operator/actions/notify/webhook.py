"""notify.webhook: tell people (Slack-compatible or generic JSON), as the escalation procedure says."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any, Literal

import httpx
import pydantic

from runbook_operator.actions import api, egress
from runbook_operator.actions.api import Action, ActionContext, ActionFailure, Params, StepResult
from runbook_operator.actions.egress import EgressRefused
from runbook_operator.actions.notify import messages, slack


class WebhookParams(Params):
    url: Annotated[pydantic.AnyHttpUrl | None, api.Language.URL] = pydantic.Field(
        None, description="webhook URL written in the policy"
    )
    url_secret_ref: api.SecretRef | None = pydantic.Field(
        None, alias="urlSecretRef", description="the webhook URL from a Secret (Slack URLs are credentials)"
    )
    format: Literal["slack", "json"] = pydantic.Field("json", description="slack: {text}; json: the incident document")
    text: str | None = pydantic.Field(None, description="a message to lead with (may template incident fields)")
    attempts: int = pydantic.Field(3, ge=1, le=10, description="tries on connection errors and 5xx answers")
    backoff: api.Duration = pydantic.Field(1.0, description="wait between tries, e.g. 1s")

    @pydantic.model_validator(mode="after")
    def _one_url(self) -> WebhookParams:
        if (self.url is None) == (self.url_secret_ref is None):
            raise ValueError("give exactly one of url and urlSecretRef")
        return self


def _document(ctx: ActionContext, text: str | None) -> dict[str, Any]:
    details = messages.details(ctx)
    return {
        "incident": ctx.incident,
        "namespace": ctx.namespace,
        "alert": details.get("alert"),
        "severity": details.get("severity"),
        "phase": details.get("phase"),
        "level": details.get("level"),
        "summary": details.get("summary"),
        "announcement": details.get("announcement"),
        "acknowledgedBy": details.get("acknowledgedBy"),
        "findings": details.get("findings", []),
        "steps": details.get("steps", []),
        "headline": messages.headline(details),
        "text": text,
        "inspect": messages.inspect_command(details),
    }


def _slack(ctx: ActionContext, text: str | None) -> dict[str, Any]:
    """Slack's ``{text}``, every part escaped: what the incident says (and the policy's text,
    rendered with it) cannot mention a channel (``<!channel>``) or hide a link (``<url|label>``)."""
    return {"text": slack.compose(ctx, text)}


async def webhook(params: WebhookParams, ctx: ActionContext) -> StepResult:
    if params.url_secret_ref is not None:
        source = f"webhook URL from secret {params.url_secret_ref.name}"
        value = await ctx.secret(params.url_secret_ref, source)
        try:
            url = httpx.URL(value)
        except httpx.InvalidURL as err:
            raise ActionFailure(f"{source}: {err}") from None
    else:
        url = httpx.URL(str(params.url))
    where = f"webhook at {url.host}"  # never the whole URL: its path is often the credential
    doc = _document(ctx, params.text)
    body = json.dumps(_slack(ctx, params.text) if params.format == "slack" else doc)
    result = StepResult(False, f"{where}: not sent")
    deadline = asyncio.get_running_loop().time() + ctx.timeout
    async with egress.client(timeout=ctx.timeout) as client:
        for attempt in range(params.attempts):
            if attempt and asyncio.get_running_loop().time() + params.backoff >= deadline:
                # another try would start after the step's timeout: say why the last one failed, not "timed out"
                return StepResult(
                    False, f"{result.message} ({attempt} of {params.attempts} tries before the step's timeout)",
                    result.output,
                )  # fmt: skip
            if attempt:
                await asyncio.sleep(params.backoff)
            result = await _post(client, url, body, where)
            if result.ok or result.output.get("status", 500) < 500:
                break
    return result


async def _post(client: httpx.AsyncClient, url: httpx.URL, body: str, where: str) -> StepResult:
    try:
        response = await client.post(url, content=body, headers={"Content-Type": "application/json"})
    except EgressRefused as err:  # the same answer on every try
        raise ActionFailure(f"{where}: {err}") from None
    except httpx.TimeoutException:
        return StepResult(False, f"{where}: no answer in time")
    except httpx.HTTPError as err:
        return StepResult(False, f"{where}: {type(err).__name__}")
    if response.status_code >= 300:
        return StepResult(False, f"{where}: status {response.status_code}", {"status": response.status_code})
    return StepResult(True, f"notified {where}", {"status": response.status_code})


ACTIONS: tuple[Action[Any], ...] = (
    Action("notify.webhook", WebhookParams, webhook, "post the incident to a webhook (Slack-compatible or JSON)", 30.0),
)
