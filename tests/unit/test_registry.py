"""The catalog: its reference page, plug-ins through entry points, secrets and redaction."""

from pathlib import Path
from typing import Any

import pytest

from runbook_operator.actions import ActionContext, Registry, default_registry, reference
from runbook_operator.actions.registry import Action, Params, SecretRef, plugin_actions
from runbook_operator.domain.lifecycle import StepCall, StepResult
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

    monkeypatch.setattr("runbook_operator.actions.registry.entry_points", lambda group: [Point(), Broken()])
    assert [a.name for a in plugin_actions()] == ["acme.echo"]
    assert "acme.echo" in [a.name for a in default_registry()]


def test_two_actions_with_one_name_are_refused() -> None:
    action = Action("x.y", EchoParams, echo, "d")
    with pytest.raises(ValueError, match="registered twice"):
        Registry([action, action])


class SecretParams(Params):
    token: SecretRef


async def leaky(params: SecretParams, ctx: ActionContext) -> StepResult:
    value = await ctx.secret(params.token)
    return StepResult(False, f"server said: bad token {value}", {"echo": f"Bearer {value}", "n": 1})


class FakeServices:
    async def read_secret(self, namespace: str, name: str, key: str) -> str:
        assert (namespace, name, key) == ("ns", "admin-api", "token")
        return "s3cr3t-value"

    def api_client(self) -> Any:
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
