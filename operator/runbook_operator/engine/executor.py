"""Run one step through the action registry: parameters, timeout, retries, backoff.

Whatever an action does, the result is a StepResult. This module alone turns what an
action raises into words: an :class:`ActionFailure` gives its message and output, a
timeout and any other exception become a failed result with a clear message, never a
crash of the operator.
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from typing import Any

import pydantic

from runbook_operator.actions.api import Action, ActionContext, ActionFailure, Services, StepResult
from runbook_operator.actions.registry import Registry
from runbook_operator.adapters.metrics import Metrics
from runbook_operator.domain.lifecycle import StepCall
from runbook_operator.domain.model import Incident, Step, channel

log = logging.getLogger(__name__)
Sleep = Callable[[float], Awaitable[None]]


class Executor:
    def __init__(
        self,
        registry: Registry,
        services: Services | None = None,
        sleep: Sleep = asyncio.sleep,
        metrics: Metrics | None = None,
    ) -> None:
        self._registry, self._services, self._sleep, self._metrics = registry, services, sleep, metrics

    def time_bound(self, step: Step) -> float:
        """The longest a run of ``step`` can take: every try's timeout and the backoffs between."""
        try:
            timeout = step.timeout or self._registry.get(step.action).default_timeout
        except ValueError:  # an action the catalog no longer has: the run fails at once
            timeout = 0.0
        return timeout * (step.retries + 1) + step.backoff * step.retries

    async def run(
        self,
        incident: Incident,
        call: StepCall,
        details: Mapping[str, Any] | None = None,
        policy: str | None = None,
        conversations: Mapping[str, str] | None = None,
    ) -> StepResult:
        """Run ``call`` for ``incident``; ``policy`` (the step's RemediationPolicy) is whom Secrets must
        consent to; ``conversations`` the incident's threads so far (status.conversations)."""
        step = call.step
        try:
            action = self._registry.get(step.action)
            params = self._registry.parse(step.action, call.params)
        except ValueError as err:  # rendered templates gave a bad value, or the catalog changed
            return StepResult(False, f"cannot run {step.action}: {err}")
        timeout = step.timeout or action.default_timeout
        ctx = ActionContext(
            incident.namespace, incident.name, timeout, details, self._services, policy, incident.uid,
            dict(conversations or {}),
        )  # fmt: skip
        result = StepResult(False, "not run")
        started = time.monotonic()
        for attempt in range(step.retries + 1):
            if attempt:
                await self._sleep(step.backoff)
            try:  # asyncio.timeout, not wait_for: on 3.11 wait_for loses a cancel that meets the action's end
                async with asyncio.timeout(timeout):
                    result = await run_action(action, params, ctx)
            except TimeoutError:
                result = _timed_out(action, ctx)
            if result.ok:
                break
        if step.retries and not result.ok:
            result = StepResult(False, f"{result.message} (after {step.retries + 1} tries)", result.output)
        if self._metrics is not None:
            self._metrics.action(step.action, result.ok, time.monotonic() - started)
            if (sent_to := channel(step.action)) is not None:
                self._metrics.notification(sent_to, result.ok)
        return _redacted(result, ctx)


async def run_action(action: Action[Any], params: pydantic.BaseModel, ctx: ActionContext) -> StepResult:
    """One call of ``action.run``, whatever it raises told in words (the executor adds the
    step's timeout, retries and redaction; tests call this to see an action's own bounds)."""
    try:
        return await action.run(params, ctx)
    except ActionFailure as failure:
        return StepResult(False, failure.message, failure.output)
    except TimeoutError:
        return _timed_out(action, ctx)
    except Exception as err:  # an action bug must not take the operator down
        # the traceback's last line quotes the exception, which may quote a secret
        log.error("action %s raised:\n%s", action.name, ctx.redact("".join(traceback.format_exception(err))).rstrip())
        return StepResult(False, f"{action.name} failed: {type(err).__name__}: {err}")


def _timed_out(action: Action[Any], ctx: ActionContext) -> StepResult:
    return StepResult(False, f"{action.name} timed out after {ctx.timeout:g}s")


def _redacted(result: StepResult, ctx: ActionContext) -> StepResult:
    """No secret value read for this step leaves it: not in status, Events, logs or notifications."""
    if not ctx.revealed:
        return result
    return replace(result, message=ctx.redact(result.message), output=_scrubbed(result.output, ctx))


def _scrubbed(value: Any, ctx: ActionContext) -> Any:
    """Every string of an output scrubbed as it is, keys included (in a JSON text, a value
    an error quoted escaped would be escaped twice); shaped as JSON, as status stores it."""
    if isinstance(value, Mapping):
        return {ctx.redact(str(k)): _scrubbed(v, ctx) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrubbed(v, ctx) for v in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    return ctx.redact(str(value))
