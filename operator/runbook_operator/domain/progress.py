"""What one decision works on, shared by the state machine (``lifecycle``) and ``escalation``:
the incident and its policy (``Context``), and the status and Events it accumulates (``Progress``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from runbook_operator.domain.budgets import Ask, Budget
from runbook_operator.domain.evolve import evolve
from runbook_operator.domain.model import DEFAULT_SEVERITY, Escalation, Incident, Policy, Step, default_escalation
from runbook_operator.domain.status import Announcement, ConditionType, Phase, Silence, Status, StepState, timestamp
from runbook_operator.domain.wire import clipped

NORMAL, WARNING = "Normal", "Warning"
ANNOUNCED_MESSAGE_LIMIT = 500  # of the transition's message, kept with the announcement
NO_ANNOUNCEMENT = {"phase": "", "number": 0, "at": "", "reason": "", "message": ""}


@dataclass(frozen=True)
class Event:
    type: str
    reason: str
    message: str


@dataclass(frozen=True)
class StepCall:
    step: Step
    attempt: int
    params: Mapping[str, Any] = field(default_factory=dict)  # rendered from the templates
    resumed: bool = False


@dataclass(frozen=True)
class Reservation:
    """Before the step ``ask`` names may start, the engine must write its spend (and hold) into the
    ledgers of these budgets (namespace/name), then decide again. ``approved_by``: a person approved
    it past a budget that has no room; the spend is written anyway, in their name."""

    ask: Ask
    budgets: tuple[str, ...]
    approved_by: str | None = None


@dataclass(frozen=True)
class Decision:
    status: Status
    events: tuple[Event, ...] = ()
    run: StepCall | None = None
    wake_at: datetime | None = None  # nothing to do before then (or before something changes)
    reserve: Reservation | None = None  # write this into the budgets, then decide again
    expire: tuple[Silence, ...] = ()  # the incident ended: expire these silences, then mark them (Status)


@dataclass(frozen=True)
class Context:
    incident: Incident
    policy: Policy | None
    budgets: tuple[Budget, ...] = ()  # the RemediationBudgets that apply to this incident (domain.budgets)

    @property
    def dry_run(self) -> bool:
        return self.incident.dry_run or (self.policy is not None and self.policy.dry_run)

    def escalation(self, severity: str) -> Escalation:
        if self.policy is not None and self.policy.escalation is not None:
            return self.policy.escalation
        return default_escalation(severity)

    def variables(self, status: Status) -> dict[str, Any]:
        steps: dict[str, Any] = {}
        for record in status.steps:  # later records (later attempts) win
            steps[record.name] = {
                "state": record.state,
                "ok": record.state == StepState.SUCCEEDED,
                "message": record.message,
                "output": dict(record.output or {}),
            }
        findings = [{"step": f.step, "message": f.message} for f in status.findings]
        announcing = status.announcing()
        return {
            "incident": self.incident.view(status.severity),
            "steps": steps,
            "findings": findings,
            "announcement": announcement_view(announcing) if announcing else dict(NO_ANNOUNCEMENT),
        }


def announcement_view(announcement: Announcement) -> dict[str, Any]:
    """What templates, `when` and notifications see of an announcement."""
    return {
        "phase": announcement.phase,
        "number": announcement.number,
        "at": announcement.at,
        "reason": announcement.reason,
        "message": announcement.message,
    }


class Progress:
    """Accumulates one decision's status changes and Events."""

    def __init__(self, status: Status, now: datetime, nonce: str = "") -> None:
        self.status, self.now, self.nonce, self.events = status, now, nonce, list[Event]()
        self.wake: list[datetime] = []
        self.announcer: Policy | None = None  # the policy whose announcements status changes go to

    def announce(self, phase: str, reason: str, message: str) -> None:
        """Queue an announcement of this change if the policy announces it (its steps run next)."""
        policy, severity = self.announcer, self.status.severity or DEFAULT_SEVERITY
        if policy is None or not policy.announced(phase, severity):
            return
        number = max((a.number for a in self.status.announcements), default=0) + 1
        text = clipped(message, ANNOUNCED_MESSAGE_LIMIT)
        self.status = self.status.with_announcement(Announcement(number, phase, timestamp(self.now), reason, text))

    def emit(self, type_: str, reason: str, message: str) -> None:
        self.events.append(Event(type_, reason, message))
        self.status = self.status.noted(self.now, reason, message)

    def enter(self, phase: Phase, reason: str, message: str) -> None:
        previous = self.status.phase or Phase.PENDING
        self.status = evolve(self.status, phase=phase, currentStep=None, waiting=None)
        kind = WARNING if phase in (Phase.ESCALATED, Phase.AWAITING_APPROVAL) else NORMAL
        self.emit(kind, reason, f"{previous} -> {phase}: {message}")
        self.announce(str(phase), reason, message)

    def condition(self, type_: str, ok: bool, reason: str, message: str) -> None:
        self.status = self.status.with_condition(type_, ok, reason, message, self.now)

    def escalate(self, reason: str, message: str) -> None:
        self.unthrottled(reason, message)
        self.condition(ConditionType.ESCALATED, True, reason, message)
        self.condition(ConditionType.RESOLVED, False, reason, message)
        self.enter(Phase.ESCALATED, reason, message)

    def resolve(self, reason: str, message: str) -> None:
        self.unthrottled(reason, message)
        self.condition(ConditionType.RESOLVED, True, reason, message)
        escalation = evolve(self.status.escalation, nextAt=None)
        self.status = evolve(self.status, resolvedAt=timestamp(self.now), verifyAfter=None, escalation=escalation)
        self.enter(Phase.RESOLVED, reason, message)

    def unthrottled(self, reason: str, message: str) -> None:
        """End the Throttled condition, if it holds."""
        throttled = self.status.condition(ConditionType.THROTTLED)
        if throttled is not None and throttled.status == "True":
            self.condition(ConditionType.THROTTLED, False, reason, message)

    def wait(self, reason: str, message: str) -> None:
        """Say once why the incident is waiting (not again on every look)."""
        if self.status.waiting != message:
            self.status = evolve(self.status, waiting=message)
            self.emit(NORMAL, reason, message)

    def decision(
        self,
        run: StepCall | None = None,
        wake_at: datetime | None = None,
        reserve: Reservation | None = None,
        expire: tuple[Silence, ...] = (),
    ) -> Decision:
        times = [t for t in (wake_at, *self.wake) if t is not None]
        return Decision(self.status, tuple(self.events), run, min(times) if times else None, reserve, expire)
