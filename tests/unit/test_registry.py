"""The catalog: its reference page, plug-ins through entry points, secrets, redaction and how actions fail."""

import asyncio
from pathlib import Path
from typing import Any

import pytest

from runbook_operator.actions import Action, ActionContext, ActionFailure, Params, SecretRef, StepResult, reference
from runbook_operator.actions.catalog import default_registry, plugin_actions
from runbook_operator.actions.registry import Registry
from runbook_operator.domain.lifecycle import StepCall
from runbook_operator.domain.model import Stage, Step
from runbook_operator.engine.executor import Executor
from tests.unit.builders import incident

ROOT = Path(__file__).resolve().parents[2]


def test_the_reference_page_is_generated_from_the_registry() -> None:
    page = (ROOT / "docs/actions.md").read_text()
    assert page == reference.markdown(default_registry()), "docs/actions.md is stale: run `make docs`"


def test_every_action_documents_every_parameter() -> None:
    for action in default_registry():
        assert action.description and "." in action.name
        for name, info in action.params.model_fields.items():
            assert info.description, f"{action.name}.{name} has no description"


class EchoParams(Params):
    word: str


async def echo(params: EchoParams, ctx: ActionContext) -> StepResult:
    return StepResult(True, params.word)


def test_a_plugin_adds_actions_through_the_entry_point_group(monkeypatch: Any) -> None:
    class Point:
        name, value = "acme", "acme.actions:ACTIONS"

        def load(self) -> list[Action[Any]]:
            return [Action("acme.echo", EchoParams, echo, "say a word")]

    class Broken(Point):
        name = "broken"

        def load(self) -> list[Action[Any]]:
            raise ImportError("no module named acme_broken")

    monkeypatch.setattr("runbook_operator.actions.catalog.entry_points", lambda group: [Point(), Broken()])
    assert [a.name for a in plugin_actions()] == ["acme.echo"]
    assert "acme.echo" in [a.name for a in default_registry()]


def test_two_actions_with_one_name_are_refused() -> None:
    action = Action("x.y", EchoParams, echo, "d")
    with pytest.raises(ValueError, match="registered twice"):
        Registry([action, action])


class SecretParams(Params):
    token: SecretRef


async def leaky(params: SecretParams, ctx: ActionContext) -> StepResult:
    value = await ctx.secret(params.token, "t.leak")
    return StepResult(False, f"server said: bad token {value}", {"echo": f"Bearer {value}", "n": 1})


class FakeServices:
    async def read_secret(self, namespace: str, name: str, key: str, policy: str | None) -> str:
        assert (namespace, name, key) == ("ns", "admin-api", "token")
        return "s3cr3t-value"

    async def rest(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    async def run_blocking(self, fn: Any, *args: Any) -> Any:
        return fn(*args)


async def test_secret_values_are_scrubbed_from_what_a_step_returns() -> None:
    registry = Registry([Action("t.leak", SecretParams, leaky, "leaks")])
    params = {"token": {"name": "admin-api", "key": "token"}}
    step = Step("s", Stage.REMEDIATE, "t.leak", params)
    result = await Executor(registry, services=FakeServices()).run(incident(), StepCall(step, 1, params))
    assert "s3cr3t-value" not in result.message and "s3cr3t-value" not in str(result.output)
    assert result.message == "server said: bad token ***" and result.output == {"echo": "Bearer ***", "n": 1}


async def run(action: Action[Any], params: dict[str, Any], services: Any = None) -> StepResult:
    step = Step("s", Stage.REMEDIATE, action.name, params)
    return await Executor(Registry([action]), services=services).run(incident(), StepCall(step, 1, params))


class FailParams(Params):
    why: str = "refused"


async def refuses(params: FailParams, ctx: ActionContext) -> StepResult:
    raise ActionFailure(f"acme said {params.why}", {"seen": 3})


async def crashes(params: FailParams, ctx: ActionContext) -> StepResult:
    raise KeyError(params.why)


async def test_an_action_failure_is_the_steps_result_with_what_the_action_saw() -> None:
    result = await run(Action("t.refuse", FailParams, refuses, "refuses"), {"why": "no"})
    assert result == StepResult(False, "acme said no", {"seen": 3})


async def test_any_other_exception_is_a_failed_result_naming_its_type() -> None:
    result = await run(Action("t.crash", FailParams, crashes, "crashes"), {"why": "gone"})
    assert result == StepResult(False, "t.crash failed: KeyError: 'gone'")


async def test_a_failure_message_is_scrubbed_of_the_secrets_the_step_read() -> None:
    async def tells(params: SecretParams, ctx: ActionContext) -> StepResult:
        value = await ctx.secret(params.token, "t.tell")
        raise ActionFailure(f"rejected {value}", {"sent": value})

    result = await run(
        Action("t.tell", SecretParams, tells, "tells"), {"token": {"name": "admin-api", "key": "token"}}, FakeServices()
    )
    assert result == StepResult(False, "rejected ***", {"sent": "***"})


@pytest.mark.parametrize(
    ("what", "message"),
    [
        (None, "t.read: no cluster to read secrets from"),
        (
            "the token",
            "t.read: cannot read the token from Secret 'admin-api' key 'token': no cluster to read secrets from",
        ),
    ],
)
async def test_a_secret_that_cannot_be_read_fails_the_step_saying_which(what: str | None, message: str) -> None:
    async def reads(params: SecretParams, ctx: ActionContext) -> StepResult:
        return StepResult(True, await ctx.secret(params.token, "t.read", what))

    result = await run(Action("t.read", SecretParams, reads, "reads"), {"token": {"name": "admin-api", "key": "token"}})
    assert result == StepResult(False, message)


async def test_a_cancel_that_meets_the_end_of_a_try_stops_the_retries() -> None:
    """The rolling-upgrade failure: a leader stepping down cancels every step; one whose try
    had just returned must stop too. asyncio.wait_for on 3.11 returned that try's result and
    dropped the cancel, so the step went on retrying for a minute and held the Lease with it."""
    tries = 0

    async def fails_as_the_cancel_comes(params: EchoParams, ctx: ActionContext) -> StepResult:
        nonlocal tries
        tries += 1
        asyncio.get_running_loop().call_soon(running.cancel)  # after this try returns, before the step resumes
        return StepResult(False, "not yet")

    action = Action("t.flaky", EchoParams, fails_as_the_cancel_comes, "fails")
    step = Step("s", Stage.VERIFY, action.name, {"word": "w"}, retries=5, backoff=0.01)
    executor = Executor(Registry([action]))
    running = asyncio.create_task(executor.run(incident(), StepCall(step, 1, {"word": "w"})))
    with pytest.raises(asyncio.CancelledError):
        await running
    assert tries == 1


def test_the_notification_family_is_the_notify_package_and_nothing_else() -> None:
    """One definition: an action is a notification (counted by channel) exactly when it is
    named notify.<channel>, and those are the actions the actions/notify/ modules define."""
    from runbook_operator.actions.catalog import BUILTIN
    from runbook_operator.domain.model import channel

    for action in BUILTIN:
        in_package = action.run.__module__.startswith("runbook_operator.actions.notify.")
        assert (channel(action.name) is not None) == in_package, action.name
    assert {channel(a.name) for a in BUILTIN} - {None} == {"webhook", "slack", "pagerduty", "opsgenie", "email"}
