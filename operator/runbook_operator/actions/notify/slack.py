"""notify.slack: one Slack thread per incident, posted with a Slack app's bot token.

The first message an incident sends to a channel starts a thread (``chat.postMessage``);
its ``ts`` is kept in the Incident's ``status.conversations["slack/<channel>"]``, and every
later message of that incident to that channel is a reply in that thread. A reply about
the incident's resolution or escalation is also shown in the channel (``reply_broadcast``)
unless the step says otherwise.

Slack's Web API (api.slack.com/methods/chat.postMessage) answers HTTP 200 with
``{"ok": true, "channel", "ts", ...}`` or ``{"ok": false, "error": "..."}``; a 429 says in
``Retry-After`` how many seconds to wait. Every try stays inside the step's timeout, the
token is sent only in the ``Authorization`` header, and no message names it or the URL.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import httpx
import pydantic

from runbook_operator.actions import api, egress
from runbook_operator.actions.api import Action, ActionContext, ActionFailure, Params, StepResult
from runbook_operator.actions.egress import EgressRefused
from runbook_operator.actions.notify import messages
from runbook_operator.domain.wire import clipped, printable

METHOD = "api/chat.postMessage"
# ok:false errors worth another try: Slack's own trouble, or "slow down"
RETRIED_ERRORS = frozenset({"ratelimited", "rate_limited", "fatal_error", "internal_error", "service_unavailable"})
# the thread the incident kept is gone (deleted, or the channel was recreated): start a new one
GONE_THREAD_ERRORS = frozenset({"thread_not_found", "message_not_found"})
BROADCAST_OCCASIONS = frozenset({"Resolved", "Escalated"})
LINE_LIMIT = 2_000  # characters of one line of incident text, before escaping
TEXT_LIMIT = 38_000  # Slack truncates a message's text past 40,000 characters
HINTS = {
    "invalid_auth": "the bot token is not valid",
    "not_authed": "no bot token was sent",
    "token_revoked": "the bot token was revoked",
    "token_expired": "the bot token has expired",
    "account_inactive": "the app's bot user or workspace is deactivated",
    "channel_not_found": "no such channel, or the app cannot see it (invite the app to a private channel)",
    "not_in_channel": "the app is not in the channel: invite it (/invite @app) or give it chat:write.public",
    "is_archived": "the channel is archived",
    "missing_scope": "the app needs the chat:write scope",
    "msg_too_long": "the message is too long",
    "restricted_action": "a workspace preference stops the app from posting",
}
_CHANNEL = re.compile(r"#?[A-Za-z0-9][A-Za-z0-9._-]{0,79}")


class SlackParams(Params):
    channel: Annotated[str, api.Language.LITERAL] = pydantic.Field(
        min_length=1,
        max_length=81,
        description="channel to post to: its ID (C0123456789, best: survives renames) or #name; the app must be in it",
    )
    token_secret_ref: api.SecretRef = pydantic.Field(
        alias="tokenSecretRef", description="the Slack app's bot token (xoxb-...), with the chat:write scope"
    )
    text: str | None = pydantic.Field(
        None, max_length=4000, description="a line to lead with instead of the headline (may template incident fields)"
    )
    reply_broadcast: bool | Literal["auto"] = pydantic.Field(
        "auto",
        alias="replyBroadcast",
        description="also show a reply in the incident's thread in the channel; auto: when the incident "
        "is resolved or escalated",
    )
    base_url: Annotated[pydantic.AnyHttpUrl, api.Language.LITERAL] = pydantic.Field(
        pydantic.AnyHttpUrl("https://slack.com"),
        alias="baseUrl",
        description="where Slack's Web API is (a proxy or a test double); the token is sent there",
    )
    attempts: int = pydantic.Field(
        3, ge=1, le=10, description="tries on connection errors, 5xx, 429 and Slack's transient errors"
    )
    backoff: api.Duration = pydantic.Field(1.0, description="wait between tries, e.g. 1s (a 429's Retry-After wins)")

    @pydantic.field_validator("channel")
    @classmethod
    def _channel(cls, value: str) -> str:
        if not _CHANNEL.fullmatch(value):
            raise ValueError(f"{value!r} is not a Slack channel ID (C0123456789) or #name")
        return value

    @pydantic.field_validator("reply_broadcast", mode="before")
    @classmethod
    def _broadcast(cls, value: Any) -> Any:
        if not isinstance(value, bool) and value != "auto":
            raise ValueError("must be true, false or auto")
        return value

    @pydantic.field_validator("base_url")
    @classmethod
    def _base(cls, value: pydantic.AnyHttpUrl) -> pydantic.AnyHttpUrl:
        if value.query or value.fragment:
            raise ValueError("the Web API's base URL takes no query or fragment")
        return value


def _escaped(text: str) -> str:
    """Slack's three control characters as its own entities (api.slack.com: formatting):
    incident text cannot mention anyone (``<!channel>``, ``<@U123>``) or hide a link (``<url|label>``)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _line(text: str) -> str:
    if len(text) > LINE_LIMIT:
        text = text[: LINE_LIMIT - 1] + "…"
    return _escaped(text)


def compose(ctx: ActionContext, lead: str | None) -> str:
    """The message as Slack mrkdwn: the lead (or headline), then the assessment, every piece escaped."""
    details = messages.details(ctx)
    inspect = f"Inspect: {messages.inspect_command(details)}"
    lines = [_line(lead or messages.headline(details))]
    for raw in messages.body(details):
        lines.append(f"Inspect: `{_escaped(raw[len('Inspect: ') :])}`" if raw == inspect else _line(raw))
    text = "\n".join(lines)
    if len(text) > TEXT_LIMIT:  # keep whole lines and the way to the rest
        kept: list[str] = []
        size = 0
        for line in lines[:-1]:
            if size + len(line) + 1 > TEXT_LIMIT - 200:
                break
            kept.append(line)
            size += len(line) + 1
        text = "\n".join([*kept, "… (more in the Incident)", lines[-1]])
    return text


def _broadcast(params: SlackParams, ctx: ActionContext) -> bool:
    if params.reply_broadcast != "auto":
        return params.reply_broadcast
    return messages.occasion(ctx.details or {}) in BROADCAST_OCCASIONS


@dataclass
class _Try:
    """What one request gave: a result, whether another try may help, and after how long Slack asks."""

    result: StepResult
    retry: bool = False
    retry_after: float | None = None
    error: str | None = None
    answer: Mapping[str, Any] = field(default_factory=dict)


async def slack(params: SlackParams, ctx: ActionContext) -> StepResult:
    base = httpx.URL(str(params.base_url))
    where = f"Slack {params.channel}"
    ref = params.token_secret_ref
    token = await ctx.secret(ref, where, "the bot token")
    if not token.isascii() or any(c.isspace() for c in token):
        raise ActionFailure(f"{where}: the bot token in Secret {ref.name!r} key {ref.key!r} is not a Slack token")
    url = base.copy_with(path=base.path.rstrip("/") + "/" + METHOD)
    key = f"slack/{params.channel}"
    thread = ctx.conversations.get(key)
    text = compose(ctx, params.text)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + ctx.timeout
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json; charset=utf-8"}
    async with egress.client() as client:
        poster = _Poster(client, url, headers, params, where, deadline)
        if thread:
            broadcast = _broadcast(params, ctx)
            reply = await poster.deliver(_payload(params.channel, text, thread, broadcast))
            if reply.error not in GONE_THREAD_ERRORS:
                if not reply.result.ok:
                    return reply.result
                ts = str(reply.answer["ts"])
                also = " (also shown in the channel)" if broadcast else ""
                return StepResult(
                    True, f"replied in {where}, thread {thread}{also}", _output(reply, params, ts, thread, broadcast)
                )
            first = await poster.deliver(_payload(params.channel, text, None, False))
            if not first.result.ok:
                return StepResult(
                    False, f"{first.result.message} (the incident's thread {thread} was gone: {reply.error})",
                    first.result.output,
                )  # fmt: skip
            ts = str(first.answer["ts"])
            return StepResult(
                True,
                f"posted to {where}: the incident's thread {thread} was gone ({reply.error}), new thread {ts}",
                _output(first, params, ts, None, False),
                conversation=(key, ts),
            )
        first = await poster.deliver(_payload(params.channel, text, None, False))
        if not first.result.ok:
            return first.result
        ts = str(first.answer["ts"])
        return StepResult(
            True, f"posted to {where}: new thread {ts}", _output(first, params, ts, None, False), conversation=(key, ts)
        )


def _payload(channel: str, text: str, thread: str | None, broadcast: bool) -> dict[str, Any]:
    payload: dict[str, Any] = {"channel": channel, "text": text, "unfurl_links": False, "unfurl_media": False}
    if thread:
        payload["thread_ts"] = thread
        payload["reply_broadcast"] = broadcast
    return payload


def _output(done: _Try, params: SlackParams, ts: str, thread: str | None, broadcast: bool) -> dict[str, Any]:
    return {
        "status": done.result.output.get("status", 200),
        "channel": str(done.answer.get("channel") or params.channel),
        "ts": ts,
        "thread_ts": thread,
        "broadcast": broadcast,
    }


@dataclass
class _Poster:
    client: httpx.AsyncClient
    url: httpx.URL
    headers: Mapping[str, str]
    params: SlackParams
    where: str
    deadline: float

    async def deliver(self, payload: Mapping[str, Any]) -> _Try:
        """Post, trying again on what may pass (5xx, 429, connection trouble, Slack's transient
        errors), never starting a wait or a request that would end past the step's timeout."""
        body = json.dumps(payload).encode()
        attempts = self.params.attempts
        loop = asyncio.get_running_loop()
        last = _Try(StepResult(False, f"{self.where}: not sent"))
        for attempt in range(attempts):
            if attempt:
                wait = last.retry_after if last.retry_after is not None else self.params.backoff
                if loop.time() + wait >= self.deadline:
                    why = "waiting as Slack asks" if last.retry_after is not None else "another try"
                    why += " would pass the step's timeout"
                    return _Try(
                        StepResult(False, f"{last.result.message} ({attempt} of {attempts} tries; {why})",
                                   last.result.output),
                        error=last.error,
                    )  # fmt: skip
                await asyncio.sleep(wait)
            last = await self._post(body)
            if last.result.ok or not last.retry:
                return last
        if attempts > 1:
            last.result = StepResult(
                False, f"{last.result.message} (after {attempts} tries)", last.result.output
            )  # fmt: skip
        return last

    async def _post(self, body: bytes) -> _Try:
        where = self.where
        remaining = self.deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            return _Try(StepResult(False, f"{where}: no answer in time"))
        try:
            async with asyncio.timeout(remaining):
                response = await self.client.post(
                    self.url, content=body, headers=dict(self.headers), timeout=httpx.Timeout(remaining)
                )
        except EgressRefused as err:  # the same answer on every try
            raise ActionFailure(f"{where}: {err}") from None
        except (TimeoutError, httpx.TimeoutException):
            return _Try(StepResult(False, f"{where}: no answer from {self.url.host} in time"), retry=True)
        except httpx.HTTPError as err:
            return _Try(StepResult(False, f"{where}: cannot reach {self.url.host}: {type(err).__name__}"), retry=True)
        status = response.status_code
        answer = _json(response)
        error = _word(answer.get("error")) or None
        output: dict[str, Any] = {"status": status, **({"error": error} if error else {})}
        if status == 429:
            after = _seconds(response.headers.get("Retry-After"))
            told = f", retry after {after:g}s" if after is not None else ""
            message = f"{where}: rate limited by Slack (HTTP 429{told})"
            return _Try(StepResult(False, message, output), retry=True, retry_after=after, error=error)
        if status >= 500:
            return _Try(StepResult(False, f"{where}: Slack answered status {status}", output), retry=True, error=error)
        if 300 <= status < 400:
            return _Try(
                StepResult(False, f"{where}: Slack answered status {status} (redirects are not followed)", output)
            )
        if status != 200 and not error:
            return _Try(StepResult(False, f"{where}: Slack answered status {status}", output))
        if not answer:
            return _Try(StepResult(False, f"{where}: the answer is not the Web API's JSON (status {status})", output))
        if answer.get("ok") is True:
            if not answer.get("ts"):
                return _Try(StepResult(False, f"{where}: Slack's answer has no ts", output))
            return _Try(StepResult(True, f"posted to {where}", output), answer=answer)
        error = error or "unknown_error"
        output["error"] = error
        hint = HINTS.get(error)
        if error == "missing_scope" and answer.get("needed"):
            hint = f"the app needs the {_word(answer['needed'])} scope"
        message = f"{where}: {error}" + (f" ({hint})" if hint else "")
        after = _seconds(response.headers.get("Retry-After"))
        return _Try(StepResult(False, message, output), retry=error in RETRIED_ERRORS, retry_after=after, error=error)


def _json(response: httpx.Response) -> Mapping[str, Any]:
    try:
        answer = response.json()
    except ValueError:
        return {}
    return answer if isinstance(answer, dict) else {}


def _word(value: Any) -> str:
    """A code from the answer (``channel_not_found``, a scope), as a message may quote it: one
    printable line of at most 100 characters, whatever a server that is not Slack put there."""
    return clipped(" ".join(printable(str(value or "")).split()), 100)


def _seconds(value: str | None) -> float | None:
    """``Retry-After`` as Slack writes it: whole seconds (an HTTP date is not honoured: backoff applies)."""
    if value is None or not value.strip().isdigit():
        return None
    return float(value.strip())


ACTIONS: tuple[Action[Any], ...] = (
    Action(
        "notify.slack",
        SlackParams,
        slack,
        description="post the incident to a Slack channel with an app's bot token: the first message starts the "
        "incident's thread, later ones reply in it",
        default_timeout=30.0,
    ),
)
