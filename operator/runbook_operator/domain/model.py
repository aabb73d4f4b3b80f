"""Domain types: Incident, RemediationPolicy and their parts, and the runbook's defaults.

A policy is read from the API's dict by ``domain.parsing``; an Incident is read
tolerantly by :meth:`Incident.from_body` (the CRD schema has validated it).
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from runbook_operator.domain.consent import Approval
from runbook_operator.domain.expressions import Languages, When
from runbook_operator.domain.wire import plain

SEVERITIES = ("Critical", "High", "Medium", "Low")
DEFAULT_SEVERITY = "Medium"
# The runbook's response times by severity.
RESPONSE_TIME = {"Critical": 15 * 60.0, "High": 3600.0, "Medium": 4 * 3600.0, "Low": 24 * 3600.0}
# What a status-change announcement may be about: a phase entered, or the first acknowledgement.
ACKNOWLEDGED = "Acknowledged"
ANNOUNCEABLE = ("Diagnosing", "AwaitingApproval", "Remediating", "Verifying", "Escalated", "Resolved", ACKNOWLEDGED)
# The runbook's "update when status changes (investigating, identified, resolving, resolved)", by
# severity, for an announcement that names no phases: Critical and High say every change people
# act on; Medium and Low only what needs people (approval, escalation) and the end.
DEFAULT_ANNOUNCED = {
    "Critical": frozenset({"Diagnosing", "AwaitingApproval", ACKNOWLEDGED, "Escalated", "Resolved"}),
    "High": frozenset({"Diagnosing", "AwaitingApproval", ACKNOWLEDGED, "Escalated", "Resolved"}),
    "Medium": frozenset({"AwaitingApproval", "Escalated", "Resolved"}),
    "Low": frozenset({"AwaitingApproval", "Escalated", "Resolved"}),
}


NOTIFY = "notify."  # the notification family: an action named notify.<channel> sends to <channel>


def channel(action: str) -> str | None:
    """The channel a notification action sends to (``notify.slack``: ``slack``); None for another family."""
    return action.removeprefix(NOTIFY) if action.startswith(NOTIFY) else None


def spec_digest(spec: Mapping[str, Any]) -> str:
    """``sha256:`` and the hex digest of a spec as canonical JSON (sorted keys, no spaces)."""
    canonical = json.dumps(plain(spec), sort_keys=True, separators=(",", ":"), default=str)
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


class Stage(enum.StrEnum):
    DIAGNOSE = "Diagnose"
    REMEDIATE = "Remediate"
    VERIFY = "Verify"
    ESCALATE = "Escalate"
    ANNOUNCE = "Announce"

    @property
    def field(self) -> str:
        return self.value.lower()


POLICY_STAGES = (Stage.DIAGNOSE, Stage.REMEDIATE, Stage.VERIFY)


class PolicyError(ValueError):
    """A RemediationPolicy that cannot be used; the message starts with the field path."""


@dataclass(frozen=True)
class Requirement:
    key: str
    operator: str  # In, NotIn, Exists, DoesNotExist
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        if self.operator == "Exists":
            return present
        if self.operator == "DoesNotExist":
            return not present
        if self.operator == "In":
            return present and labels[self.key] in self.values
        return not present or labels[self.key] not in self.values  # NotIn


@dataclass(frozen=True)
class LabelSelector:
    """metav1.LabelSelector semantics: all requirements must hold; empty matches all."""

    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(r.matches(labels) for r in self.requirements)


@dataclass(frozen=True)
class Traits:
    """What the action catalog says about one step's action and parameters."""

    destructive: bool = False
    read_only: bool = False
    languages: Languages = field(default_factory=dict)  # what each parameter's text is, for substitution


@dataclass(frozen=True)
class Step:
    name: str
    stage: Stage
    action: str
    params: Mapping[str, Any] = field(default_factory=dict)
    timeout: float | None = None
    retries: int = 0
    backoff: float = 1.0
    continue_on_failure: bool = False
    when: When | None = None
    destructive: bool = False
    read_only: bool = False
    requires_approval: bool = False
    languages: Languages = field(default_factory=dict)

    @property
    def rerun_safe(self) -> bool:
        """May run again if the operator died while it ran? Not if it destroys or notifies."""
        return not self.destructive and not self.notifies

    @property
    def notifies(self) -> bool:
        """A step of an escalation level or an announcement, whatever its action (usually one of
        the notification family, :func:`channel`): runs once, never waits for approval."""
        return self.stage in (Stage.ESCALATE, Stage.ANNOUNCE)


@dataclass(frozen=True)
class Level:
    name: str
    after: float | None  # unresolved this long; None: fires when the incident escalates
    notify: tuple[Step, ...] = ()


@dataclass(frozen=True)
class Escalation:
    levels: tuple[Level, ...]
    update_every: float | None
    after_attempts: int | None = None


@dataclass(frozen=True)
class AnnounceRule:
    """Notify steps run once each time the incident enters one of ``phases`` (None: the
    severity's default, :data:`DEFAULT_ANNOUNCED`)."""

    notify: tuple[Step, ...]
    phases: frozenset[str] | None = None
    dry_run: bool = False  # also in a dry run (otherwise recorded as what would run)

    def announces(self, phase: str, severity: str) -> bool:
        return phase in (self.phases if self.phases is not None else DEFAULT_ANNOUNCED[severity])


@dataclass(frozen=True)
class Match:
    alerts: frozenset[str] = frozenset()
    severities: frozenset[str] = frozenset()
    selector: LabelSelector | None = None


@dataclass(frozen=True)
class Policy:
    namespace: str
    name: str
    generation: int
    match: Match
    priority: int = 0
    severity: str | None = None
    diagnose: tuple[Step, ...] = ()
    remediate: tuple[Step, ...] = ()
    verify: tuple[Step, ...] = ()
    settle: float = 0.0
    max_attempts: int = 1
    escalation: Escalation | None = None  # None: the runbook's defaults for the severity
    cooldown: float = 0.0
    approval_timeout: float | None = None  # None: the severity's response time
    dry_run: bool = False
    suspend: bool = False
    announce: tuple[AnnounceRule, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)  # metadata.labels: budgets select by them
    spec: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)  # as applied, for the archive

    @property
    def digest(self) -> str:
        """sha256 of the policy's spec as canonical JSON: which version of it drove an incident."""
        return spec_digest(self.spec)

    def announced(self, phase: str, severity: str) -> tuple[Step, ...]:
        """The notify steps an entry into ``phase`` runs, in the order the policy gives them."""
        return tuple(s for a in self.announce if a.announces(phase, severity) for s in a.notify)

    def announces_in_dry_run(self, step: Step) -> bool:
        return any(a.dry_run and step in a.notify for a in self.announce)

    def steps(self, stage: Stage) -> tuple[Step, ...]:
        return {Stage.DIAGNOSE: self.diagnose, Stage.REMEDIATE: self.remediate, Stage.VERIFY: self.verify}[stage]

    def step(self, name: str) -> Step | None:
        """The step of that name, of any stage or escalation level (names are unique in a policy)."""
        steps = [*self.diagnose, *self.remediate, *self.verify]
        steps += [s for level in (self.escalation.levels if self.escalation else ()) for s in level.notify]
        steps += [s for announcement in self.announce for s in announcement.notify]
        return next((s for s in steps if s.name == name), None)


@dataclass(frozen=True)
class InvalidPolicy:
    """A policy that failed validation; kept so matching incidents can say why they escalate."""

    namespace: str
    name: str
    generation: int
    error: str
    match: Match | None
    priority: int = 0


@dataclass(frozen=True)
class Target:
    kind: str
    name: str
    namespace: str

    def __str__(self) -> str:
        return f"{self.kind}/{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Incident:
    namespace: str
    name: str
    generation: int
    alert: str
    uid: str = ""
    severity: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    policy_ref: str | None = None
    resolved: bool = False
    summary: str = ""
    description: str = ""
    target: Target | None = None
    dry_run: bool = False
    suspend: bool = False
    acknowledged_by: str | None = None
    approvals: tuple[Approval, ...] = ()
    created: str = ""  # creationTimestamp, to tell which of two duplicates came first
    spec: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)  # as applied, for the archive

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Incident:
        meta, spec = body.get("metadata", {}), body.get("spec") or {}
        namespace = meta.get("namespace", "")
        target = spec.get("target")
        return cls(
            namespace=namespace,
            name=meta.get("name", ""),
            generation=int(meta.get("generation") or 0),
            alert=str(spec.get("alert", "")),
            uid=str(meta.get("uid") or ""),
            severity=spec.get("severity"),
            labels={str(k): str(v) for k, v in (spec.get("labels") or {}).items()},
            policy_ref=(spec.get("policyRef") or {}).get("name"),
            resolved=bool(spec.get("resolved", False)),
            summary=str(spec.get("summary") or ""),
            description=str(spec.get("description") or ""),
            target=Target(target["kind"], target["name"], target.get("namespace") or namespace) if target else None,
            dry_run=bool(spec.get("dryRun", False)),
            suspend=bool(spec.get("suspend", False)),
            acknowledged_by=spec.get("acknowledgedBy") or None,
            approvals=tuple(_approvals(spec.get("approvals"))),
            created=str(meta.get("creationTimestamp") or ""),
            spec=spec if isinstance(spec, Mapping) else {},
        )

    def view(self, severity: str | None) -> dict[str, Any]:
        """What `when` and templates see as ``incident``."""
        target = self.target
        return {
            "name": self.name,
            "namespace": self.namespace,
            "alert": self.alert,
            "severity": severity or self.severity or DEFAULT_SEVERITY,
            "summary": self.summary,
            "description": self.description,
            "labels": dict(self.labels),
            "target": {"kind": target.kind, "name": target.name, "namespace": target.namespace} if target else None,
        }


def _approvals(raw: Any) -> Iterator[Approval]:
    for item in raw if isinstance(raw, list) else ():
        if isinstance(item, Mapping) and item.get("step") and item.get("by"):
            round_ = item.get("round")
            yield Approval(
                str(item["step"]),
                str(item["by"]),
                round_ if isinstance(round_, int) else 0,
                str(item.get("nonce") or ""),
            )


def default_escalation(severity: str) -> Escalation:
    """The runbook: team lead after 30m unresolved; manager after 1h for Critical; updates every 30m for Critical."""
    levels = [Level("on-call", None), Level("team-lead", 30 * 60.0)]
    if severity == "Critical":
        levels.append(Level("manager", 3600.0))
    return Escalation(tuple(levels), 30 * 60.0 if severity == "Critical" else None)
