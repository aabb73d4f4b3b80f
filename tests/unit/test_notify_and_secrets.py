"""notify.webhook and secret-bearing http.request against a real local HTTP server."""

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from runbook_lab.demo import DemoService
from runbook_operator.actions import Action, ActionContext, Params, SecretRef
from runbook_operator.actions.catalog import default_registry
from runbook_operator.actions.registry import Registry
from runbook_operator.adapters.kube import _consents
from runbook_operator.domain.lifecycle import StepCall
from runbook_operator.domain.model import Stage, Step
from runbook_operator.engine.executor import Executor, run_action
from tests.fixtures.secrets import Secrets
from tests.unit.builders import REGISTRY, incident

SECRETS = {("ns", "admin-api", "token"): "Bearer s3cr3t-token", ("ns", "slack", "url"): ""}


@pytest.fixture
def service() -> Iterator[DemoService]:
    svc = DemoService(restart_seconds=0).start()
    yield svc
    svc.stop()


def context(services: Any = None) -> ActionContext:
    details = {"alert": "RedisDown", "severity": "Critical", "phase": "Escalated", "level": "on-call",
               "findings": [{"step": "ping", "message": "connection refused"}]}  # fmt: skip
    return ActionContext("ns", "redis-down", 5.0, details, services)


async def webhook(params: dict[str, Any], ctx: ActionContext) -> Any:
    return await run_action(REGISTRY.get("notify.webhook"), REGISTRY.parse("notify.webhook", params), ctx)


async def test_slack_payload_names_the_incident_findings_and_how_to_inspect(service: DemoService) -> None:
    result = await webhook({"url": f"{service.url}/hooks/oncall", "format": "slack"}, context())
    assert result.ok, result.message
    ((name, body),) = service.hooks
    assert name == "oncall"
    assert body["text"].splitlines() == [
        "[Critical] RedisDown ns/redis-down: escalated: needs people",
        "Findings:",
        "- ping: connection refused",
        "Inspect: `kubectl describe incident redis-down -n ns`",
    ]


async def test_json_payload_is_the_incident_document(service: DemoService) -> None:
    await webhook({"url": f"{service.url}/hooks/x", "format": "json", "text": "heads up"}, context())
    body = service.hooks[0][1]
    assert (body["alert"], body["severity"], body["phase"], body["level"], body["text"]) == (
        "RedisDown", "Critical", "Escalated", "on-call", "heads up")  # fmt: skip
    assert body["findings"] == [{"step": "ping", "message": "connection refused"}]


async def test_webhook_is_retried_on_5xx_and_not_on_4xx(service: DemoService) -> None:
    service.hook_failures = 2
    result = await webhook({"url": f"{service.url}/hooks/x", "backoff": "10ms"}, context())
    assert result.ok and len(service.hooks) == 1
    assert [p for m, p, _ in service.requests] == ["/hooks/x"] * 3
    gone = await webhook({"url": f"{service.url}/nowhere", "backoff": "10ms"}, context())
    assert not gone.ok and "status 404" in gone.message
    assert [p for m, p, _ in service.requests].count("/nowhere") == 1


async def test_webhook_url_from_a_secret_never_shows_in_the_result(service: DemoService) -> None:
    secret_url = f"{service.url}/hooks/T0KEN-IN-PATH"
    ctx = context(Secrets({("ns", "slack", "url"): secret_url}))
    result = await webhook({"urlSecretRef": {"name": "slack", "key": "url"}, "format": "slack"}, ctx)
    assert result.ok and service.hooks[0][0] == "T0KEN-IN-PATH"
    assert "T0KEN" not in result.message and result.message == "notified webhook at 127.0.0.1"
    missing = await webhook({"urlSecretRef": {"name": "slack", "key": "nope"}}, ctx)
    assert not missing.ok and "has no key 'nope'" in missing.message


async def test_webhook_down_is_a_clear_failure() -> None:
    result = await webhook({"url": "http://127.0.0.1:9/hooks/x", "attempts": 2, "backoff": "10ms"}, context())
    assert not result.ok and result.message == "webhook at 127.0.0.1: ConnectError"


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({}, "give exactly one of url and urlSecretRef"),
        ({"url": "http://a/", "urlSecretRef": {"name": "s", "key": "k"}}, "give exactly one of url and urlSecretRef"),
        ({"url": "http://a/", "format": "teams"}, "format: Input should be 'slack' or 'json'"),
        ({"urlSecretRef": {"name": "s"}}, "urlSecretRef.key: Field required"),
        ({"url": "http://a/", "attempts": 0}, "attempts: Input should be greater than or equal to 1"),
    ],
)
def test_webhook_parameters_are_validated(params: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        default_registry().check("notify.webhook", params)


async def test_headers_from_secrets_are_sent_and_scrubbed_from_the_result(service: DemoService) -> None:
    params = {
        "url": f"{service.url}/admin/echo",
        "headersFromSecrets": {"Authorization": {"name": "admin-api", "key": "token"}},
    }
    step = Step("echo", Stage.REMEDIATE, "http.request", params)
    result = await Executor(REGISTRY, services=Secrets(SECRETS)).run(incident(), StepCall(step, 1, params))
    assert result.ok
    assert service.headers[-1]["Authorization"] == "Bearer s3cr3t-token"  # it really went out
    assert "s3cr3t" not in result.message + str(result.output)  # and never comes back
    assert '"Authorization": "*' in result.output["body"]  # scrubbed before the excerpt was cut


async def test_a_missing_secret_fails_the_step_naming_it() -> None:
    params = {"url": "http://127.0.0.1:9/x", "headersFromSecrets": {"X-Token": {"name": "gone", "key": "k"}}}
    step = Step("s", Stage.REMEDIATE, "http.request", params)
    result = await Executor(REGISTRY, services=Secrets({})).run(incident(), StepCall(step, 1, params))
    assert not result.ok and result.message == "header X-Token: secret ns/gone has no key 'k'"


async def test_webhook_times_out_on_a_receiver_that_never_answers(silent_port: int) -> None:
    ctx = ActionContext("ns", "redis-down", 0.3, None, None)
    result = await webhook({"url": f"http://127.0.0.1:{silent_port}/hooks/x", "attempts": 1}, ctx)
    assert not result.ok and result.message == "webhook at 127.0.0.1: no answer in time"


async def test_slack_text_cannot_mention_channels_or_hide_links(service: DemoService) -> None:
    ctx = context()
    ctx.details["findings"] = [{"step": "logs", "message": "<!channel> see <https://evil.test|the runbook> & more"}]  # type: ignore[index]
    result = await webhook({"url": f"{service.url}/hooks/oncall", "format": "slack", "text": "<@U123> {x}"}, ctx)
    assert result.ok, result.message
    lines = service.hooks[0][1]["text"].splitlines()
    assert lines[:3] == [
        "&lt;@U123&gt; {x}",
        "Findings:",
        "- logs: &lt;!channel&gt; see &lt;https://evil.test|the runbook&gt; &amp; more",
    ]


async def test_webhook_to_a_metadata_address_is_refused_without_retrying() -> None:
    result = await webhook({"url": "http://169.254.169.254/hooks/x", "attempts": 3, "backoff": "2s"}, context())
    assert not result.ok
    assert result.message == (
        "webhook at 169.254.169.254: 169.254.169.254 is a link-local or cloud metadata address: refused "
        "(start the operator with --allow-link-local to allow it)"
    )


@pytest.mark.parametrize("value", ["Bearer tok-3e9c\n", "tok-3e9c\r\n", "tok\x00-3e9c", "\ttok-3e9c"])
async def test_a_secret_with_a_control_character_is_refused_without_quoting_it(
    service: DemoService, value: str
) -> None:
    params = {"url": f"{service.url}/admin/echo",
              "headersFromSecrets": {"Authorization": {"name": "admin-api", "key": "token"}}}  # fmt: skip
    step = Step("echo", Stage.REMEDIATE, "http.request", params)
    services = Secrets({("ns", "admin-api", "token"): value})
    result = await Executor(REGISTRY, services=services).run(incident(), StepCall(step, 1, params), policy="p")
    assert not result.ok
    assert result.message == (
        "header Authorization: Secret 'admin-api' key 'token': the value contains a control character (often the "
        "trailing newline `kubectl create secret --from-file` keeps): refused; store the value without it"
    )
    assert service.headers == []  # nothing went out


def test_redaction_covers_quoted_escaped_and_trimmed_forms() -> None:
    ctx = ActionContext("ns", "inc", 1.0, revealed={'tok-"9\n'})
    for text in ['tok-"9\n', repr('tok-"9\n'), json.dumps('tok-"9\n'), repr(b'tok-"9\n'), 'tok-"9 ...', 'x tok-"9']:
        assert "tok-" not in ctx.redact(f"error: {text}!"), text


def test_a_secret_is_read_only_by_the_policies_it_names() -> None:
    for listed in ("redis-down,im-down", " im-down ", "*", "a, *"):
        _consents(listed, "ns", "admin-api", "im-down")
    with pytest.raises(PermissionError) as refused:
        _consents(None, "ns", "admin-api", "im-down")
    assert str(refused.value) == (
        "secret ns/admin-api is not shared with policy 'im-down': its owner must add it to the annotation "
        "remediation.ishchat.io/policies (kubectl annotate secret admin-api -n ns --overwrite "
        "remediation.ishchat.io/policies=im-down)"
    )
    with pytest.raises(PermissionError, match=r"policies=redis-down,im-down\)$"):
        _consents("redis-down", "ns", "admin-api", "im-down")
    with pytest.raises(PermissionError, match="read outside a RemediationPolicy"):
        _consents("im-down", "ns", "admin-api", None)


async def test_an_action_that_raises_a_secret_is_logged_scrubbed(caplog: pytest.LogCaptureFixture) -> None:
    async def careless(params: Any, ctx: ActionContext) -> Any:
        token = await ctx.secret(SecretRef(name="admin-api", key="token"), "token")
        raise RuntimeError(f"could not use {token!r}")

    registry = Registry([Action("test.careless", Params, careless, "raises what it read")])
    step = Step("careless", Stage.DIAGNOSE, "test.careless")
    with caplog.at_level(logging.ERROR):
        result = await Executor(registry, services=Secrets(SECRETS)).run(incident(), StepCall(step, 1, {}))
    assert not result.ok and result.message == "test.careless failed: RuntimeError: could not use '***'"
    assert "action test.careless raised" in caplog.text and "Traceback" in caplog.text
    assert "s3cr3t" not in caplog.text


@pytest.mark.parametrize("verbose", [False, True])
def test_http_clients_never_log_request_urls_even_when_verbose(verbose: bool) -> None:
    """httpx logs `HTTP Request: POST <url>` at INFO; a webhook URL from a Secret is a credential."""
    from runbook_operator.entrypoints.cli import run as run_command

    loggers = [logging.getLogger(name) for name in ("httpx", "httpcore", "kopf.objects")]
    before = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.NOTSET)
        run_command.quiet_loggers(verbose)
        assert not loggers[0].isEnabledFor(logging.INFO) and not loggers[1].isEnabledFor(logging.INFO)
        assert (loggers[2].level == logging.WARNING) is not verbose
    finally:
        for logger, level in zip(loggers, before, strict=True):
            logger.setLevel(level)
