"""``decide``: from an Incident, its status, its namespace's policies, its peers on the same
target and the budgets, the next status, its Events, and at most one step to run now (or the
budgets to reserve it in first); before the stages, the prelude (resolved, walls,
acknowledgement, suspension, duplicates, matching a policy)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from runbook_operator.domain.budgets import Budget, applicable
from runbook_operator.domain.evolve import evolve
from runbook_operator.domain.lifecycle.stages import Peer, advance
from runbook_operator.domain.lifecycle.steps import announcements, escalation_notify
from runbook_operator.domain.matching import Candidate, named, select_policy
from runbook_operator.domain.model import ACKNOWLEDGED, DEFAULT_SEVERITY, RESPONSE_TIME, Incident, InvalidPolicy, Policy
from runbook_operator.domain.progress import NORMAL, Context, Decision, Progress
from runbook_operator.domain.status import ConditionType, Phase, Reason, Status, timestamp


def decide(
    incident: Incident,
    status: Status,
    candidates: Sequence[Candidate],
    now: datetime,
    peers: Sequence[Peer] = (),
    *,
    nonce: str,
    budgets: Sequence[Budget] = (),
    defaults: Sequence[Budget] = (),
) -> Decision:
    """``nonce``: a fresh random value, used only if this decision opens an approval request.
    ``budgets``: the RemediationBudgets of the incident's namespace, with their ledgers;
    ``defaults``: the operator-wide budgets, which apply where none of those selects the incident."""
    seen = (
        status
        if status.observedGeneration == incident.generation
        else evolve(status, observedGeneration=incident.generation)
    )
    p = Progress(seen, now, nonce)
    p.announcer = policy_named(p, incident, candidates)
    decision = _decide(p, incident, status, candidates, peers, (budgets, defaults))
    if decision.run is not None or decision.reserve is not None:
        return decision
    call = announcements(p, Context(incident, p.announcer))  # what was announced with nothing else to do
    if call is None and p.status.phase in (Phase.RESOLVED, Phase.ESCALATED):
        # it ended: Alertmanager speaks of the alert again (an escalation's page is never silenced)
        return p.decision(wake_at=decision.wake_at, expire=p.status.open_silences(now))
    return p.decision(run=call, wake_at=decision.wake_at)


def _decide(
    p: Progress,
    incident: Incident,
    status: Status,
    candidates: Sequence[Candidate],
    peers: Sequence[Peer],
    budgets: tuple[Sequence[Budget], Sequence[Budget]],
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
            p.status = evolve(p.status, duplicateOf=duplicate, startedAt=p.status.startedAt or timestamp(p.now))
            p.resolve(
                Reason.DUPLICATE,
                f"incident {duplicate!r} is already open for alert {incident.alert!r} on {incident.target}",
            )
            return p.decision()
        if not _start(p, incident, candidates):
            return p.decision()
        if acknowledged and not any(a.phase == ACKNOWLEDGED for a in p.status.announcements):
            _announce_acknowledgement(p, incident)  # acknowledged before any policy could announce it
    if p.status.phase != Phase.ESCALATED:
        policy = _current_policy(p, incident, candidates)
    else:
        policy = policy_named(p, incident, candidates)
    ctx = Context(incident, policy)
    if policy is not None and (budgets[0] or budgets[1]):
        ctx = evolve(ctx, budgets=applicable(*budgets, policy, incident, p.status.severity or DEFAULT_SEVERITY))
    notify = escalation_notify(p, ctx)
    if notify is not None:
        return p.decision(run=notify)
    if policy is None or p.status.phase == Phase.ESCALATED:
        return p.decision()
    decision = advance(p, ctx, policy, peers)
    if decision.status.phase != Phase.ESCALATED:
        return decision
    return p.decision(run=escalation_notify(p, ctx))  # it just escalated: the first level fires now


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
        p.status = evolve(p.status, startedAt=timestamp(p.now))
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
    p.status = evolve(p.status, acknowledgedAt=timestamp(p.now))
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
        p.status = evolve(p.status, startedAt=timestamp(p.now), responseDeadline=timestamp(deadline))
    if chosen is None:
        p.escalate(Reason.NO_MATCHING_POLICY, selection.reason)
        return True
    p.status = evolve(p.status, policy=chosen.name, policyGeneration=chosen.generation)
    if isinstance(chosen, InvalidPolicy):
        p.escalate(Reason.INVALID_POLICY, f"policy {chosen.name!r} is invalid: {chosen.error}")
        return True
    if chosen.suspend:
        p.status = evolve(p.status, phase=Phase.PENDING)
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
    p.status = evolve(p.status, severity=severity)
    if policy is not None:
        p.announcer = policy
        p.status = evolve(p.status, policy=policy.name, policyGeneration=policy.generation)
    return severity


def policy_named(p: Progress, incident: Incident, candidates: Sequence[Candidate]) -> Policy | None:
    found = named(candidates, incident.namespace, p.status.policy)
    return found if isinstance(found, Policy) else None


def _current_policy(p: Progress, incident: Incident, candidates: Sequence[Candidate]) -> Policy | None:
    """The incident keeps the policy it started with; its latest generation applies from the next step on."""
    found = named(candidates, incident.namespace, p.status.policy)
    if isinstance(found, Policy):
        if p.status.policyGeneration != found.generation:
            p.status = evolve(p.status, policyGeneration=found.generation)
        return found
    if found is None:
        p.escalate(Reason.INVALID_POLICY, f"policy {p.status.policy!r} was deleted while the incident was open")
    else:
        p.escalate(Reason.INVALID_POLICY, f"policy {found.name!r} became invalid: {found.error}")
    return None
