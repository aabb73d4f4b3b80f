"""The Incident's ``.status`` as frozen values, and its round trip to the API's dict.

All progress lives here, so a restarted operator resumes from the object alone.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from runbook_operator.domain import conditions
from runbook_operator.domain.conditions import Condition as Condition
from runbook_operator.domain.evolve import evolve
from runbook_operator.domain.model import Stage
from runbook_operator.domain.wire import known
from runbook_operator.domain.wire import parse_timestamp as parse_timestamp
from runbook_operator.domain.wire import timestamp as timestamp

TIMELINE_LIMIT = 50
STEPS_LIMIT = 100
ANNOUNCEMENTS_LIMIT = 20  # announcements kept in status: every one not done yet, then the newest done
CONVERSATIONS_LIMIT = 16  # channels an incident keeps a conversation with
SILENCES_LIMIT = 16  # Alertmanager silences an incident keeps (and expires)
# A periodic escalation update's records say ``update: k``; they also keep attempt 100+k,
# the only way the previous version (which keys records on the attempt) knows them.
UPDATE_ATTEMPT_BASE = 100


class Phase(enum.StrEnum):
    PENDING = "Pending"
    DIAGNOSING = "Diagnosing"
    AWAITING_APPROVAL = "AwaitingApproval"
    REMEDIATING = "Remediating"
    VERIFYING = "Verifying"
    ESCALATED = "Escalated"
    RESOLVED = "Resolved"

    @classmethod
    def _missing_(cls, value: object) -> Phase | None:
        """A phase this version does not know (a newer operator's; the CRD's enum refuses others)
        loads as itself: no rule matches it, so the incident stays as it is and the phase is
        written back unchanged, as when phases were plain strings."""
        if not isinstance(value, str):
            return None
        unknown = str.__new__(cls, value)
        unknown._name_, unknown._value_ = value, value
        return unknown


class StepState(enum.StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SKIPPED = "Skipped"
    AWAITING_APPROVAL = "AwaitingApproval"


class Reason:
    """Condition and Event reasons users and tests rely on (CamelCase constants)."""

    POLICY_MATCHED = "PolicyMatched"
    NO_MATCHING_POLICY = "NoMatchingPolicy"
    INVALID_POLICY = "InvalidPolicy"
    DIAGNOSIS_COMPLETE = "DiagnosisComplete"
    REMEDIATION_APPLIED = "RemediationApplied"
    REMEDIATION_FAILED = "RemediationFailed"
    VERIFICATION_FAILED = "VerificationFailed"
    VERIFIED = "Verified"
    NO_VERIFICATION = "NoVerification"
    REMEDIATION_EXHAUSTED = "RemediationExhausted"
    RESOLVED_EXTERNALLY = "ResolvedExternally"
    STEP_SUCCEEDED = "StepSucceeded"
    STEP_FAILED = "StepFailed"
    STEP_RESUMED = "StepResumed"
    STEP_INTERRUPTED = "StepInterrupted"
    STEP_SKIPPED = "StepSkipped"
    IN_PROGRESS = "InProgress"
    AWAITING_APPROVAL = "AwaitingApproval"
    APPROVED = "Approved"
    APPROVAL_TIMEOUT = "ApprovalTimeout"
    APPROVAL_REQUEST_CHANGED = "ApprovalRequestChanged"
    APPROVAL_IGNORED = "ApprovalIgnored"
    APPROVAL_MISSING = "ApprovalMissing"  # a step recorded Running that no approval answers: not run
    DRY_RUN = "DryRun"
    DUPLICATE = "Duplicate"
    SUSPENDED = "Suspended"
    RESUMED = "Resumed"
    POLICY_SUSPENDED = "PolicySuspended"
    ACKNOWLEDGED = "Acknowledged"
    ESCALATION = "EscalationLevelReached"
    ESCALATION_UPDATE = "EscalationUpdate"
    RESPONSE_OVERDUE = "ResponseOverdue"
    TARGET_LOCKED = "TargetLocked"
    TARGET_OUTSIDE_NAMESPACE = "TargetOutsideNamespace"  # spec.target.namespace is not the incident's own
    COOLDOWN = "CooldownActive"
    THROTTLED = "Throttled"  # a RemediationBudget has no room for the next step
    THROTTLE_TIMEOUT = "ThrottleTimeout"  # throttled, and nobody approved past the budget in time
    BUDGET_AVAILABLE = "BudgetAvailable"  # the budget has room again
    APPROVED_PAST_BUDGET = "ApprovedPastBudget"
    VALID = "Valid"  # a RemediationPolicy's or RemediationBudget's Ready condition; otherwise INVALID_*
    INVALID_BUDGET = "InvalidBudget"


class ConditionType:
    DIAGNOSED = "Diagnosed"
    REMEDIATED = "Remediated"
    ESCALATED = "Escalated"
    RESOLVED = "Resolved"
    ACKNOWLEDGED = "Acknowledged"
    SUSPENDED = "Suspended"
    READY = "Ready"  # a RemediationPolicy's one condition
    THROTTLED = "Throttled"  # True while a RemediationBudget holds the next step


@dataclass(frozen=True)
class ApprovalRequest:
    """What a step waiting for approval asks for; an approval must name its nonce (and the record's round)."""

    nonce: str
    digest: str  # of the action and the rendered parameters (domain.consent.digest)
    requestedAt: str
    parameters: Mapping[str, Any] = field(default_factory=dict)  # as rendered: Secrets named, never read; bounded

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> ApprovalRequest:
        return cls(**known(cls, raw))


@dataclass(frozen=True)
class StepRecord:
    name: str
    stage: str
    action: str
    attempt: int
    state: str
    startedAt: str | None = None
    finishedAt: str | None = None
    message: str = ""
    output: Mapping[str, Any] | None = None
    approvedBy: str | None = None
    approvedAt: str | None = None
    approvedDigest: str | None = None
    approvalRequest: ApprovalRequest | None = None
    update: int | None = None  # Escalate: the k-th periodic update's notification; None: a level's own
    paramsDigest: str | None = None  # the action and its rendered parameters (consent.digest): what a replay matches
    duration: float | None = None  # seconds the step ran, tries and backoffs included; None: not finished

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> StepRecord:
        values = known(cls, raw)
        request = values.get("approvalRequest")
        values["approvalRequest"] = ApprovalRequest.from_dict(request) if isinstance(request, Mapping) else None
        return cls(**values).labelled()

    def labelled(self) -> StepRecord:
        """With ``update`` said, also for a record the previous version wrote (attempt 100+k only)."""
        if self.update is not None or self.stage != Stage.ESCALATE or self.attempt <= UPDATE_ATTEMPT_BASE:
            return self
        return evolve(self, update=self.attempt - UPDATE_ATTEMPT_BASE)


def update_attempt(update: int) -> int:
    """The attempt an update's records are keyed on (see UPDATE_ATTEMPT_BASE)."""
    return UPDATE_ATTEMPT_BASE + update


@dataclass(frozen=True)
class Finding:
    step: str
    message: str


@dataclass(frozen=True)
class TimelineEntry:
    time: str
    type: str
    message: str


@dataclass(frozen=True)
class Announcement:
    """One status change to announce: the ``number``-th, entering ``phase`` (or Acknowledged).
    Its notify steps' records are keyed on the number as their attempt; ``done`` once each ran
    (or was skipped), so no change is ever announced twice, whatever status has forgotten."""

    number: int
    phase: str
    at: str
    reason: str = ""
    message: str = ""
    done: bool = False


@dataclass(frozen=True)
class Silence:
    """An Alertmanager silence a step created (``alertmanager.silence``); the operator expires it when
    the incident resolves, escalates or is deleted. Kept here, so a restart never loses one."""

    id: str
    url: str  # the Alertmanager it lives in
    endsAt: str  # it ends by itself then, whatever happens to the operator
    step: str = ""
    expiredAt: str | None = None

    def open(self, now: datetime) -> bool:
        """Still to expire: not expired yet, and not past its own end."""
        return self.expiredAt is None and now < parse_timestamp(self.endsAt)


@dataclass(frozen=True)
class EscalationState:
    level: str | None = None
    notifiedAt: str | None = None
    nextAt: str | None = None
    fired: tuple[str, ...] = ()
    updates: int = 0
    lastUpdateAt: str | None = None
    overdueNoted: bool = False


@dataclass(frozen=True)
class Status:
    phase: Phase | None = None
    observedGeneration: int = 0
    policy: str | None = None
    policyGeneration: int | None = None
    severity: str | None = None
    attempts: int = 0
    currentStep: str | None = None
    startedAt: str | None = None
    resolvedAt: str | None = None
    verifyAfter: str | None = None
    acknowledgedAt: str | None = None
    responseDeadline: str | None = None
    duplicateOf: str | None = None
    waiting: str | None = None
    escalation: EscalationState = EscalationState()
    announcements: tuple[Announcement, ...] = ()
    conversations: Mapping[str, str] = field(default_factory=dict)  # channel key -> thread or alert id
    silences: tuple[Silence, ...] = ()
    conditions: tuple[Condition, ...] = ()
    steps: tuple[StepRecord, ...] = ()
    findings: tuple[Finding, ...] = ()
    timeline: tuple[TimelineEntry, ...] = ()

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | None) -> Status:
        raw = raw or {}
        nested = {
            "conditions": Condition,
            "steps": StepRecord,
            "findings": Finding,
            "timeline": TimelineEntry,
            "announcements": Announcement,
            "silences": Silence,
        }
        scalars = known(cls, raw, exclude={*nested, "escalation", "conversations"})
        lists = {key: tuple(_item(kind, item) for item in raw.get(key) or ()) for key, kind in nested.items()}
        escalation = known(EscalationState, raw.get("escalation") or {})
        escalation["fired"] = tuple(escalation.get("fired") or ())
        phase = scalars.pop("phase", None)
        conversations = raw.get("conversations")
        return cls(
            **scalars | lists,
            phase=Phase(phase) if phase is not None else None,
            escalation=EscalationState(**escalation),
            conversations={str(k): str(v) for k, v in conversations.items() if v is not None}
            if isinstance(conversations, Mapping)
            else {},
        )

    def to_dict(self) -> dict[str, Any]:
        """The full status for a merge patch: top-level None clears a stale field;
        inside list items (which a merge patch copies verbatim) None is left out."""
        raw = asdict(self)
        raw["phase"] = None if self.phase is None else str(self.phase)  # plain text, e.g. for yaml.safe_dump
        for key in ("conditions", "steps", "findings", "timeline", "announcements", "silences"):
            raw[key] = [{k: v for k, v in item.items() if v is not None} for item in raw[key]]
        raw["escalation"]["fired"] = list(self.escalation.fired)
        return raw

    def condition(self, type_: str) -> Condition | None:
        return conditions.find(self.conditions, type_)

    def with_condition(self, type_: str, status: bool, reason: str, message: str, now: datetime) -> Status:
        updated = conditions.set_condition(
            self.conditions, type_, status, reason, message, now, self.observedGeneration
        )
        return evolve(self, conditions=updated)

    def noted(self, now: datetime, type_: str, message: str) -> Status:
        entries = (*self.timeline, TimelineEntry(timestamp(now), type_, message))
        return evolve(self, timeline=entries[-TIMELINE_LIMIT:])

    def announcing(self) -> Announcement | None:
        """The first announcement whose notify steps have not all run yet."""
        return next((a for a in self.announcements if not a.done), None)

    def with_announcement(self, announcement: Announcement) -> Status:
        """Add (or replace, by number) an announcement; past the limit the oldest done ones go."""
        kept = [a for a in self.announcements if a.number != announcement.number]
        kept.append(announcement)
        kept.sort(key=lambda a: a.number)
        while len(kept) > ANNOUNCEMENTS_LIMIT and any(a.done for a in kept):
            kept.remove(next(a for a in kept if a.done))
        return evolve(self, announcements=tuple(kept))

    def with_conversation(self, key: str, ident: str) -> Status:
        """Remember a channel's thread (or alert); a new one replaces one the channel lost."""
        if self.conversations.get(key) == ident:
            return self
        if key not in self.conversations and len(self.conversations) >= CONVERSATIONS_LIMIT:
            return self
        return evolve(self, conversations={**self.conversations, key: ident})

    def with_silence(self, silence: Silence) -> Status:
        """Remember a silence a step created (once, by its id); at most SILENCES_LIMIT are kept."""
        if any(s.id == silence.id for s in self.silences) or len(self.silences) >= SILENCES_LIMIT:
            return self
        return evolve(self, silences=(*self.silences, silence))

    def open_silences(self, now: datetime) -> tuple[Silence, ...]:
        return tuple(s for s in self.silences if s.open(now))

    def silences_expired(self, ids: Iterable[str], now: datetime) -> Status:
        """With these silences marked expired (Alertmanager expired them, or no longer knows them)."""
        done = set(ids)
        at = timestamp(now)
        return evolve(
            self, silences=tuple(evolve(s, expiredAt=at) if s.id in done and s.expiredAt is None else s
                                 for s in self.silences),
        )  # fmt: skip

    def awaiting_approval(self) -> StepRecord | None:
        """The step that waits for a person's approval, if one does."""
        return next((s for s in self.steps if s.state == StepState.AWAITING_APPROVAL), None)

    def record(self, stage: str, name: str, attempt: int) -> StepRecord | None:
        for record in self.steps:  # a loop, not next() over a generator: called a few times per step
            if record.name == name and record.attempt == attempt and record.stage == stage:
                return record
        return None

    def with_record(self, record: StepRecord) -> Status:
        """Add or replace a step record; past STEPS_LIMIT the oldest finished records go."""
        record = record.labelled()
        key = (record.stage, record.name, record.attempt)
        kept = [s for s in self.steps if (s.stage, s.name, s.attempt) != key]
        kept.append(record)
        while len(kept) > STEPS_LIMIT:
            oldest = next((i for i, s in enumerate(kept) if s.finishedAt), 0)
            del kept[oldest]
        return evolve(self, steps=tuple(kept))


def _item(kind: type, raw: Mapping[str, Any]) -> Any:
    parse = getattr(kind, "from_dict", None)
    return parse(raw) if parse is not None else kind(**known(kind, raw))
