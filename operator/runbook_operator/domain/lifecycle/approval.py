"""Consent: a step that needs approval opens a request for exactly its parameters and round, and runs
only when an approval answers it (``domain.consent``), else waits until the approval timeout.

Budgets (``domain.budgets``) pass through the same door: a remediation step starts only once its
spend is in every budget that applies (:func:`admit`); when one has no room, the step is
*throttled*: it opens an approval request like any gated step and waits until the budget frees
up, a person approves it past the budget (the same consent rules), or the approval timeout
escalates it."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from runbook_operator.domain import consent
from runbook_operator.domain.budgets import Ask, Refusal
from runbook_operator.domain.consent import Approval
from runbook_operator.domain.evolve import evolve
from runbook_operator.domain.lifecycle.records import bounded, claim
from runbook_operator.domain.model import DEFAULT_SEVERITY, RESPONSE_TIME, Stage, Step
from runbook_operator.domain.progress import WARNING, Context, Progress, Reservation, StepCall
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


def admit(
    p: Progress, ctx: Context, call: StepCall, approval: Approval | None = None, digest: str | None = None
) -> StepCall | StepRecord | Reservation:
    """Claim a step the budgets let start; ask the engine to reserve it first, or throttle it."""
    step = call.step
    if step.stage is not Stage.REMEDIATE or step.read_only:
        return claim(p, call, approval, digest)
    if approval is None:  # approved past the budget while it was throttled
        approval, digest = _answered(p, ctx, call)
    ask = Ask.of(ctx.incident, step, call.attempt, _round_started(p, call.attempt))
    lacking = [b for b in ctx.budgets if b.needs(ask, p.now)]
    if not lacking:
        return claim(p, call, approval, digest, _released(p, step, approval, bool(ctx.budgets)))
    refusals = [r for b in lacking if (r := b.refusal(ask, p.now)) is not None]
    keys = tuple(b.key for b in lacking)
    if not refusals:
        return Reservation(ask, keys)
    if approval is not None:
        p.emit(
            WARNING,
            Reason.APPROVED_PAST_BUDGET,
            f"step {step.name!r} approved by {approval.by} past {_refused(refusals)}; its spend is recorded",
        )
        return Reservation(ask, keys, approval.by)
    return consent_to(p, ctx, step, call.attempt, dict(call.params), refusals)


def consent_to(
    p: Progress, ctx: Context, step: Step, attempt: int, params: dict[str, Any], refusals: Sequence[Refusal] = ()
) -> StepCall | StepRecord | Reservation:
    """Run the step if an approval answers its open request; else open (or renew) the request and wait.

    ``refusals``: the budgets that throttle a step that needs no approval of its own."""
    wanted = consent.digest(step.action, params)
    record = p.status.record(step.stage.value, step.name, attempt)
    waiting = record is not None and record.state == StepState.AWAITING_APPROVAL.value
    request = record.approvalRequest if record is not None and waiting else None
    throttled = _refused(refusals) if refusals else None
    if record is None or request is None or request.digest != wanted:  # none yet, or not for these parameters
        record = _request(p, ctx, step, attempt, params, wanted, record if waiting else None, throttled)
    else:
        approval = consent.answer(ctx.incident.approvals, step.name, attempt, request.nonce)
        if approval is not None:
            return admit(p, ctx, StepCall(step, attempt, params), approval, wanted)
    if throttled is not None:
        _throttled(p, step, throttled, refusals)
    _ignored(p, ctx, step, record)
    return _await_approval(p, ctx, step, record, throttled)


def _released(p: Progress, step: Step, approval: Approval | None, budgeted: bool) -> str | None:
    """End the Throttled condition of a step that may start now, saying why; None if it was not."""
    throttled = p.status.condition(ConditionType.THROTTLED)
    if throttled is None or throttled.status != "True":
        return None
    if approval is not None:
        reason, why = Reason.APPROVED_PAST_BUDGET, f"approved by {approval.by} past the budget"
    else:
        reason = Reason.BUDGET_AVAILABLE
        why = "the budget has room again" if budgeted else "no budget limits it any more"
    p.unthrottled(reason, f"step {step.name!r}: {why}")
    return why


def _round_started(p: Progress, attempt: int) -> bool:
    """Has a remediation step of this round started (so the round's spend is used, for good)?"""
    started = (StepState.RUNNING.value, StepState.SUCCEEDED.value, StepState.FAILED.value)
    return any(r.stage == Stage.REMEDIATE.value and r.attempt == attempt and r.state in started for r in p.status.steps)


def _answered(p: Progress, ctx: Context, call: StepCall) -> tuple[Approval | None, str | None]:
    """The approval that answers the step's open request for exactly these parameters, if any."""
    record = p.status.record(call.step.stage.value, call.step.name, call.attempt)
    if record is None or record.state != StepState.AWAITING_APPROVAL.value or record.approvalRequest is None:
        return None, None
    digest = consent.digest(call.step.action, call.params)
    if record.approvalRequest.digest != digest:
        return None, None
    approval = consent.answer(ctx.incident.approvals, call.step.name, call.attempt, record.approvalRequest.nonce)
    return (approval, digest) if approval is not None else (None, None)


def _refused(refusals: Sequence[Refusal]) -> str:
    return "; ".join(r.text() for r in refusals)


def _throttled(p: Progress, step: Step, why: str, refusals: Sequence[Refusal]) -> None:
    """Say (once per change) which budget holds the step and when it frees up; wake then."""
    current = p.status.condition(ConditionType.THROTTLED)
    message = f"step {step.name!r} waits: {why}"
    if current is None or current.status != "True" or current.message != message:
        p.condition(ConditionType.THROTTLED, True, Reason.THROTTLED, message)
        p.condition(ConditionType.RESOLVED, False, Reason.THROTTLED, message)
        if current is None or current.status != "True":
            p.emit(WARNING, Reason.THROTTLED, message)
    frees = [r.frees_at for r in refusals if r.frees_at is not None]
    if frees:
        p.wake.append(min(frees))


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
    throttled: str | None = None,
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
    elif throttled is not None:
        p.enter(
            Phase.AWAITING_APPROVAL,
            Reason.THROTTLED,
            f"step {step.name!r} ({step.action}) is throttled: {throttled}. It starts when the budget frees "
            f"up, or when approved past it for round {attempt} (parameters {digest[:19]}): {how}",
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


def _await_approval(
    p: Progress, ctx: Context, step: Step, record: StepRecord, throttled: str | None = None
) -> StepRecord:
    """Wait for an approval (or, throttled, for the budget) until the approval timeout, then escalate."""
    assert record.startedAt is not None
    severity = p.status.severity or DEFAULT_SEVERITY
    limit = ctx.policy.approval_timeout if ctx.policy and ctx.policy.approval_timeout else RESPONSE_TIME[severity]
    deadline = parse_timestamp(record.startedAt) + timedelta(seconds=limit)
    if p.now >= deadline:
        failed = evolve(
            record, state=StepState.FAILED.value, finishedAt=timestamp(p.now), message="no approval in time"
        )
        p.status = p.status.with_record(failed)
        if throttled is not None:
            p.escalate(
                Reason.THROTTLE_TIMEOUT,
                f"step {step.name!r} stayed throttled for {limit:g}s and nobody approved it past the budget: "
                f"{throttled}",
            )
        else:
            p.escalate(Reason.APPROVAL_TIMEOUT, f"step {step.name!r} was not approved within {limit:g}s")
        return failed
    p.wake.append(deadline)
    return record
