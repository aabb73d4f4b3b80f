"""Escalation, decided purely: levels fire once each at their time (or on escalating), their
notify steps run once each, periodic updates go out while the incident stays escalated,
and a missed response deadline is said once.

The state machine (``lifecycle``) calls ``escalation`` on every decision and passes it
``notify``, its step scan: it runs (or resumes, or skips) the notify steps of one level
or update, keyed by the attempt (level n: n; update k: ``update_attempt(k)``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

from runbook_operator.domain.evolve import evolve
from runbook_operator.domain.model import DEFAULT_SEVERITY, Escalation, Level, Step
from runbook_operator.domain.progress import NORMAL, WARNING, Context, Progress, StepCall
from runbook_operator.domain.status import ConditionType, Phase, Reason, parse_timestamp, timestamp, update_attempt

Notify = Callable[[Sequence[Step], int], StepCall | None]  # (a level's or update's notify steps, attempt)


def escalation(p: Progress, ctx: Context, notify: Notify) -> StepCall | None:
    """Fire due levels (once each), run their notify steps (once each), send periodic updates."""
    if p.status.phase == Phase.RESOLVED or not p.status.startedAt:
        return None
    known = len(p.wake)
    call = _escalate(p, ctx, notify)
    upcoming = p.wake[known:]
    next_at = timestamp(min(upcoming)) if upcoming else None
    if p.status.escalation.nextAt != next_at:
        p.status = evolve(p.status, escalation=evolve(p.status.escalation, nextAt=next_at))
    return call


def _escalate(p: Progress, ctx: Context, notify: Notify) -> StepCall | None:
    assert p.status.startedAt is not None
    severity = p.status.severity or DEFAULT_SEVERITY
    plan = ctx.escalation(severity)
    started = parse_timestamp(p.status.startedAt)
    _overdue(p)
    for number, level in enumerate(plan.levels, start=1):
        due = _level_due(p, level, started)
        if due is None:
            continue
        if level.name not in p.status.escalation.fired:
            if due > p.now:
                p.wake.append(due)
                break
            _fire(p, level, number)
        call = notify(level.notify, number)
        if call is not None:
            return call
    return _update(p, plan, notify)


def _overdue(p: Progress) -> None:
    deadline = p.status.responseDeadline
    if not deadline or p.status.acknowledgedAt or p.status.escalation.overdueNoted:
        return
    if p.now < parse_timestamp(deadline):
        p.wake.append(parse_timestamp(deadline))
        return
    p.status = evolve(p.status, escalation=evolve(p.status.escalation, overdueNoted=True))
    p.emit(
        WARNING, Reason.RESPONSE_OVERDUE, f"no acknowledgement by the {p.status.severity} response deadline {deadline}"
    )


def _level_due(p: Progress, level: Level, started: datetime) -> datetime | None:
    """When the level fires: at escalation, or after its time unresolved; None: not (yet) applicable."""
    if level.after is None:
        return p.now if p.status.phase == Phase.ESCALATED else None
    return started + timedelta(seconds=level.after)


def _fire(p: Progress, level: Level, number: int) -> None:
    state = p.status.escalation
    p.status = evolve(
        p.status,
        escalation=evolve(state, level=level.name, notifiedAt=timestamp(p.now), fired=(*state.fired, level.name)),
    )
    targets = ", ".join(s.name for s in level.notify) or "no notify steps"
    p.emit(WARNING, Reason.ESCALATION, f"escalation level {number} {level.name!r} reached ({targets})")


def _update(p: Progress, plan: Escalation, notify: Notify) -> StepCall | None:
    state = p.status.escalation
    if plan.update_every is None or not state.fired or p.status.phase != Phase.ESCALATED:
        return None
    last = parse_timestamp(state.lastUpdateAt or state.notifiedAt or timestamp(p.now))
    due = last + timedelta(seconds=plan.update_every)
    level = next(lv for lv in plan.levels if lv.name == state.level) if state.level else None
    if state.updates and level is not None:  # finish the notify steps of the update in progress
        call = notify(level.notify, update_attempt(state.updates))
        if call is not None:
            return call
    if p.now < due:
        p.wake.append(due)
        return None
    number = state.updates + 1
    p.status = evolve(p.status, escalation=evolve(state, updates=number, lastUpdateAt=timestamp(p.now)))
    escalated = p.status.condition(ConditionType.ESCALATED)
    why = escalated.message if escalated else ""
    p.emit(NORMAL, Reason.ESCALATION_UPDATE, f"update {number}: still unresolved ({why})")
    p.wake.append(p.now + timedelta(seconds=plan.update_every))
    return notify(level.notify, update_attempt(number)) if level else None
