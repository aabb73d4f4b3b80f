"""Property: whatever a secret's value, and however an action lets it slip, it leaves the step
nowhere: not in the message (status, Events, notifications), the output, nor the log."""

from __future__ import annotations

import asyncio
import json
import logging
import string
from collections.abc import Callable
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from runbook_operator.actions import Action, ActionContext, ActionFailure, Params, SecretRef, StepResult
from runbook_operator.actions.registry import Registry
from runbook_operator.domain.lifecycle import StepCall
from runbook_operator.domain.model import Stage, Step
from runbook_operator.engine.executor import Executor
from tests.fixtures.secrets import Secrets
from tests.unit.builders import incident

# no "*": the scrub writes "***", which must not be mistaken for a part of the secret
CORE = string.ascii_letters + string.digits + "-_.:/+=@%!#$&()[]{}<>,;?~^|"
EXTRA = [" ", "\n", "\r\n", "\t", "\x00", "\x7f", '"', "'", "\\", "é", "€", "\u2028", "\U0001f511"]

values = st.builds(
    lambda head, core, inner, tail: head + core[:2] + inner + core[2:] + tail,
    st.lists(st.sampled_from([" ", "\n", "\t"]), max_size=2).map("".join),
    st.text(CORE, min_size=4, max_size=24),
    st.lists(st.sampled_from(EXTRA), max_size=3).map("".join),
    st.lists(st.sampled_from([" ", "\n", "\r\n", "\t"]), max_size=2).map("".join),
)

QUOTINGS: dict[str, Callable[[str], str]] = {
    "as is": str,
    "repr": repr,
    "json": json.dumps,
    "bytes repr": lambda v: repr(v.encode()),  # as HTTP libraries quote a header: b'tok\\n'
    "trimmed": str.strip,
    "json twice": lambda v: json.dumps(json.dumps(v)),  # an error about a JSON document
}


def _leak(path: str, quoted: str) -> StepResult:
    """The ways an action hands back what it should not."""
    if path == "message":
        return StepResult(False, f"upstream said: {quoted} (status 401)")
    if path == "output":
        return StepResult(True, "ok", {"body": f"echo {quoted}", "nested": [{"h": quoted}], "n": 3})
    if path == "output key":
        return StepResult(True, "ok", {quoted: 1})
    if path == "failure":
        raise ActionFailure(f"cannot connect: {quoted}", {"seen": [quoted]})
    raise RuntimeError(f"client bug with {quoted}")  # logged with its traceback


def _strings(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (str(k), *_strings(v))]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [str(value)]


@settings(max_examples=300, deadline=None)
@given(
    secret=values,
    quoting=st.sampled_from(sorted(QUOTINGS)),
    path=st.sampled_from(["message", "output", "output key", "failure", "exception"]),
)
def test_a_secret_is_found_nowhere_the_step_writes(secret: str, quoting: str, path: str) -> None:
    async def leaky(params: Any, ctx: ActionContext) -> StepResult:
        value = await ctx.secret(SecretRef(name="api", key="token"), "header X-Token")
        return _leak(path, QUOTINGS[quoting](value))

    registry = Registry([Action("test.leaky", Params, leaky, "lets its secret slip")])
    services = Secrets({("ns", "api", "token"): secret})
    step = Step("leaky", Stage.DIAGNOSE, "test.leaky")
    logged: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: logged.append(handler.format(record))  # type: ignore[method-assign]
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        result = asyncio.run(Executor(registry, services=services).run(incident(), StepCall(step, 1, {}), policy="p"))
    finally:
        root.removeHandler(handler)

    written = [result.message, *_strings(result.output), *logged]
    forms = {secret, secret.strip(), repr(secret)[1:-1], json.dumps(secret)[1:-1], repr(secret.encode())[2:-1]}
    for text in written:
        for form in forms - {""}:
            assert form not in text, f"{form!r} ({quoting}, {path}) in {text!r}"
