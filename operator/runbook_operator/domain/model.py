"""Domain types, parsed once at the edge from the API's dicts.

Parsing never raises anything but :class:`PolicyError`, whose message names the
field, so a bad RemediationPolicy is reported, never crashes the operator.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from runbook_operator.domain.consent import Approval
from runbook_operator.domain.durations import parse_duration
from runbook_operator.domain.expressions import Languages, When, check_templates

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
        """An escalation's or an announcement's step: runs once, never waits for approval."""
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


# Checks one action's parameters and says what kind of action it is; raises ValueError
# with a precise message. Templated values are checked for syntax only.
ParamValidator = Callable[[str, Mapping[str, Any]], Traits]


def parse_selector(raw: Any, path: str) -> LabelSelector:
    if not isinstance(raw, Mapping):
        raise PolicyError(f"{path}: must be an object")
    reqs = [Requirement(str(k), "In", frozenset([str(v)])) for k, v in (raw.get("matchLabels") or {}).items()]
    for i, expr in enumerate(raw.get("matchExpressions") or []):
        where = f"{path}.matchExpressions[{i}]"
        op, values = expr.get("operator"), [str(v) for v in expr.get("values") or []]
        if op not in ("In", "NotIn", "Exists", "DoesNotExist"):
            raise PolicyError(f"{where}.operator: unknown operator {op!r}")
        if op in ("In", "NotIn") and not values:
            raise PolicyError(f"{where}.values: must be non-empty for operator {op}")
        if op in ("Exists", "DoesNotExist") and values:
            raise PolicyError(f"{where}.values: must be empty for operator {op}")
        reqs.append(Requirement(str(expr.get("key", "")), op, frozenset(values)))
    return LabelSelector(tuple(reqs))


def parse_match(spec: Mapping[str, Any]) -> Match:
    raw = spec.get("match") or {}
    bad = [s for s in raw.get("severities") or [] if s not in SEVERITIES]
    if bad:
        raise PolicyError(f"spec.match.severities: unknown severity {bad[0]!r}")
    selector = raw.get("labelSelector")
    return Match(
        alerts=frozenset(raw.get("alerts") or []),
        severities=frozenset(raw.get("severities") or []),
        selector=None if selector is None else parse_selector(selector, "spec.match.labelSelector"),
    )


def _duration(raw: Any, path: str) -> float:
    try:
        return parse_duration(raw)
    except ValueError as err:
        raise PolicyError(f"{path}: {err}") from None


def _parse_step(raw: Any, stage: Stage, index: int, validate: ParamValidator, path: str = "") -> Step:
    path = path or f"spec.{stage.field}[{index}]"
    if not isinstance(raw, Mapping):
        raise PolicyError(f"{path}: must be an object")
    name, action = raw.get("name"), raw.get("action")
    if not name:
        raise PolicyError(f"{path}.name: required")
    if not action:
        raise PolicyError(f"{path}.action: required")
    params = raw.get("with") or {}
    try:
        traits = validate(action, params)
        check_templates(params, traits.languages)
    except ValueError as err:
        raise PolicyError(f"{path}.with ({action}): {err}") from None
    retries = raw.get("retries", 0)
    if not isinstance(retries, int) or retries < 0:
        raise PolicyError(f"{path}.retries: must be a non-negative integer")
    when = None
    if raw.get("when"):
        try:
            when = When(raw["when"])
        except ValueError as err:
            raise PolicyError(f"{path}.when: {err}") from None
    approval = raw.get("requiresApproval")
    return Step(
        name=name,
        stage=stage,
        action=action,
        params=params,
        timeout=_duration(raw["timeout"], f"{path}.timeout") if "timeout" in raw else None,
        retries=retries,
        backoff=_duration(raw["backoff"], f"{path}.backoff") if "backoff" in raw else 1.0,
        continue_on_failure=bool(raw.get("continueOnFailure", False)),
        when=when,
        destructive=traits.destructive,
        read_only=traits.read_only,
        requires_approval=traits.destructive if approval is None else bool(approval),
        languages=traits.languages,
    )


def parse_policy(body: Mapping[str, Any], validate: ParamValidator) -> Policy | InvalidPolicy:
    """Turn a RemediationPolicy object into a Policy, or an InvalidPolicy naming the first error."""
    meta, spec = body.get("metadata", {}), body.get("spec") or {}
    namespace, name = meta.get("namespace", ""), meta.get("name", "")
    generation, priority = int(meta.get("generation") or 0), int(spec.get("priority") or 0)
    match: Match | None = None
    try:
        match = parse_match(spec)
        stages = {
            s: tuple(_parse_step(raw, s, i, validate) for i, raw in enumerate(spec.get(s.field) or []))
            for s in POLICY_STAGES
        }
        seen: set[str] = set()
        for stage_steps in stages.values():
            for step in stage_steps:
                if step.name in seen:
                    raise PolicyError(f"spec.{step.stage.field}: duplicate step name {step.name!r}")
                seen.add(step.name)
        severity = spec.get("severity")
        if severity is not None and severity not in SEVERITIES:
            raise PolicyError(f"spec.severity: unknown severity {severity!r}")
        limits = spec.get("limits") or {}
        max_attempts = limits.get("maxAttempts", 1)
        if not isinstance(max_attempts, int) or max_attempts < 1:
            raise PolicyError("spec.limits.maxAttempts: must be an integer >= 1")
        escalation = _parse_escalation(spec.get("escalate"), validate, seen)
        announce = _parse_announce(spec.get("announce"), validate, seen)
        return Policy(
            namespace=namespace,
            name=name,
            generation=generation,
            match=match,
            priority=priority,
            severity=severity,
            diagnose=stages[Stage.DIAGNOSE],
            remediate=stages[Stage.REMEDIATE],
            verify=stages[Stage.VERIFY],
            settle=_duration(spec["settle"], "spec.settle") if "settle" in spec else 0.0,
            max_attempts=max_attempts,
            escalation=escalation,
            cooldown=_duration(limits["cooldown"], "spec.limits.cooldown") if "cooldown" in limits else 0.0,
            approval_timeout=_duration(limits["approvalTimeout"], "spec.limits.approvalTimeout")
            if "approvalTimeout" in limits
            else None,
            dry_run=bool(spec.get("dryRun", False)),
            suspend=bool(spec.get("suspend", False)),
            announce=announce,
        )
    except PolicyError as err:
        return InvalidPolicy(namespace, name, generation, str(err), match, priority)


def _parse_escalation(raw: Any, validate: ParamValidator, seen: set[str]) -> Escalation | None:
    if raw is None:
        return None
    levels = []
    for i, level in enumerate(raw.get("levels") or []):
        path = f"spec.escalate.levels[{i}]"
        if not level.get("name"):
            raise PolicyError(f"{path}.name: required")
        after = _duration(level["after"], f"{path}.after") if "after" in level else None
        steps = _notify_steps(level.get("notify"), Stage.ESCALATE, path, validate, seen)
        levels.append(Level(level["name"], after, steps))
    names = [lv.name for lv in levels]
    if len(set(names)) != len(names):
        raise PolicyError("spec.escalate.levels: level names must be unique")
    update = _duration(raw["updateEvery"], "spec.escalate.updateEvery") if "updateEvery" in raw else None
    return Escalation(tuple(levels), update, raw.get("afterAttempts"))


def _notify_steps(raw: Any, stage: Stage, path: str, validate: ParamValidator, seen: set[str]) -> tuple[Step, ...]:
    """The ``notify`` steps at ``path``; step names are unique across the whole policy (``seen``)."""
    steps = []
    for j, step_raw in enumerate(raw or []):
        step = _parse_step(step_raw, stage, j, validate, f"{path}.notify[{j}]")
        if step.name in seen:
            raise PolicyError(f"{path}.notify[{j}].name: duplicate step name {step.name!r}")
        seen.add(step.name)
        steps.append(step)
    return tuple(steps)


def _parse_announce(raw: Any, validate: ParamValidator, seen: set[str]) -> tuple[AnnounceRule, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise PolicyError("spec.announce: must be a list")
    found = []
    for i, item in enumerate(raw):
        path = f"spec.announce[{i}]"
        if not isinstance(item, Mapping):
            raise PolicyError(f"{path}: must be an object")
        phases = item.get("phases")
        if phases is not None:
            bad = [p for p in phases if p not in ANNOUNCEABLE]
            if bad:
                raise PolicyError(f"{path}.phases: {bad[0]!r} is not one of {', '.join(ANNOUNCEABLE)}")
        steps = _notify_steps(item.get("notify"), Stage.ANNOUNCE, path, validate, seen)
        if not steps:
            raise PolicyError(f"{path}.notify: at least one step is required")
        found.append(
            AnnounceRule(steps, None if phases is None else frozenset(phases), bool(item.get("dryRun", False)))
        )
    return tuple(found)


def default_escalation(severity: str) -> Escalation:
    """The runbook: team lead after 30m unresolved; manager after 1h for Critical; updates every 30m for Critical."""
    levels = [Level("on-call", None), Level("team-lead", 30 * 60.0)]
    if severity == "Critical":
        levels.append(Level("manager", 3600.0))
    return Escalation(tuple(levels), 30 * 60.0 if severity == "Critical" else None)
