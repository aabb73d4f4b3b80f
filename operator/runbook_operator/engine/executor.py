"""Run one step through the action registry: parameters, timeout, retries, backoff.

Whatever an action does, the result is a StepResult; an exception or a timeout
becomes a failed result with a clear message, never a crash of the operator.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from runbook_operator.actions.registry import ActionContext, Registry, Services
from runbook_operator.domain.lifecycle import StepCall
from runbook_operator.domain.model import Incident
from runbook_operator.domain.results import StepResult
from runbook_operator.engine.metrics import Metrics

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

    async def run(self, incident: Incident, call: StepCall, details: Mapping[str, Any] | None = None) -> StepResult:
        step = call.step
        try:
            action = self._registry.get(step.action)
            params = self._registry.parse(step.action, call.params)
        except ValueError as err:  # rendered templates gave a bad value, or the catalog changed
            return StepResult(False, f"cannot run {step.action}: {err}")
        timeout = step.timeout or action.default_timeout
        ctx = ActionContext(incident.namespace, incident.name, timeout, details, self._services)
        result = StepResult(False, "not run")
        started = time.monotonic()
        for attempt in range(step.retries + 1):
            if attempt:
                await self._sleep(step.backoff)
            result = await self._once(action.run(params, ctx), timeout, step.action)
            if result.ok:
                break
        if step.retries and not result.ok:
            result = StepResult(False, f"{result.message} (after {step.retries + 1} tries)", result.output)
        if self._metrics is not None:
            self._metrics.action(step.action, result.ok, time.monotonic() - started)
        return _redacted(result, ctx)

    @staticmethod
    async def _once(coro: Awaitable[StepResult], limit: float, name: str) -> StepResult:
        try:
            return await asyncio.wait_for(coro, limit)
        except TimeoutError:
            return StepResult(False, f"{name} timed out after {limit:g}s")
        except Exception as err:  # an action bug must not take the operator down
            log.exception("action %s raised", name)
            return StepResult(False, f"{name} failed: {type(err).__name__}: {err}")


def _redacted(result: StepResult, ctx: ActionContext) -> StepResult:
    """No secret value read for this step leaves it: not in status, Events, logs or notifications."""
    if not ctx.revealed:
        return result
    output = json.loads(ctx.redact(json.dumps(result.output, default=str)))
    return StepResult(result.ok, ctx.redact(result.message), output)
