"""The stages of one policy: diagnose, then rounds of remediate → settle → verify, until resolved or
escalated; one remediation at a time per target, and its cooldown."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from runbook_operator.domain.evolve import evolve
from runbook_operator.domain.lifecycle.records import STAGE_PHASE
from runbook_operator.domain.lifecycle.steps import outcome, scan
from runbook_operator.domain.model import DEFAULT_SEVERITY, Incident, Policy, Stage
from runbook_operator.domain.progress import Context, Decision, Progress
from runbook_operator.domain.status import ConditionType, Phase, Reason, Status, StepRecord, parse_timestamp, timestamp


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


def _stage_phase(status: Status) -> Phase | None:
    """The stage an AwaitingApproval incident is in, from the step that waits."""
    if status.phase != Phase.AWAITING_APPROVAL:
        return status.phase
    waiting = status.awaiting_approval()
    return STAGE_PHASE[waiting.stage] if waiting else Phase.REMEDIATING


def advance(p: Progress, ctx: Context, policy: Policy, peers: Sequence[Peer]) -> Decision:
    if _stage_phase(p.status) == Phase.DIAGNOSING:
        out = outcome(p, scan(p, ctx, policy.diagnose, Stage.DIAGNOSE, 1))
        if isinstance(out, Decision):
            return out
        count = len(policy.diagnose)
        p.condition(ConditionType.DIAGNOSED, True, Reason.DIAGNOSIS_COMPLETE, f"{count} diagnosis step(s) ran")
        p.status = evolve(p.status, attempts=1)
        p.enter(Phase.REMEDIATING, Reason.DIAGNOSIS_COMPLETE, f"attempt 1 of {policy.max_attempts}")
    while True:
        attempt = p.status.attempts
        if _stage_phase(p.status) == Phase.REMEDIATING:
            held = _target_busy(p, ctx, policy, peers, attempt)
            if held is not None:
                return held
            out = outcome(p, scan(p, ctx, policy.remediate, Stage.REMEDIATE, attempt))
            if isinstance(out, Decision):
                return out
            if isinstance(out, StepRecord):
                _round_failed(p, ctx, policy, Reason.REMEDIATION_FAILED, f"step {out.name!r} failed: {out.message}")
                continue
            p.condition(ConditionType.REMEDIATED, True, Reason.REMEDIATION_APPLIED, f"attempt {attempt}")
            settle_until = p.now + timedelta(seconds=policy.settle)
            p.status = evolve(p.status, verifyAfter=timestamp(settle_until))
            p.enter(
                Phase.VERIFYING, Reason.REMEDIATION_APPLIED, f"attempt {attempt}; verifying after {policy.settle:g}s"
            )
        if _stage_phase(p.status) != Phase.VERIFYING:
            return p.decision()
        if p.status.verifyAfter and p.now < parse_timestamp(p.status.verifyAfter):
            return p.decision(wake_at=parse_timestamp(p.status.verifyAfter))
        out = outcome(p, scan(p, ctx, policy.verify, Stage.VERIFY, attempt))
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
        p.status = evolve(p.status, waiting=None)
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
    p.status = evolve(p.status, attempts=attempt + 1, verifyAfter=None)
    p.enter(
        Phase.REMEDIATING,
        reason,
        f"attempt {attempt} failed ({message}); attempt {attempt + 1} of {policy.max_attempts}",
    )
