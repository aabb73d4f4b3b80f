"""Domain types, parsed once at the edge from the API's dicts.

Parsing never raises anything but :class:`PolicyError`, whose message names the
field, so a bad RemediationPolicy is reported, never crashes the operator.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from runbook_operator.domain.durations import parse_duration

SEVERITIES = ("Critical", "High", "Medium", "Low")
DEFAULT_SEVERITY = "Medium"


class Stage(enum.StrEnum):
    DIAGNOSE = "Diagnose"
    REMEDIATE = "Remediate"
    VERIFY = "Verify"

    @property
    def field(self) -> str:
        return self.value.lower()


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
class Step:
    name: str
    stage: Stage
    action: str
    params: Mapping[str, Any] = field(default_factory=dict)
    timeout: float | None = None
    retries: int = 0
    backoff: float = 1.0
    continue_on_failure: bool = False


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

    def steps(self, stage: Stage) -> tuple[Step, ...]:
        return {Stage.DIAGNOSE: self.diagnose, Stage.REMEDIATE: self.remediate, Stage.VERIFY: self.verify}[stage]


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
class Incident:
    namespace: str
    name: str
    generation: int
    alert: str
    severity: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    policy_ref: str | None = None
    resolved: bool = False

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Incident:
        meta, spec = body.get("metadata", {}), body.get("spec") or {}
        return cls(
            namespace=meta.get("namespace", ""),
            name=meta.get("name", ""),
            generation=int(meta.get("generation") or 0),
            alert=str(spec.get("alert", "")),
            severity=spec.get("severity"),
            labels={str(k): str(v) for k, v in (spec.get("labels") or {}).items()},
            policy_ref=(spec.get("policyRef") or {}).get("name"),
            resolved=bool(spec.get("resolved", False)),
        )


# Validates one action's parameters; raises ValueError with a precise message.
ParamValidator = Callable[[str, Mapping[str, Any]], None]


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


def _parse_step(raw: Any, stage: Stage, index: int, validate: ParamValidator) -> Step:
    path = f"spec.{stage.field}[{index}]"
    if not isinstance(raw, Mapping):
        raise PolicyError(f"{path}: must be an object")
    name, action = raw.get("name"), raw.get("action")
    if not name:
        raise PolicyError(f"{path}.name: required")
    if not action:
        raise PolicyError(f"{path}.action: required")
    params = raw.get("with") or {}
    try:
        validate(action, params)
    except ValueError as err:
        raise PolicyError(f"{path}.with ({action}): {err}") from None
    retries = raw.get("retries", 0)
    if not isinstance(retries, int) or retries < 0:
        raise PolicyError(f"{path}.retries: must be a non-negative integer")
    return Step(
        name=name,
        stage=stage,
        action=action,
        params=params,
        timeout=_duration(raw["timeout"], f"{path}.timeout") if "timeout" in raw else None,
        retries=retries,
        backoff=_duration(raw["backoff"], f"{path}.backoff") if "backoff" in raw else 1.0,
        continue_on_failure=bool(raw.get("continueOnFailure", False)),
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
            s: tuple(_parse_step(raw, s, i, validate) for i, raw in enumerate(spec.get(s.field) or [])) for s in Stage
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
        )
    except PolicyError as err:
        return InvalidPolicy(namespace, name, generation, str(err), match, priority)
