"""Consent: a step that needs approval opens a request for exactly its parameters and round, and runs
only when an approval answers it (``domain.consent``), else waits until the approval timeout."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from runbook_operator.domain import consent
from runbook_operator.domain.evolve import evolve
from runbook_operator.domain.lifecycle.records import bounded, claim
from runbook_operator.domain.model import DEFAULT_SEVERITY, RESPONSE_TIME, Step
from runbook_operator.domain.progress import WARNING, Context, Progress, StepCall
from runbook_operator.domain.status import (
    ApprovalRequest,
    ConditionType,
    Phase,
    Reason,
    StepRecord,
    StepState,
    parse_timestamp,
    timestamp,
)


def consent_to(p: Progress, ctx: Context, step: Step, attempt: int, params: dict[str, Any]) -> StepCall | StepRecord:
    """Run the step if an approval answers its open request; else open (or renew) the request and wait."""
    wanted = consent.digest(step.action, params)
    record = p.status.record(step.stage.value, step.name, attempt)
    waiting = record is not None and record.state == StepState.AWAITING_APPROVAL.value
    request = record.approvalRequest if record is not None and waiting else None
    if record is None or request is None or request.digest != wanted:  # none yet, or not for these parameters
        record = _request(p, ctx, step, attempt, params, wanted, record if waiting else None)
    else:
        approval = consent.answer(ctx.incident.approvals, step.name, attempt, request.nonce)
        if approval is not None:
            return claim(p, StepCall(step, attempt, params), approval, wanted)
    _ignored(p, ctx, step, record)
    return _await_approval(p, ctx, step, record)


def approval_holds(ctx: Context, step: Step, record: StepRecord, digest: str) -> bool:
    """Does the record of a step that needs approval hold one: the approval the operator wrote
    into it when the step started, still answering the request it names (spec.approvals, which
    the API server guards), for exactly these parameters (``digest``)? Status alone proves nothing."""
    request = record.approvalRequest
    if request is None or record.approvedDigest != digest:
        return False
    approval = consent.answer(ctx.incident.approvals, step.name, record.attempt, request.nonce)
    return approval is not None and approval.by == record.approvedBy


def _request(
    p: Progress,
    ctx: Context,
    step: Step,
    attempt: int,
    params: dict[str, Any],
    digest: str,
    previous: StepRecord | None,
) -> StepRecord:
    """Ask for approval of exactly these parameters in this round, under a fresh nonce.

    A renewed request keeps the first one's start, so the approval timeout is not pushed back."""
    request = ApprovalRequest(p.nonce, digest, timestamp(p.now), bounded(params) or {})
    started = previous.startedAt if previous is not None and previous.startedAt else timestamp(p.now)
    record = StepRecord(
        step.name, step.stage.value, step.action, attempt, StepState.AWAITING_APPROVAL.value, started,
        approvalRequest=request,
    )  # fmt: skip
    p.status = p.status.with_record(record)
    how = _approval_commands(ctx, step, attempt, p.nonce)
    if p.status.phase == Phase.AWAITING_APPROVAL:
        why = "its parameters changed" if previous is not None and previous.approvalRequest else "a new request"
        p.emit(
            WARNING,
            Reason.APPROVAL_REQUEST_CHANGED,
            f"step {step.name!r} asks again ({why}, parameters {digest[:19]}); approvals of the earlier request "
            f"do not count; approve with: {how}",
        )
    else:
        why = "destructive action" if step.destructive else "requiresApproval"
        p.condition(ConditionType.RESOLVED, False, Reason.AWAITING_APPROVAL, f"step {step.name!r} awaits approval")
        p.enter(
            Phase.AWAITING_APPROVAL,
            Reason.AWAITING_APPROVAL,
            f"step {step.name!r} ({step.action}, {why}) needs approval for round {attempt} "
            f"(parameters {digest[:19]}); approve with: {how}",
        )
    p.status = evolve(p.status, currentStep=step.name)
    return record


def _approval_commands(ctx: Context, step: Step, attempt: int, nonce: str) -> str:
    name, namespace = ctx.incident.name, ctx.incident.namespace
    return (
        f"`{consent.approve_command(namespace, name, step.name)}`, or as a raw patch "
        f"(with {consent.PLACEHOLDER} replaced by your username): "
        f"`{consent.patch_command(namespace, name, step.name, attempt, nonce)}`"
    )


def _ignored(p: Progress, ctx: Context, step: Step, record: StepRecord) -> None:
    """Say once which approvals of this step do not count: another round, another nonce, or none."""
    request = record.approvalRequest
    assert request is not None
    stale = [
        a
        for a in ctx.incident.approvals
        if a.step == step.name and not a.answers(step.name, record.attempt, request.nonce)
    ]
    if not stale:
        return
    who = ", ".join(f"{a.by!r} (round {a.round}, nonce {a.nonce or 'none'})" for a in stale[:3])
    more = f" and {len(stale) - 3} more" if len(stale) > 3 else ""
    p.wait(
        Reason.APPROVAL_IGNORED,
        f"approval(s) of step {step.name!r} by {who}{more} do not count: they do not name the open request "
        f"(round {record.attempt}, nonce {request.nonce})",
    )


def _await_approval(p: Progress, ctx: Context, step: Step, record: StepRecord) -> StepRecord:
    """Wait for an approval until the approval timeout, then escalate."""
    assert record.startedAt is not None
    severity = p.status.severity or DEFAULT_SEVERITY
    limit = ctx.policy.approval_timeout if ctx.policy and ctx.policy.approval_timeout else RESPONSE_TIME[severity]
    deadline = parse_timestamp(record.startedAt) + timedelta(seconds=limit)
    if p.now >= deadline:
        failed = evolve(
            record, state=StepState.FAILED.value, finishedAt=timestamp(p.now), message="no approval in time"
        )
        p.status = p.status.with_record(failed)
        p.escalate(Reason.APPROVAL_TIMEOUT, f"step {step.name!r} was not approved within {limit:g}s")
        return failed
    p.wake.append(deadline)
    return record
