"""The incident state machine: diagnose -> remediate -> settle -> verify -> resolve | escalate.

``decide`` reads an Incident, its current status and the policies in its namespace
and returns the next status, the Events to post, and at most one step to run now
(already marked Running in that status). ``complete`` records a step's result.
Both are pure; the engine does the I/O and writes each returned status once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from runbook_operator.domain.matching import Candidate, select_policy
from runbook_operator.domain.model import DEFAULT_SEVERITY, Incident, InvalidPolicy, Policy, Stage, Step
from runbook_operator.domain.status import (
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

NORMAL, WARNING = "Normal", "Warning"
OUTPUT_LIMIT = 2048


@dataclass(frozen=True)
class Event:
    type: str
    reason: str
    message: str


@dataclass(frozen=True)
class StepCall:
    step: Step
    attempt: int
    resumed: bool = False


@dataclass(frozen=True)
class StepResult:
    ok: bool
    message: str
    output: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Decision:
    status: Status
    events: tuple[Event, ...] = ()
    run: StepCall | None = None
    wake_at: datetime | None = None  # nothing to do before then (or before the spec changes)


class _Progress:
    """Accumulates one decision's status changes and Events."""

    def __init__(self, status: Status, now: datetime) -> None:
        self.status, self.now, self.events = status, now, list[Event]()

    def emit(self, type_: str, reason: str, message: str) -> None:
        self.events.append(Event(type_, reason, message))
        self.status = self.status.noted(self.now, reason, message)

    def enter(self, phase: Phase, reason: str, message: str) -> None:
        previous = self.status.phase or Phase.PENDING.value
        self.status = replace(self.status, phase=phase.value, currentStep=None)
        kind = WARNING if phase is Phase.ESCALATED else NORMAL
        self.emit(kind, reason, f"{previous} -> {phase.value}: {message}")

    def condition(self, type_: str, ok: bool, reason: str, message: str) -> None:
        self.status = self.status.with_condition(type_, ok, reason, message, self.now)

    def escalate(self, reason: str, message: str) -> None:
        self.condition(ConditionType.ESCALATED, True, reason, message)
        self.condition(ConditionType.RESOLVED, False, reason, message)
        self.enter(Phase.ESCALATED, reason, message)

    def resolve(self, reason: str, message: str) -> None:
        self.condition(ConditionType.RESOLVED, True, reason, message)
        self.status = replace(self.status, resolvedAt=timestamp(self.now), verifyAfter=None)
        self.enter(Phase.RESOLVED, reason, message)

    def decision(self, run: StepCall | None = None, wake_at: datetime | None = None) -> Decision:
        return Decision(self.status, tuple(self.events), run, wake_at)


def decide(incident: Incident, status: Status, candidates: Sequence[Candidate], now: datetime) -> Decision:
    p = _Progress(replace(status, observedGeneration=incident.generation), now)
    if status.phase == Phase.RESOLVED.value:
        return p.decision()
    if incident.resolved:
        p.resolve(Reason.RESOLVED_EXTERNALLY, "spec.resolved is true; pending work stopped")
        return p.decision()
    if status.phase in (None, Phase.PENDING.value) or _policy_arrived(status, incident, candidates):
        _start(p, incident, candidates)
    if p.status.phase == Phase.ESCALATED.value:
        return p.decision()
    policy = _current_policy(p, candidates)
    if policy is None:
        return p.decision()
    return _advance(p, policy)


def _policy_arrived(status: Status, incident: Incident, candidates: Sequence[Candidate]) -> bool:
    """An incident escalated for want of a usable policy starts over once one exists
    (GitOps applies policies and incidents in any order); only if nothing ran yet."""
    escalated = status.condition(ConditionType.ESCALATED)
    if status.phase != Phase.ESCALATED.value or status.steps or escalated is None:
        return False
    if escalated.reason not in (Reason.NO_MATCHING_POLICY, Reason.INVALID_POLICY):
        return False
    return isinstance(select_policy(incident, candidates).chosen, Policy)


def _start(p: _Progress, incident: Incident, candidates: Sequence[Candidate]) -> None:
    selection = select_policy(incident, candidates)
    chosen = selection.chosen
    p.status = replace(
        p.status,
        startedAt=timestamp(p.now),
        severity=incident.severity or (chosen.severity if isinstance(chosen, Policy) else None) or DEFAULT_SEVERITY,
    )
    if chosen is None:
        p.escalate(Reason.NO_MATCHING_POLICY, selection.reason)
        return
    p.status = replace(p.status, policy=chosen.name, policyGeneration=chosen.generation)
    if isinstance(chosen, InvalidPolicy):
        p.escalate(Reason.INVALID_POLICY, f"policy {chosen.name!r} is invalid: {chosen.error}")
        return
    if p.status.condition(ConditionType.ESCALATED):
        p.condition(ConditionType.ESCALATED, False, Reason.POLICY_MATCHED, f"policy {chosen.name!r} now handles it")
    p.condition(ConditionType.RESOLVED, False, Reason.IN_PROGRESS, f"handled by policy {chosen.name!r}")
    p.enter(Phase.DIAGNOSING, Reason.POLICY_MATCHED, f"policy {chosen.name!r} {selection.reason}")


def _current_policy(p: _Progress, candidates: Sequence[Candidate]) -> Policy | None:
    """The incident keeps the policy it started with; its latest generation applies."""
    found = next((c for c in candidates if c.name == p.status.policy), None)
    if isinstance(found, Policy):
        p.status = replace(p.status, policyGeneration=found.generation)
        return found
    if found is None:
        p.escalate(Reason.INVALID_POLICY, f"policy {p.status.policy!r} was deleted while the incident was open")
    else:
        p.escalate(Reason.INVALID_POLICY, f"policy {found.name!r} became invalid: {found.error}")
    return None


def _scan(status: Status, policy: Policy, stage: Stage, attempt: int) -> StepCall | StepRecord | None:
    """The next step to run, the failed step that ends this stage, or None when it is done."""
    for step in policy.steps(stage):
        record = status.record(stage.value, step.name, attempt)
        if record is None or record.state == StepState.PENDING.value:
            return StepCall(step, attempt)
        if record.state == StepState.RUNNING.value:
            return StepCall(step, attempt, resumed=True)
        if record.state == StepState.FAILED.value and stage is not Stage.DIAGNOSE and not step.continue_on_failure:
            return record
    return None


def _run(p: _Progress, call: StepCall) -> Decision:
    step = call.step
    if call.resumed:
        p.emit(
            WARNING, Reason.STEP_RESUMED, f"step {step.name!r} was running when the operator stopped; running it again"
        )
    previous = p.status.record(step.stage.value, step.name, call.attempt)
    started = previous.startedAt if previous and previous.startedAt else timestamp(p.now)
    record = StepRecord(step.name, step.stage.value, step.action, call.attempt, StepState.RUNNING.value, started)
    p.status = replace(p.status.with_record(record), currentStep=step.name)
    return p.decision(run=call)


def _advance(p: _Progress, policy: Policy) -> Decision:
    if p.status.phase == Phase.DIAGNOSING.value:
        found = _scan(p.status, policy, Stage.DIAGNOSE, 1)
        if isinstance(found, StepCall):
            return _run(p, found)
        count = len(policy.diagnose)
        p.condition(ConditionType.DIAGNOSED, True, Reason.DIAGNOSIS_COMPLETE, f"{count} diagnosis step(s) ran")
        p.status = replace(p.status, attempts=1)
        p.enter(Phase.REMEDIATING, Reason.DIAGNOSIS_COMPLETE, f"attempt 1 of {policy.max_attempts}")
    while True:
        attempt = p.status.attempts
        if p.status.phase == Phase.REMEDIATING.value:
            found = _scan(p.status, policy, Stage.REMEDIATE, attempt)
            if isinstance(found, StepCall):
                return _run(p, found)
            if isinstance(found, StepRecord):
                _round_failed(p, policy, Reason.REMEDIATION_FAILED, f"step {found.name!r} failed: {found.message}")
                continue
            p.condition(ConditionType.REMEDIATED, True, Reason.REMEDIATION_APPLIED, f"attempt {attempt}")
            settle_until = p.now + timedelta(seconds=policy.settle)
            p.status = replace(p.status, verifyAfter=timestamp(settle_until))
            p.enter(
                Phase.VERIFYING, Reason.REMEDIATION_APPLIED, f"attempt {attempt}; verifying after {policy.settle:g}s"
            )
        if p.status.phase != Phase.VERIFYING.value:
            return p.decision()
        if p.status.verifyAfter and p.now < parse_timestamp(p.status.verifyAfter):
            return p.decision(wake_at=parse_timestamp(p.status.verifyAfter))
        found = _scan(p.status, policy, Stage.VERIFY, attempt)
        if isinstance(found, StepCall):
            return _run(p, found)
        if isinstance(found, StepRecord):
            _round_failed(p, policy, Reason.VERIFICATION_FAILED, f"step {found.name!r} failed: {found.message}")
            continue
        if policy.verify:
            p.resolve(Reason.VERIFIED, f"{len(policy.verify)} verification step(s) passed on attempt {attempt}")
        else:
            p.resolve(
                Reason.NO_VERIFICATION, f"remediation applied on attempt {attempt}; the policy has no verify steps"
            )
        return p.decision()


def _round_failed(p: _Progress, policy: Policy, reason: str, message: str) -> None:
    attempt = p.status.attempts
    p.condition(ConditionType.REMEDIATED, False, reason, f"attempt {attempt}: {message}")
    if attempt >= policy.max_attempts:
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


def complete(status: Status, call: StepCall, result: StepResult, now: datetime) -> tuple[Status, tuple[Event, ...]]:
    """Record a finished step: its state, message, output and, for diagnosis, a finding."""
    p = _Progress(status, now)
    step = call.step
    previous = status.record(step.stage.value, step.name, call.attempt)
    state = StepState.SUCCEEDED if result.ok else StepState.FAILED
    record = StepRecord(
        name=step.name,
        stage=step.stage.value,
        action=step.action,
        attempt=call.attempt,
        state=state.value,
        startedAt=previous.startedAt if previous else timestamp(now),
        finishedAt=timestamp(now),
        message=result.message,
        output=_bounded(result.output),
    )
    p.status = replace(p.status.with_record(record), currentStep=None)
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
