"""notify.slack against a local Slack Web API (tests/fixtures/slack.py), over real HTTP."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from runbook_operator.actions import ActionContext
from runbook_operator.actions.api import languages
from runbook_operator.actions.notify.slack import SlackParams
from runbook_operator.domain.expressions import check_templates
from runbook_operator.domain.lifecycle import StepCall
from runbook_operator.domain.model import InvalidPolicy, Stage, Step
from runbook_operator.domain.parsing import parse_policy
from runbook_operator.engine.executor import Executor, run_action
from tests.fixtures.listeners import Listener
from tests.fixtures.secrets import Secrets
from tests.fixtures.slack import TOKEN, SlackReceiver
from tests.unit.builders import REGISTRY, incident, policy_body

CHANNEL = "C0123456789"
KEY = f"slack/{CHANNEL}"
REF = {"name": "slack-bot", "key": "token"}


def secrets(token: str = TOKEN) -> Secrets:
    return Secrets({("ns", "slack-bot", "token"): token})


@pytest.fixture
def slack() -> Iterator[SlackReceiver]:
    receiver = SlackReceiver().start()
    yield receiver
    receiver.stop()


def details(phase: str = "Diagnosing", announced: str | None = None, **extra: Any) -> dict[str, Any]:
    found = {
        "name": "redis-down",
        "namespace": "ns",
        "alert": "RedisDown",
        "severity": "Critical",
        "summary": "redis is not answering",
        "phase": phase,
        "findings": [{"step": "ping", "message": "connection refused"}],
        "steps": [{"name": "restart", "stage": "Remediate", "state": "Succeeded", "message": "restarted"}],
        **extra,
    }
    if announced:
        found["announcement"] = {"phase": announced, "number": 2, "at": "2024-01-01T00:00:00Z", "reason": announced,
                                 "message": f"the incident is {announced.lower()}"}  # fmt: skip
    return found


def context(
    conversations: Mapping[str, str] | None = None, timeout: float = 5.0, token: str = TOKEN, **kw: Any
) -> ActionContext:
    return ActionContext("ns", "redis-down", timeout, details(**kw), secrets(token), "p", "uid-1",
                         dict(conversations or {}))  # fmt: skip


def params(slack: SlackReceiver | str, **extra: Any) -> dict[str, Any]:
    base = slack if isinstance(slack, str) else slack.url
    return {"channel": CHANNEL, "tokenSecretRef": REF, "baseUrl": base, "backoff": "10ms", **extra}


async def post(given: dict[str, Any], ctx: ActionContext) -> Any:
    return await run_action(REGISTRY.get("notify.slack"), REGISTRY.parse("notify.slack", given), ctx)


# -- one thread per incident ------------------------------------------------------------------


async def test_the_first_message_starts_the_incidents_thread(slack: SlackReceiver) -> None:
    result = await post(params(slack), context())
    assert result.ok, result.message
    ((message,),) = [slack.messages]
    assert result.conversation == (KEY, message.ts)
    assert result.message == f"posted to Slack {CHANNEL}: new thread {message.ts}"
    assert result.output == {"status": 200, "channel": CHANNEL, "ts": message.ts, "thread_ts": None, "broadcast": False}
    assert message.thread_ts is None and "thread_ts" not in message.args and "reply_broadcast" not in message.args
    assert message.args["unfurl_links"] is False and message.args["unfurl_media"] is False
    method, path, headers, _ = slack.requests[0]
    assert (method, path) == ("POST", "/api/chat.postMessage")
    assert headers["Authorization"] == f"Bearer {TOKEN}"
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    assert message.text is not None
    assert message.text.splitlines() == [
        "[Critical] RedisDown ns/redis-down: investigating",
        "Summary: redis is not answering",
        "Findings:",
        "- ping: connection refused",
        "Steps taken:",
        "- restart (Remediate): Succeeded",
        "Inspect: `kubectl describe incident redis-down -n ns`",
    ]


async def test_later_messages_reply_in_the_thread(slack: SlackReceiver) -> None:
    first = await post(params(slack), context())
    assert first.ok and first.conversation is not None
    key, thread = first.conversation
    second = await post(params(slack, text="restarted the redis pod"), context({key: thread}, phase="Remediating"))
    assert second.ok, second.message
    assert second.conversation is None  # the incident's conversation is unchanged
    assert second.message == f"replied in Slack {CHANNEL}, thread {thread}"
    assert second.output["thread_ts"] == thread and second.output["ts"] != thread
    assert [m.ts for m in slack.thread(thread)] == [thread, second.output["ts"]]
    reply = slack.messages[1]
    assert reply.thread_ts == thread and reply.reply_broadcast is False
    assert reply.text is not None and reply.text.splitlines()[0] == "restarted the redis pod"


async def test_through_the_executor_the_thread_is_kept_and_the_token_is_not(slack: SlackReceiver) -> None:
    step = Step("tell", Stage.ANNOUNCE, "notify.slack", params(slack))
    executor = Executor(REGISTRY, services=secrets())
    first = await executor.run(incident(), StepCall(step, 1, step.params), details(), policy="p")
    assert first.ok and first.conversation == (KEY, slack.messages[0].ts)
    again = await executor.run(incident(), StepCall(step, 2, step.params), details(announced="Resolved"), policy="p",
                               conversations=dict([first.conversation]))  # fmt: skip
    assert again.ok and again.conversation is None
    assert slack.messages[1].thread_ts == slack.messages[0].ts and slack.messages[1].reply_broadcast is True
    assert TOKEN not in repr(first) + repr(again)


async def test_another_channel_is_another_conversation(slack: SlackReceiver) -> None:
    first = await post(params(slack), context())
    other = await post(params(slack, channel="#oncall"), context(dict([first.conversation])))
    assert other.ok and other.conversation == ("slack/#oncall", slack.messages[1].ts)
    assert slack.messages[1].channel == "C0987654321" and slack.messages[1].thread_ts is None


@pytest.mark.parametrize(
    ("announced", "given", "broadcast"),
    [
        ("Resolved", "auto", True),
        ("Escalated", "auto", True),
        ("Remediating", "auto", False),
        ("Resolved", False, False),
        ("Diagnosing", True, True),
    ],
)
async def test_resolution_and_escalation_replies_are_also_shown_in_the_channel(
    slack: SlackReceiver, announced: str, given: Any, broadcast: bool
) -> None:
    first = await post(params(slack), context())
    reply = await post(params(slack, replyBroadcast=given), context(dict([first.conversation]), announced=announced))
    assert reply.ok, reply.message
    assert slack.messages[1].args["reply_broadcast"] is broadcast and reply.output["broadcast"] is broadcast
    assert reply.message.endswith(" (also shown in the channel)") is broadcast
    text = slack.messages[1].text or ""
    assert f"{announced}: the incident is {announced.lower()}" in text.splitlines()


async def test_an_escalation_step_without_an_announcement_broadcasts_its_reply(slack: SlackReceiver) -> None:
    first = await post(params(slack), context())
    reply = await post(params(slack), context(dict([first.conversation]), phase="Escalated"))
    assert reply.ok and slack.messages[1].reply_broadcast is True


async def test_a_thread_that_is_gone_starts_a_new_one(slack: SlackReceiver) -> None:
    result = await post(params(slack), context({KEY: "1600000000.000001"}))
    assert result.ok, result.message
    ((message,),) = [slack.messages]
    assert message.thread_ts is None and result.conversation == (KEY, message.ts)
    assert result.message == (
        f"posted to Slack {CHANNEL}: the incident's thread 1600000000.000001 was gone (thread_not_found), "
        f"new thread {message.ts}"
    )
    assert [json.loads(body).get("thread_ts") for _, _, _, body in slack.requests] == ["1600000000.000001", None]


# -- what the message says -------------------------------------------------------------------


async def test_incident_text_cannot_mention_anyone_or_hide_a_link(slack: SlackReceiver) -> None:
    ctx = context(summary="<!channel> read <http://evil.test|click> & <@U123>")
    ctx.details["findings"] = [{"step": "logs", "message": "<!here> 1 < 2 > 0"}]  # type: ignore[index]
    result = await post(params(slack, text="<!everyone> {x}"), ctx)
    assert result.ok, result.message
    lines = (slack.messages[0].text or "").splitlines()
    assert lines[0] == "&lt;!everyone&gt; {x}"
    assert "Summary: &lt;!channel&gt; read &lt;http://evil.test|click&gt; &amp; &lt;@U123&gt;" in lines
    assert "- logs: &lt;!here&gt; 1 &lt; 2 &gt; 0" in lines
    assert not any(c in line for line in lines for c in "<>")


async def test_an_alert_name_cannot_ping_through_the_headline(slack: SlackReceiver) -> None:
    ctx = context(alert="<!subteam^S123|@oncall>")
    assert (await post(params(slack), ctx)).ok
    assert (slack.messages[0].text or "").splitlines()[0] == (
        "[Critical] &lt;!subteam^S123|@oncall&gt; ns/redis-down: investigating"
    )


# -- failures --------------------------------------------------------------------------------


async def test_invalid_auth_fails_at_once_and_the_token_shows_nowhere(
    slack: SlackReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "xoxb-1111111111-2222222222-NotTheRightToken"
    step = Step("tell", Stage.ESCALATE, "notify.slack", params(slack))
    with caplog.at_level(logging.DEBUG):
        result = await Executor(REGISTRY, services=secrets(wrong)).run(
            incident(), StepCall(step, 1, step.params), details(), policy="p"
        )
    assert not result.ok
    assert result.message == f"Slack {CHANNEL}: invalid_auth (the bot token is not valid)"
    assert result.output == {"status": 200, "error": "invalid_auth"}
    assert len(slack.requests) == 1 and slack.messages == []  # not retried
    assert slack.requests[0][2]["Authorization"] == f"Bearer {wrong}"  # it really went out
    assert "NotTheRightToken" not in result.message + str(result.output) + caplog.text


async def test_a_secret_that_cannot_be_read_fails_naming_it(slack: SlackReceiver) -> None:
    ctx = ActionContext("ns", "redis-down", 5.0, details(), Secrets({}), "p")
    result = await post(params(slack), ctx)
    assert not result.ok and slack.requests == []
    assert result.message == (
        f"Slack {CHANNEL}: cannot read the bot token from Secret 'slack-bot' key 'token': "
        "secret ns/slack-bot has no key 'token'"
    )


@pytest.mark.parametrize(
    ("error", "hint"),
    [
        ("channel_not_found", "no such channel, or the app cannot see it (invite the app to a private channel)"),
        ("not_in_channel", "the app is not in the channel: invite it (/invite @app) or give it chat:write.public"),
        ("is_archived", "the channel is archived"),
        ("some_new_error", None),
    ],
)
async def test_slack_errors_are_failures_naming_the_error_without_retrying(
    slack: SlackReceiver, error: str, hint: str | None
) -> None:
    slack.fail_next(1, status=200, error=error)
    result = await post(params(slack), context())
    assert not result.ok and len(slack.requests) == 1
    assert result.message == f"Slack {CHANNEL}: {error}" + (f" ({hint})" if hint else "")
    assert result.output == {"status": 200, "error": error}


async def test_an_unknown_channel_is_slacks_channel_not_found(slack: SlackReceiver) -> None:
    result = await post(params(slack, channel="#nowhere"), context())
    assert not result.ok and result.message.startswith("Slack #nowhere: channel_not_found (")


@pytest.mark.parametrize("error", ["ratelimited", "internal_error", "fatal_error", "service_unavailable"])
async def test_transient_slack_errors_are_retried(slack: SlackReceiver, error: str) -> None:
    slack.fail_next(2, status=200, error=error)
    result = await post(params(slack), context())
    assert result.ok, result.message
    assert len(slack.requests) == 3 and len(slack.messages) == 1


async def test_server_errors_are_retried_then_it_posts(slack: SlackReceiver) -> None:
    slack.fail_next(2, status=500)
    result = await post(params(slack), context())
    assert result.ok, result.message
    assert len(slack.requests) == 3 and len(slack.messages) == 1
    assert result.conversation == (KEY, slack.messages[0].ts)


async def test_server_errors_on_every_try_say_how_many(slack: SlackReceiver) -> None:
    slack.fail_next(3, status=503)
    result = await post(params(slack), context())
    assert not result.ok and len(slack.requests) == 3
    assert result.message == f"Slack {CHANNEL}: Slack answered status 503 (after 3 tries)"


async def test_a_429_waits_as_long_as_retry_after_says(slack: SlackReceiver) -> None:
    slack.fail_next(1, status=429, retry_after=1)
    started = time.monotonic()
    result = await post(params(slack), context())
    assert result.ok, result.message
    assert time.monotonic() - started >= 1.0  # not the 10ms backoff
    assert len(slack.requests) == 2 and len(slack.messages) == 1


async def test_a_429_asking_to_wait_past_the_steps_timeout_fails_saying_so(slack: SlackReceiver) -> None:
    slack.fail_next(1, status=429, retry_after=30)
    started = time.monotonic()
    result = await post(params(slack), context(timeout=2.0))
    assert time.monotonic() - started < 1.0 and len(slack.requests) == 1
    assert not result.ok
    assert result.message == (
        f"Slack {CHANNEL}: rate limited by Slack (HTTP 429, retry after 30s) "
        "(1 of 3 tries; waiting as Slack asks would pass the step's timeout)"
    )
    assert result.output == {"status": 429, "error": "ratelimited"}


async def test_a_reply_is_retried_in_its_thread(slack: SlackReceiver) -> None:
    first = await post(params(slack), context())
    slack.fail_next(1, status=502)
    reply = await post(params(slack), context(dict([first.conversation])))
    assert reply.ok and slack.messages[1].thread_ts == first.conversation[1]


# -- the step's timeout bounds every try -------------------------------------------------------


async def test_a_receiver_that_answers_late_is_bounded_by_the_steps_timeout(slack: SlackReceiver) -> None:
    slack.delay = 3.0
    started = time.monotonic()
    result = await post(params(slack, backoff="10ms"), context(timeout=0.5))
    assert time.monotonic() - started < 1.5
    assert not result.ok and result.message.startswith(f"Slack {CHANNEL}: no answer from 127.0.0.1 in time")
    assert len(slack.requests) == 1


async def test_retries_stop_before_the_steps_timeout(slack: SlackReceiver) -> None:
    slack.fail_next(10, status=500)
    started = time.monotonic()
    result = await post(params(slack, backoff="1s", attempts=5), context(timeout=1.5))
    assert time.monotonic() - started < 1.5
    assert not result.ok and len(slack.requests) == 2
    assert result.message == (
        f"Slack {CHANNEL}: Slack answered status 500 (2 of 5 tries; another try would pass the step's timeout)"
    )


async def test_the_executor_bounds_a_hung_slack_by_the_steps_timeout(slack: SlackReceiver) -> None:
    slack.delay = 3.0
    step = Step("tell", Stage.ESCALATE, "notify.slack", params(slack), timeout=0.5)
    started = time.monotonic()
    result = await Executor(REGISTRY, services=secrets()).run(incident(), StepCall(step, 1, step.params), details())
    assert time.monotonic() - started < 1.5 and not result.ok
    assert "in time" in result.message or "timed out after 0.5s" in result.message


async def test_redirects_are_not_followed() -> None:
    target = Listener().start()
    redirecting = Listener(redirect_to=f"{target.url}/api/chat.postMessage").start()
    try:
        result = await post(params(redirecting.url), context())
    finally:
        redirecting.stop()
        target.stop()
    assert not result.ok
    assert result.message == f"Slack {CHANNEL}: Slack answered status 302 (redirects are not followed)"
    assert target.requests == []  # the token went nowhere else


async def test_a_metadata_address_is_refused_without_retrying() -> None:
    result = await post(params("http://169.254.169.254", backoff="2s"), context())
    assert not result.ok
    assert result.message == (
        f"Slack {CHANNEL}: 169.254.169.254 is a link-local or cloud metadata address: refused "
        "(start the operator with --allow-link-local to allow it)"
    )


async def test_a_token_that_is_not_one_is_refused_before_sending(slack: SlackReceiver) -> None:
    result = await post(params(slack), context(token="xoxb-1 2"))
    assert not result.ok and slack.requests == []
    assert result.message == f"Slack {CHANNEL}: the bot token in Secret 'slack-bot' key 'token' is not a Slack token"


# -- the policy decides where and as whom -------------------------------------------------------

TEMPLATE = "{{ incident.labels.channel }}"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("channel", TEMPLATE),
        ("channel", "#inc-{{ incident.labels.team }}"),
        ("baseUrl", TEMPLATE),
        ("baseUrl", "https://slack.com/{{ incident.labels.x }}"),
        ("tokenSecretRef", {"name": TEMPLATE, "key": "token"}),
        ("tokenSecretRef", {"name": "slack-bot", "key": TEMPLATE}),
    ],
)
def test_where_and_as_whom_take_no_template(key: str, value: Any) -> None:
    given = {"channel": CHANNEL, "tokenSecretRef": REF, key: value}
    traits = REGISTRY.check("notify.slack", given)
    with pytest.raises(ValueError, match=f"^{key}: must be literal in the policy"):
        check_templates(given, traits.languages)
    step = {"name": "tell", "action": "notify.slack", "with": given}
    parsed = parse_policy(policy_body(diagnose=[step]), REGISTRY.check)
    assert isinstance(parsed, InvalidPolicy)
    assert parsed.error.startswith(f"spec.diagnose[0].with (notify.slack): {key}: must be literal in the policy")


def test_the_text_may_template_incident_fields() -> None:
    given = {"channel": CHANNEL, "tokenSecretRef": REF, "text": "{{ incident.labels.team }} is paged"}
    check_templates(given, REGISTRY.check("notify.slack", given).languages)
    assert languages(SlackParams) == {
        "channel": "literal", "tokenSecretRef": "literal", "baseUrl": "literal"}  # fmt: skip


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"channel": CHANNEL}, "tokenSecretRef: Field required"),
        ({"tokenSecretRef": REF}, "channel: Field required"),
        ({"channel": "a b", "tokenSecretRef": REF}, "channel: Value error, 'a b' is not a Slack channel ID"),
        ({"channel": CHANNEL, "tokenSecretRef": REF, "replyBroadcast": "sometimes"},
         "replyBroadcast: Value error, must be true, false or auto"),
        ({"channel": CHANNEL, "tokenSecretRef": REF, "baseUrl": "https://slack.com/?x=1"},
         "baseUrl: Value error, the Web API's base URL takes no query or fragment"),
        ({"channel": CHANNEL, "tokenSecretRef": REF, "attempts": 0},
         "attempts: Input should be greater than or equal to 1"),
        ({"channel": CHANNEL, "tokenSecretRef": REF, "webhook": "x"}, "webhook: Extra inputs are not permitted"),
    ],
)  # fmt: skip
def test_parameters_are_checked_on_apply(given: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        REGISTRY.check("notify.slack", given)


def test_defaults() -> None:
    parsed = REGISTRY.parse("notify.slack", {"channel": "#incidents", "tokenSecretRef": REF})
    assert str(parsed.base_url) == "https://slack.com/"  # type: ignore[attr-defined]
    assert (parsed.reply_broadcast, parsed.attempts, parsed.backoff) == ("auto", 3, 1.0)  # type: ignore[attr-defined]
    assert REGISTRY.get("notify.slack").default_timeout == 30.0
