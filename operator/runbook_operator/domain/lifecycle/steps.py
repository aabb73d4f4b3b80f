"""Which step runs next in a stage: the scan over a stage's steps, and the notify steps of
escalations and announcements, which run through the same scan (each once; an interrupted
one is not sent again). A status change is told before the incident's next step."""

from __future__ import annotations

from collections.abc import Sequence

from runbook_operator.domain import consent, escalation, expressions
from runbook_operator.domain.evolve import evolve
from runbook_operator.domain.lifecycle.approval import admit, approval_holds, consent_to
from runbook_operator.domain.lifecycle.records import compact, render, resumed, settle_unrun, skip
from runbook_operator.domain.model import DEFAULT_SEVERITY, Stage, Step
from runbook_operator.domain.progress import WARNING, Context, Decision, Progress, Reservation, StepCall
from runbook_operator.domain.status import Phase, Reason, StepRecord, StepState

Found = StepCall | StepRecord | Reservation | None


def scan(p: Progress, ctx: Context, steps: Sequence[Step], stage: Stage, attempt: int) -> Found:
    """The next step to run, the failed step that ends this stage, the budgets to reserve a step in
    first, or None when the stage is done.

    Steps that are skipped (``when`` false, dry run, interrupted) are recorded here, so
    the scan goes on past them."""
    for step in steps:
        record = p.status.record(stage.value, step.name, attempt)
        if record is not None and record.state == StepState.RUNNING and not step.rerun_safe:
            kind = "destructive step" if step.destructive else "notification"
            skip(
                p,
                step,
                attempt,
                f"interrupted: the operator stopped while this {kind} ran; outcome unknown, not run again",
            )
            p.emit(
                WARNING,
                Reason.STEP_INTERRUPTED,
                f"step {step.name!r} was interrupted and is not run again; verification decides",
            )
            continue
        if record is not None and record.state == StepState.RUNNING:
            params = render(ctx, p.status, step)
            digest = consent.digest(step.action, params)
            if record.approvedDigest and digest != record.approvedDigest:
                return consent_to(p, ctx, step, attempt, params)  # changed since approved: ask again
            if step.requires_approval and not step.notifies and not approval_holds(ctx, step, record, digest):
                p.emit(
                    WARNING,
                    Reason.APPROVAL_MISSING,
                    f"step {step.name!r} is recorded Running but no approval answers it (its round, nonce and "
                    "parameters): not run; it asks for approval",
                )
                return consent_to(p, ctx, step, attempt, params)
            return StepCall(step, attempt, params, resumed=True)
        if record is None or record.state in (StepState.PENDING, StepState.AWAITING_APPROVAL):
            announcing = announcements(p, ctx) if stage is not Stage.ANNOUNCE else None
            if announcing is not None:  # a status change is told before the next step
                return announcing
            prepared = _prepare(p, ctx, step, attempt)
            if prepared is None:
                continue
            return prepared
        if (
            record.state == StepState.FAILED
            and stage in (Stage.REMEDIATE, Stage.VERIFY)
            and not step.continue_on_failure
        ):
            return record
    return None


def _prepare(p: Progress, ctx: Context, step: Step, attempt: int) -> Found:
    """Decide about a step that has not run: skip it (None), hold it, fail it, or run it."""
    variables = ctx.variables(p.status)
    if step.when is not None:
        try:
            run = step.when.evaluate(variables)
        except ValueError as err:
            skip(p, step, attempt, str(err))
            return None
        if not run:
            skip(p, step, attempt, f"when {step.when.source!r} is false")
            return None
    try:
        params = expressions.render(step.params, variables, step.languages)
    except ValueError as err:
        return settle_unrun(p, step, attempt, StepState.FAILED, f"cannot render parameters: {err}")
    announced = step.stage is Stage.ANNOUNCE and ctx.policy is not None and ctx.policy.announces_in_dry_run(step)
    if ctx.dry_run and not step.read_only and not announced:
        skip(p, step, attempt, f"dry run: would run {step.action} with {compact(params)}")
        return None
    if step.requires_approval and not step.notifies:
        return consent_to(p, ctx, step, attempt, params)
    return admit(p, ctx, StepCall(step, attempt, params))


def outcome(p: Progress, found: Found) -> Decision | StepRecord | None:
    if p.status.phase == Phase.ESCALATED:  # e.g. an approval timed out
        return p.decision()
    if isinstance(found, StepCall):
        return p.decision(run=resumed(p, found) if found.resumed else found)
    if isinstance(found, Reservation):
        return p.decision(reserve=found)
    if isinstance(found, StepRecord) and found.state == StepState.AWAITING_APPROVAL:
        return p.decision()
    return found


def escalation_notify(p: Progress, ctx: Context) -> StepCall | None:
    def notify(steps: Sequence[Step], attempt: int) -> StepCall | None:
        found = scan(p, ctx, steps, Stage.ESCALATE, attempt)
        # a resumed notification was marked interrupted by scan, so a call is a new one
        return found if isinstance(found, StepCall) else None

    return escalation.escalation(p, ctx, notify)


def announcements(p: Progress, ctx: Context) -> StepCall | None:
    """The next notify step of the oldest announcement not yet done; each one done is marked so."""
    while (pending := p.status.announcing()) is not None:
        severity = p.status.severity or DEFAULT_SEVERITY
        steps = p.announcer.announced(pending.phase, severity) if p.announcer is not None else ()
        found = scan(p, evolve(ctx, policy=p.announcer), steps, Stage.ANNOUNCE, pending.number)
        if isinstance(found, StepCall):  # a resumed announcement was marked interrupted by scan
            return found
        p.status = p.status.with_announcement(evolve(pending, done=True))
    return None
