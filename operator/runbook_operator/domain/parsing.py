"""RemediationPolicy bodies read into ``domain.model`` types, once, at the edge.

Parsing never raises anything but :class:`~runbook_operator.domain.model.PolicyError`,
whose message names the field, so a bad RemediationPolicy is reported, never crashes
the operator: :func:`parse_policy` returns an :class:`~runbook_operator.domain.model.InvalidPolicy`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from runbook_operator.domain.durations import parse_duration
from runbook_operator.domain.expressions import When, check_templates
from runbook_operator.domain.model import (
    ANNOUNCEABLE,
    POLICY_STAGES,
    SEVERITIES,
    AnnounceRule,
    Escalation,
    InvalidPolicy,
    LabelSelector,
    Level,
    Match,
    Policy,
    PolicyError,
    Requirement,
    Stage,
    Step,
    Traits,
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


def parse_severities(raw: Any, path: str) -> frozenset[str]:
    """A list of severities (empty: none named), each one the runbook knows."""
    bad = [s for s in raw or [] if s not in SEVERITIES]
    if bad:
        raise PolicyError(f"{path}: unknown severity {bad[0]!r}")
    return frozenset(raw or [])


def parse_match(spec: Mapping[str, Any]) -> Match:
    raw = spec.get("match") or {}
    severities = parse_severities(raw.get("severities"), "spec.match.severities")
    selector = raw.get("labelSelector")
    return Match(
        alerts=frozenset(raw.get("alerts") or []),
        severities=severities,
        selector=None if selector is None else parse_selector(selector, "spec.match.labelSelector"),
    )


def parse_duration_at(raw: Any, path: str) -> float:
    """A duration field's seconds; PolicyError naming the field otherwise."""
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
        timeout=parse_duration_at(raw["timeout"], f"{path}.timeout") if "timeout" in raw else None,
        retries=retries,
        backoff=parse_duration_at(raw["backoff"], f"{path}.backoff") if "backoff" in raw else 1.0,
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
            settle=parse_duration_at(spec["settle"], "spec.settle") if "settle" in spec else 0.0,
            max_attempts=max_attempts,
            escalation=escalation,
            cooldown=parse_duration_at(limits["cooldown"], "spec.limits.cooldown") if "cooldown" in limits else 0.0,
            approval_timeout=parse_duration_at(limits["approvalTimeout"], "spec.limits.approvalTimeout")
            if "approvalTimeout" in limits
            else None,
            dry_run=bool(spec.get("dryRun", False)),
            suspend=bool(spec.get("suspend", False)),
            announce=announce,
            labels={str(k): str(v) for k, v in (meta.get("labels") or {}).items()},
            spec=spec,
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
        after = parse_duration_at(level["after"], f"{path}.after") if "after" in level else None
        steps = _notify_steps(level.get("notify"), Stage.ESCALATE, path, validate, seen)
        levels.append(Level(level["name"], after, steps))
    names = [lv.name for lv in levels]
    if len(set(names)) != len(names):
        raise PolicyError("spec.escalate.levels: level names must be unique")
    update = parse_duration_at(raw["updateEvery"], "spec.escalate.updateEvery") if "updateEvery" in raw else None
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
