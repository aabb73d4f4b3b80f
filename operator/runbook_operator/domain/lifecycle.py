"""The incident state machine: diagnose -> remediate -> settle -> verify -> resolve | escalate.

``decide`` reads an Incident, its current status, the policies in its namespace and
the other incidents on the same target, and returns the next status, the Events to
post, and at most one step to run now (already marked Running in that status), or
when to look again. ``complete`` records a step's result. Both are pure; the engine
does the I/O and writes each returned status once.

Rules users rely on, all decided here:
- a step left Running by a dead operator runs again only if ``rerun_safe``;
  a destructive step or a notification is marked Skipped (outcome unknown) and the
  verification that follows decides whether the incident is fixed;
- a step that needs approval opens a request (round, rendered parameters, digest,
  nonce) and waits in AwaitingApproval until an approval names that step, round and
  nonce (``domain.consent``), or escalates with ApprovalTimeout; new parameters or a
  new round ask again, and a resumed approved step whose parameters changed asks again;
- in a dry run only read-only actions run; the rest are recorded as what would run;
- one remediation at a time per target, and a cooldown per target across incidents,
  both (and duplicates) among the incidents of one namespace only: namespaces are walls,
  and an incident whose target is in another namespace runs nothing;
- each escalation level fires once, its notify steps run once;
- each status change a policy announces (a phase entered, the first acknowledgement) is
  queued in status and its notify steps run once, before the incident's next step: a
  restart never announces a change twice (an interrupted announcement is not sent again).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from runbook_operator.domain import consent, escalation, expressions
from runbook_operator.domain.consent import Approval
from runbook_operator.domain.matching import Candidate, select_policy
from runbook_operator.domain.model import (
    ACKNOWLEDGED,
    DEFAULT_SEVERITY,
    RESPONSE_TIME,
    Incident,
    InvalidPolicy,
    Policy,
    Stage,
    Step,
)
from runbook_operator.domain.progress import NORMAL, WARNING, Context, Progress
from runbook_operator.domain.progress import Decision as Decision
from runbook_operator.domain.progress import Event as Event
from runbook_operator.domain.progress import StepCall as StepCall
from runbook_operator.domain.results import StepResult
from runbook_operator.domain.status import (
    ApprovalRequest,
    ConditionType,
    Finding,
    Phase,
    Reason,
    Status,
    StepRecord,
    StepState,
    parse_timestamp,
    timestamp,
)
from runbook_operator.domain.wire import clipped

OUTPUT_LIMIT = 2048
_STAGE_PHASE = {
    Stage.DIAGNOSE.value: Phase.DIAGNOSING,
    Stage.REMEDIATE.value: Phase.REMEDIATING,
    Stage.VERIFY.value: Phase.VERIFYING,
}


def holds_target(status: Status) -> bool:
    """Has this incident's current round begun remediating (so it holds its target until it ends)?"""
    if status.phase in (Phase.VERIFYING, Phase.AWAITING_APPROVAL):
        return True
    started = any(s.stage == Stage.REMEDIATE.value and s.attempt == status.attempts for s in status.steps)
    return status.phase == Phase.REMEDIATING and started


@dataclass(frozen=True)
class Peer:
    """Another incident on the same target, as the engine last saw it."""

    namespace: str  # the incident's own: only peers of the same namespace count
    name: str
    alert: str
    created: str
    phase: Phase | None
    remediating: bool
    last_remediated: datetime | None

    @classmethod
    def of(cls, incident: Incident, status: Status) -> Peer:
        finished = [s.finishedAt for s in status.steps if s.stage == Stage.REMEDIATE.value and s.finishedAt]
        return cls(
            namespace=incident.namespace,
            name=incident.name,
            alert=incident.alert,
            created=incident.created,
            phase=status.phase,
            remediating=holds_target(status),
            last_remediated=parse_timestamp(max(finished)) if finished else None,
        )


def decide(
    incident: Incident,
    status: Status,
    candidates: Sequence[Candidate],
    now: datetime,
    peers: Sequence[Peer] = (),
    *,
    nonce: str,
) -> Decision:
    """``nonce``: a fresh random value, used only if this decision opens an approval request."""
    p = Progress(replace(status, observedGeneration=incident.generation), now, nonce)
    p.announcer = _policy_named(p, candidates)
    decision = _decide(p, incident, status, candidates, peers)
    if decision.run is not None:
        return decision
    call = _announcements(p, Context(incident, p.announcer))  # what was announced with nothing else to do
    return p.decision(run=call, wake_at=decision.wake_at)


def _decide(
    p: Progress, incident: Incident, status: Status, candidates: Sequence[Candidate], peers: Sequence[Peer]
) -> Decision:
    if status.phase == Phase.RESOLVED:
        return p.decision()
    if incident.resolved:
        p.resolve(Reason.RESOLVED_EXTERNALLY, "spec.resolved is true; pending work stopped")
        return p.decision()
    if _target_elsewhere(p, incident):
        return p.decision()
    peers = [peer for peer in peers if peer.namespace == incident.namespace]  # a decoy elsewhere holds nothing here
    acknowledged = _acknowledge(p, incident)
    if not _suspension(p, incident):
        return p.decision()
    if status.phase in (None, Phase.PENDING) or _policy_arrived(status, incident, candidates):
        duplicate = _duplicate_of(incident, peers)
        if duplicate is not None:
            _matched(p, incident, select_policy(incident, candidates).chosen)  # whose announcements say so
            p.status = replace(p.status, duplicateOf=duplicate, startedAt=p.status.startedAt or timestamp(p.now))
            p.resolve(
                Reason.DUPLICATE,
                f"incident {duplicate!r} is already open for alert {incident.alert!r} on {incident.target}",
            )
            return p.decision()
        if not _start(p, incident, candidates):
            return p.decision()
        if acknowledged and not any(a.phase == ACKNOWLEDGED for a in p.status.announcements):
            _announce_acknowledgement(p, incident)  # acknowledged before any policy could announce it
    policy = _current_policy(p, candidates) if p.status.phase != Phase.ESCALATED else _policy_named(p, candidates)
    ctx = Context(incident, policy)
    notify = _escalation(p, ctx)
    if notify is not None:
        return p.decision(run=notify)
    if policy is None or p.status.phase == Phase.ESCALATED:
        return p.decision()
    decision = _advance(p, ctx, policy, peers)
    if decision.status.phase != Phase.ESCALATED:
        return decision
    return p.decision(run=_escalation(p, ctx))  # it just escalated: the first level fires now


# -- prelude -----------------------------------------------------------------------


def _target_elsewhere(p: Progress, incident: Incident) -> bool:
    """True (and escalated, once) when spec.target names another namespace: an Incident is about
    its own namespace. The API server refuses such an Incident when crds/'s incident-scope
    admission policy is installed; without it, this is the wall."""
    target = incident.target
    if target is None or target.namespace == incident.namespace:
        return False
    escalated = p.status.condition(ConditionType.ESCALATED)
    if p.status.phase == Phase.ESCALATED and escalated and escalated.reason == Reason.TARGET_OUTSIDE_NAMESPACE:
        return True
    if not p.status.startedAt:
        p.status = replace(p.status, startedAt=timestamp(p.now))
    p.escalate(
        Reason.TARGET_OUTSIDE_NAMESPACE,
        f"spec.target.namespace {target.namespace!r} is not the incident's namespace {incident.namespace!r}; "
        "nothing runs: an Incident may only be about its own namespace. Create it in that namespace, "
        "or leave spec.target.namespace out",
    )
    return True


def _acknowledge(p: Progress, incident: Incident) -> bool:
    """Note the first acknowledgement (and announce it, if the policy is known yet); True if it came now."""
    if not incident.acknowledged_by or p.status.acknowledgedAt:
        return False
    p.status = replace(p.status, acknowledgedAt=timestamp(p.now))
    p.condition(ConditionType.ACKNOWLEDGED, True, Reason.ACKNOWLEDGED, f"acknowledged by {incident.acknowledged_by}")
    p.emit(NORMAL, Reason.ACKNOWLEDGED, f"acknowledged by {incident.acknowledged_by}")
    _announce_acknowledgement(p, incident)
    return True


def _announce_acknowledgement(p: Progress, incident: Incident) -> None:
    p.announce(ACKNOWLEDGED, Reason.ACKNOWLEDGED, f"acknowledged by {incident.acknowledged_by}")


def _suspension(p: Progress, incident: Incident) -> bool:
    """False while spec.suspend holds: nothing runs, nothing escalates."""
    current = p.status.condition(ConditionType.SUSPENDED)
    if incident.suspend:
        if current is None or current.status != "True":
            p.condition(ConditionType.SUSPENDED, True, Reason.SUSPENDED, "spec.suspend is true")
            p.emit(NORMAL, Reason.SUSPENDED, "suspended: no step runs until spec.suspend is false")
        return False
    if current is not None and current.status == "True":
        p.condition(ConditionType.SUSPENDED, False, Reason.RESUMED, "spec.suspend is false")
        p.emit(NORMAL, Reason.RESUMED, "resumed")
    return True


def _duplicate_of(incident: Incident, peers: Sequence[Peer]) -> str | None:
    if incident.target is None:
        return None
    me = (incident.created, incident.name)
    # An open peer that already started came first; between two new ones, creation time
    # (to the second) and then the name decide, the same way for both.
    first = [
        peer
        for peer in peers
        if peer.alert == incident.alert
        and peer.phase != Phase.RESOLVED
        and (peer.phase is not None or (peer.created, peer.name) < me)
    ]
    return min(first, key=lambda peer: (peer.phase is None, peer.created, peer.name)).name if first else None


def _policy_arrived(status: Status, incident: Incident, candidates: Sequence[Candidate]) -> bool:
    """An incident escalated for want of a usable policy starts over once one exists
    (GitOps applies policies and incidents in any order); only if nothing ran yet."""
    escalated = status.condition(ConditionType.ESCALATED)
    if status.phase != Phase.ESCALATED or status.steps or escalated is None:
        return False
    if escalated.reason not in (Reason.NO_MATCHING_POLICY, Reason.INVALID_POLICY):
        return False
    return isinstance(select_policy(incident, candidates).chosen, Policy)


def _start(p: Progress, incident: Incident, candidates: Sequence[Candidate]) -> bool:
    """Match a policy and begin; False when the incident must wait (its policy is suspended)."""
    selection = select_policy(incident, candidates)
    chosen = selection.chosen
    severity = _matched(p, incident, chosen)
    if not p.status.startedAt:
        deadline = p.now + timedelta(seconds=RESPONSE_TIME[severity])
        p.status = replace(p.status, startedAt=timestamp(p.now), responseDeadline=timestamp(deadline))
    if chosen is None:
        p.escalate(Reason.NO_MATCHING_POLICY, selection.reason)
        return True
    p.status = replace(p.status, policy=chosen.name, policyGeneration=chosen.generation)
    if isinstance(chosen, InvalidPolicy):
        p.escalate(Reason.INVALID_POLICY, f"policy {chosen.name!r} is invalid: {chosen.error}")
        return True
    if chosen.suspend:
        p.status = replace(p.status, phase=Phase.PENDING)
        p.wait(Reason.POLICY_SUSPENDED, f"policy {chosen.name!r} is suspended; waiting")
        return False
    if p.status.condition(ConditionType.ESCALATED):
        p.condition(ConditionType.ESCALATED, False, Reason.POLICY_MATCHED, f"policy {chosen.name!r} now handles it")
    p.condition(ConditionType.RESOLVED, False, Reason.IN_PROGRESS, f"handled by policy {chosen.name!r}")
    p.enter(Phase.DIAGNOSING, Reason.POLICY_MATCHED, f"policy {chosen.name!r} {selection.reason}")
    return True


def _matched(p: Progress, incident: Incident, chosen: Candidate | None) -> str:
    """Note the effective severity, and the chosen policy as the one that announces; the severity."""
    policy = chosen if isinstance(chosen, Policy) else None
    severity = incident.severity or (policy.severity if policy else None) or DEFAULT_SEVERITY
    p.status = replace(p.status, severity=severity)
    if policy is not None:
        p.announcer = policy
        p.status = replace(p.status, policy=policy.name, policyGeneration=policy.generation)
    return severity


def _policy_named(p: Progress, candidates: Sequence[Candidate]) -> Policy | None:
    found = next((c for c in candidates if c.name == p.status.policy), None)
    return found if isinstance(found, Policy) else None


def _current_policy(p: Progress, candidates: Sequence[Candidate]) -> Policy | None:
    """The incident keeps the policy it started with; its latest generation applies from the next step on."""
    found = next((c for c in candidates if c.name == p.status.policy), None)
    if isinstance(found, Policy):
        p.status = replace(p.status, policyGeneration=found.generation)
        return found
    if found is None:
        p.escalate(Reason.INVALID_POLICY, f"policy {p.status.policy!r} was deleted while the incident was open")
    else:
        p.escalate(Reason.INVALID_POLICY, f"policy {found.name!r} became invalid: {found.error}")
    return None


# -- running steps -----------------------------------------------------------------


def _scan(p: Progress, ctx: Context, steps: Sequence[Step], stage: Stage, attempt: int) -> StepCall | StepRecord | None:
    """The next step to run, the failed step that ends this stage, or None when it is done.

    Steps that are skipped (``when`` false, dry run, interrupted) are recorded here, so
    the scan goes on past them."""
    for step in steps:
        record = p.status.record(stage.value, step.name, attempt)
        if record is not None and record.state == StepState.RUNNING.value and not step.rerun_safe:
            kind = "destructive step" if step.destructive else "notification"
            _skip(
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
        if record is not None and record.state == StepState.RUNNING.value:
            params = _render(ctx, p.status, step)
            digest = consent.digest(step.action, params)
            if record.approvedDigest and digest != record.approvedDigest:
                return _consent(p, ctx, step, attempt, params)  # changed since approved: ask again
            if step.requires_approval and not step.notifies and not _approval_holds(ctx, step, record, digest):
                p.emit(
                    WARNING,
                    Reason.APPROVAL_MISSING,
                    f"step {step.name!r} is recorded Running but no approval answers it (its round, nonce and "
                    "parameters): not run; it asks for approval",
                )
                return _consent(p, ctx, step, attempt, params)
            return StepCall(step, attempt, params, resumed=True)
        if record is None or record.state in (StepState.PENDING.value, StepState.AWAITING_APPROVAL.value):
            announcing = _announcements(p, ctx) if stage is not Stage.ANNOUNCE else None
            if announcing is not None:  # a status change is told before the next step
                return announcing
            outcome = _prepare(p, ctx, step, attempt)
            if outcome is None:
                continue
            return outcome
        if (
            record.state == StepState.FAILED.value
            and stage in (Stage.REMEDIATE, Stage.VERIFY)
            and not step.continue_on_failure
        ):
            return record
    return None


def _prepare(p: Progress, ctx: Context, step: Step, attempt: int) -> StepCall | StepRecord | None:
    """Decide about a step that has not run: skip it (None), hold it, fail it, or run it."""
    variables = ctx.variables(p.status)
    if step.when is not None:
        try:
            run = step.when.evaluate(variables)
        except ValueError as err:
            _skip(p, step, attempt, str(err))
            return None
        if not run:
            _skip(p, step, attempt, f"when {step.when.source!r} is false")
            return None
    try:
        params = expressions.render(step.params, variables, step.languages)
    except ValueError as err:
        return _settle_unrun(p, step, attempt, StepState.FAILED, f"cannot render parameters: {err}")
    announced = step.stage is Stage.ANNOUNCE and ctx.policy is not None and ctx.policy.announces_in_dry_run(step)
    if ctx.dry_run and not step.read_only and not announced:
        _skip(p, step, attempt, f"dry run: would run {step.action} with {_compact(params)}")
        return None
    if step.requires_approval and not step.notifies:
        return _consent(p, ctx, step, attempt, params)
    return _run(p, StepCall(step, attempt, params))


def _render(ctx: Context, status: Status, step: Step) -> dict[str, Any]:
    try:
        return expressions.render(step.params, ctx.variables(status), step.languages)
    except ValueError:
        return dict(step.params)  # the executor will report the bad parameters


def _settle_unrun(p: Progress, step: Step, attempt: int, state: StepState, why: str) -> StepRecord:
    """Record a step that ends without running: Skipped (when, dry run, interrupted) or Failed."""
    now = timestamp(p.now)
    record = StepRecord(step.name, step.stage.value, step.action, attempt, state.value, now, now, why)
    p.status = p.status.with_record(record)
    if state is StepState.SKIPPED:
        p.emit(NORMAL, Reason.STEP_SKIPPED, f"{step.stage.value} step {step.name!r} skipped: {why}")
    else:
        p.emit(WARNING, Reason.STEP_FAILED, f"{step.stage.value} step {step.name!r} ({step.action}) failed: {why}")
    return record


def _skip(p: Progress, step: Step, attempt: int, why: str) -> None:
    _settle_unrun(p, step, attempt, StepState.SKIPPED, why)


def _consent(p: Progress, ctx: Context, step: Step, attempt: int, params: dict[str, Any]) -> StepCall | StepRecord:
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
            return _run(p, StepCall(step, attempt, params), approval, wanted)
    _ignored(p, ctx, step, record)
    return _await_approval(p, ctx, step, record)


def _approval_holds(ctx: Context, step: Step, record: StepRecord, digest: str) -> bool:
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
    request = ApprovalRequest(p.nonce, digest, timestamp(p.now), _bounded(params) or {})
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
    p.status = replace(p.status, currentStep=step.name)
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
        failed = replace(
            record, state=StepState.FAILED.value, finishedAt=timestamp(p.now), message="no approval in time"
        )
        p.status = p.status.with_record(failed)
        p.escalate(Reason.APPROVAL_TIMEOUT, f"step {step.name!r} was not approved within {limit:g}s")
        return failed
    p.wake.append(deadline)
    return record


def _run(p: Progress, call: StepCall, approval: Approval | None = None, digest: str | None = None) -> StepCall:
    step = call.step
    previous = p.status.record(step.stage.value, step.name, call.attempt)
    record = StepRecord(
        step.name, step.stage.value, step.action, call.attempt, StepState.RUNNING.value, timestamp(p.now),
        approvalRequest=previous.approvalRequest if previous is not None else None,
    )  # fmt: skip
    if approval is not None:
        record = replace(record, approvedBy=approval.by, approvedAt=timestamp(p.now), approvedDigest=digest)
        p.emit(
            NORMAL,
            Reason.APPROVED,
            f"step {step.name!r} approved by {approval.by} (round {call.attempt}, parameters {(digest or '')[:19]})",
        )
    p.status = replace(p.status.with_record(record), currentStep=step.name)
    if not step.notifies and p.status.phase == Phase.AWAITING_APPROVAL:
        why = f"approved by {approval.by}" if approval is not None else "no longer needs approval (policy edited)"
        p.condition(ConditionType.RESOLVED, False, Reason.IN_PROGRESS, f"step {step.name!r} {why}")
        p.enter(_STAGE_PHASE[step.stage.value], Reason.APPROVED, f"step {step.name!r} {why}")
        p.status = replace(p.status, currentStep=step.name)
    return call


def _resumed(p: Progress, call: StepCall) -> StepCall:
    p.emit(
        WARNING, Reason.STEP_RESUMED, f"step {call.step.name!r} was running when the operator stopped; running it again"
    )
    return call


def _outcome(p: Progress, found: StepCall | StepRecord | None) -> Decision | StepRecord | None:
    if p.status.phase == Phase.ESCALATED:  # e.g. an approval timed out
        return p.decision()
    if isinstance(found, StepCall):
        return p.decision(run=_resumed(p, found) if found.resumed else found)
    if isinstance(found, StepRecord) and found.state == StepState.AWAITING_APPROVAL.value:
        return p.decision()
    return found


# -- the stages ----------------------------------------------------------------------


def _stage_phase(status: Status) -> Phase | None:
    """The stage an AwaitingApproval incident is in, from the step that waits."""
    if status.phase != Phase.AWAITING_APPROVAL:
        return status.phase
    waiting = next((s for s in status.steps if s.state == StepState.AWAITING_APPROVAL.value), None)
    return _STAGE_PHASE[waiting.stage] if waiting else Phase.REMEDIATING


def _advance(p: Progress, ctx: Context, policy: Policy, peers: Sequence[Peer]) -> Decision:
    if _stage_phase(p.status) == Phase.DIAGNOSING:
        out = _outcome(p, _scan(p, ctx, policy.diagnose, Stage.DIAGNOSE, 1))
        if isinstance(out, Decision):
            return out
        count = len(policy.diagnose)
        p.condition(ConditionType.DIAGNOSED, True, Reason.DIAGNOSIS_COMPLETE, f"{count} diagnosis step(s) ran")
        p.status = replace(p.status, attempts=1)
        p.enter(Phase.REMEDIATING, Reason.DIAGNOSIS_COMPLETE, f"attempt 1 of {policy.max_attempts}")
    while True:
        attempt = p.status.attempts
        if _stage_phase(p.status) == Phase.REMEDIATING:
            held = _target_busy(p, ctx, policy, peers, attempt)
            if held is not None:
                return held
            out = _outcome(p, _scan(p, ctx, policy.remediate, Stage.REMEDIATE, attempt))
            if isinstance(out, Decision):
                return out
            if isinstance(out, StepRecord):
                _round_failed(p, ctx, policy, Reason.REMEDIATION_FAILED, f"step {out.name!r} failed: {out.message}")
                continue
            p.condition(ConditionType.REMEDIATED, True, Reason.REMEDIATION_APPLIED, f"attempt {attempt}")
            settle_until = p.now + timedelta(seconds=policy.settle)
            p.status = replace(p.status, verifyAfter=timestamp(settle_until))
            p.enter(
                Phase.VERIFYING, Reason.REMEDIATION_APPLIED, f"attempt {attempt}; verifying after {policy.settle:g}s"
            )
        if _stage_phase(p.status) != Phase.VERIFYING:
            return p.decision()
        if p.status.verifyAfter and p.now < parse_timestamp(p.status.verifyAfter):
            return p.decision(wake_at=parse_timestamp(p.status.verifyAfter))
        out = _outcome(p, _scan(p, ctx, policy.verify, Stage.VERIFY, attempt))
        if isinstance(out, Decision):
            return out
        if isinstance(out, StepRecord):
            _round_failed(p, ctx, policy, Reason.VERIFICATION_FAILED, f"step {out.name!r} failed: {out.message}")
            continue
        if ctx.dry_run and not policy.verify:
            p.escalate(Reason.DRY_RUN, "dry run finished; nothing was changed and nothing verified")
        elif policy.verify:
            p.resolve(Reason.VERIFIED, f"{len(policy.verify)} verification step(s) passed on attempt {attempt}")
        else:
            p.resolve(
                Reason.NO_VERIFICATION, f"remediation applied on attempt {attempt}; the policy has no verify steps"
            )
        return p.decision()


def _target_busy(p: Progress, ctx: Context, policy: Policy, peers: Sequence[Peer], attempt: int) -> Decision | None:
    """Hold a round that has not started while another incident remediates the target or it cools down."""
    target = ctx.incident.target
    if target is None or any(s.stage == Stage.REMEDIATE.value and s.attempt == attempt for s in p.status.steps):
        return None
    holder = next((peer for peer in peers if peer.remediating), None)
    if holder is not None:
        p.wait(Reason.TARGET_LOCKED, f"waiting: incident {holder.name!r} is remediating {target}")
        return p.decision()
    last = max((peer.last_remediated for peer in peers if peer.last_remediated), default=None)
    if policy.cooldown and last is not None and p.now < last + timedelta(seconds=policy.cooldown):
        until = last + timedelta(seconds=policy.cooldown)
        p.wait(
            Reason.COOLDOWN, f"waiting: {target} was remediated at {timestamp(last)}; cooldown until {timestamp(until)}"
        )
        return p.decision(wake_at=until)
    if p.status.waiting:
        p.status = replace(p.status, waiting=None)
    return None


def _round_failed(p: Progress, ctx: Context, policy: Policy, reason: str, message: str) -> None:
    attempt = p.status.attempts
    p.condition(ConditionType.REMEDIATED, False, reason, f"attempt {attempt}: {message}")
    if ctx.dry_run:
        p.escalate(Reason.DRY_RUN, f"dry run finished; nothing was changed; last: {message}")
        return
    escalation = ctx.escalation(p.status.severity or DEFAULT_SEVERITY)
    limit = min(policy.max_attempts, escalation.after_attempts or policy.max_attempts)
    if attempt >= limit:
        p.escalate(
            Reason.REMEDIATION_EXHAUSTED, f"{attempt} of {policy.max_attempts} attempt(s) failed; last: {message}"
        )
        return
    p.status = replace(p.status, attempts=attempt + 1, verifyAfter=None)
    p.enter(
        Phase.REMEDIATING,
        reason,
        f"attempt {attempt} failed ({message}); attempt {attempt + 1} of {policy.max_attempts}",
    )


# -- escalation: decided by domain.escalation; its notify steps run through the scan ---


def _escalation(p: Progress, ctx: Context) -> StepCall | None:
    def notify(steps: Sequence[Step], attempt: int) -> StepCall | None:
        found = _scan(p, ctx, steps, Stage.ESCALATE, attempt)
        # a resumed notification was marked interrupted by _scan, so a call is a new one
        return found if isinstance(found, StepCall) else None

    return escalation.escalation(p, ctx, notify)


# -- announcements: status changes told as they happen, each once -----------------------


def _announcements(p: Progress, ctx: Context) -> StepCall | None:
    """The next notify step of the oldest announcement not yet done; each one done is marked so."""
    while (pending := p.status.announcing()) is not None:
        severity = p.status.severity or DEFAULT_SEVERITY
        steps = p.announcer.announced(pending.phase, severity) if p.announcer is not None else ()
        found = _scan(p, replace(ctx, policy=p.announcer), steps, Stage.ANNOUNCE, pending.number)
        if isinstance(found, StepCall):  # a resumed announcement was marked interrupted by _scan
            return found
        p.status = p.status.with_announcement(replace(pending, done=True))
    return None


# -- results -------------------------------------------------------------------------


def complete(status: Status, call: StepCall, result: StepResult, now: datetime) -> tuple[Status, tuple[Event, ...]]:
    """Record a finished step: its state, message, output and, for diagnosis, a finding."""
    p = Progress(status, now)
    step = call.step
    previous = status.record(step.stage.value, step.name, call.attempt)
    state = StepState.SUCCEEDED if result.ok else StepState.FAILED
    began = previous or StepRecord(step.name, step.stage.value, step.action, call.attempt, state.value, timestamp(now))
    record = replace(
        began, state=state.value, finishedAt=timestamp(now), message=result.message, output=_bounded(result.output)
    )
    p.status = replace(p.status.with_record(record), currentStep=None)
    if result.conversation is not None:
        p.status = p.status.with_conversation(*result.conversation)
    if step.stage is Stage.DIAGNOSE:
        p.status = replace(p.status, findings=(*p.status.findings, Finding(step.name, result.message)))
    reason, kind = (Reason.STEP_SUCCEEDED, NORMAL) if result.ok else (Reason.STEP_FAILED, WARNING)
    p.emit(
        kind, reason, f"{step.stage.value} step {step.name!r} ({step.action}) {state.value.lower()}: {result.message}"
    )
    return p.status, tuple(p.events)


def _bounded(output: Mapping[str, Any]) -> dict[str, Any] | None:
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


def _compact(params: Mapping[str, Any]) -> str:
    return clipped(json.dumps(params, sort_keys=True, default=str), 300)
