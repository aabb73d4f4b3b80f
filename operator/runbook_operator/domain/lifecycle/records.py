"""What a step leaves in status: running it, settling it unrun, and its result (``complete``)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from runbook_operator.domain import consent, expressions
from runbook_operator.domain.consent import Approval
from runbook_operator.domain.evolve import evolve
from runbook_operator.domain.model import Stage, Step
from runbook_operator.domain.progress import NORMAL, WARNING, Context, Event, Progress, StepCall
from runbook_operator.domain.results import StepResult
from runbook_operator.domain.status import (
    ConditionType,
    Finding,
    Phase,
    Reason,
    Silence,
    Status,
    StepRecord,
    StepState,
    timestamp,
)
from runbook_operator.domain.wire import clipped

OUTPUT_LIMIT = 2048

STAGE_PHASE = {
    Stage.DIAGNOSE.value: Phase.DIAGNOSING,
    Stage.REMEDIATE.value: Phase.REMEDIATING,
    Stage.VERIFY.value: Phase.VERIFYING,
}


def settle_unrun(p: Progress, step: Step, attempt: int, state: StepState, why: str) -> StepRecord:
    """Record a step that ends without running: Skipped (when, dry run, interrupted) or Failed."""
    now = timestamp(p.now)
    record = StepRecord(step.name, step.stage.value, step.action, attempt, state.value, now, now, why)
    p.status = p.status.with_record(record)
    if state is StepState.SKIPPED:
        p.emit(NORMAL, Reason.STEP_SKIPPED, f"{step.stage.value} step {step.name!r} skipped: {why}")
    else:
        p.emit(WARNING, Reason.STEP_FAILED, f"{step.stage.value} step {step.name!r} ({step.action}) failed: {why}")
    return record


def skip(p: Progress, step: Step, attempt: int, why: str) -> None:
    settle_unrun(p, step, attempt, StepState.SKIPPED, why)


def render(ctx: Context, status: Status, step: Step) -> dict[str, Any]:
    try:
        return expressions.render(step.params, ctx.variables(status), step.languages)
    except ValueError:
        return dict(step.params)  # the executor will report the bad parameters


def claim(
    p: Progress, call: StepCall, approval: Approval | None = None, digest: str | None = None, why: str | None = None
) -> StepCall:
    """Mark the step Running in status (the write that claims it), with the approval that lets it run.
    ``why``: what let a step that waited start, when it was not an approval of its own."""
    step = call.step
    previous = p.status.record(step.stage.value, step.name, call.attempt)
    record = StepRecord(
        step.name, step.stage.value, step.action, call.attempt, StepState.RUNNING.value, timestamp(p.now),
        approvalRequest=previous.approvalRequest if previous is not None else None,
        paramsDigest=consent.digest(step.action, call.params),
    )  # fmt: skip
    if approval is not None:
        record = evolve(record, approvedBy=approval.by, approvedAt=timestamp(p.now), approvedDigest=digest)
        p.emit(
            NORMAL,
            Reason.APPROVED,
            f"step {step.name!r} approved by {approval.by} (round {call.attempt}, parameters {(digest or '')[:19]})",
        )
    p.status = evolve(p.status.with_record(record), currentStep=step.name)
    if not step.notifies and p.status.phase == Phase.AWAITING_APPROVAL:
        if why is None:
            why = f"approved by {approval.by}" if approval is not None else "no longer needs approval (policy edited)"
        p.condition(ConditionType.RESOLVED, False, Reason.IN_PROGRESS, f"step {step.name!r} {why}")
        p.enter(STAGE_PHASE[step.stage.value], Reason.APPROVED, f"step {step.name!r} {why}")
        p.status = evolve(p.status, currentStep=step.name)
    return call


def resumed(p: Progress, call: StepCall) -> StepCall:
    p.emit(
        WARNING, Reason.STEP_RESUMED, f"step {call.step.name!r} was running when the operator stopped; running it again"
    )
    return call


def complete(
    status: Status, call: StepCall, result: StepResult, now: datetime, duration: float | None = None
) -> tuple[Status, tuple[Event, ...]]:
    """Record a finished step: its state, message, output, how long it ran (``duration``, seconds)
    and, for diagnosis, a finding."""
    p = Progress(status, now)
    step = call.step
    previous = status.record(step.stage.value, step.name, call.attempt)
    state = StepState.SUCCEEDED if result.ok else StepState.FAILED
    began = previous or StepRecord(step.name, step.stage.value, step.action, call.attempt, state.value, timestamp(now))
    record = evolve(
        began, state=state.value, finishedAt=timestamp(now), message=result.message, output=bounded(result.output),
        duration=round(duration, 3) if duration is not None else None,
    )  # fmt: skip
    p.status = evolve(p.status.with_record(record), currentStep=None)
    if result.conversation is not None:
        p.status = p.status.with_conversation(*result.conversation)
    if result.silence is not None:
        url, ident, ends = result.silence
        p.status = p.status.with_silence(Silence(ident, url, ends, step.name))
    if step.stage is Stage.DIAGNOSE:
        p.status = evolve(p.status, findings=(*p.status.findings, Finding(step.name, result.message)))
    reason, kind = (Reason.STEP_SUCCEEDED, NORMAL) if result.ok else (Reason.STEP_FAILED, WARNING)
    p.emit(
        kind, reason, f"{step.stage.value} step {step.name!r} ({step.action}) {state.value.lower()}: {result.message}"
    )
    return p.status, tuple(p.events)


def bounded(output: Mapping[str, Any]) -> dict[str, Any] | None:
    """Keep status small: drop output values once their text passes OUTPUT_LIMIT."""
    kept: dict[str, Any] = {}
    size = 0
    for key, value in output.items():
        size += len(str(key)) + len(str(value))
        if size > OUTPUT_LIMIT:
            kept["truncated"] = True
            break
        kept[key] = value
    return kept or None


def compact(params: Mapping[str, Any]) -> str:
    return clipped(json.dumps(params, sort_keys=True, default=str), 300)
