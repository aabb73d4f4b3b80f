"""Which RemediationPolicy handles an Incident, and why the others do not.

Each check is a function ``(incident, match) -> str | None`` returning why the
policy does not match (cert-manager's policy-chain shape); the first reason wins.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from runbook_operator.domain.model import DEFAULT_SEVERITY, Incident, InvalidPolicy, Match, Policy

Candidate = Policy | InvalidPolicy
Check = Callable[[Incident, Match], str | None]


def _alert(incident: Incident, match: Match) -> str | None:
    if match.alerts and incident.alert not in match.alerts:
        return f"alert {incident.alert!r} not in {sorted(match.alerts)}"
    return None


def _severity(incident: Incident, match: Match) -> str | None:
    severity = incident.severity or DEFAULT_SEVERITY
    if match.severities and severity not in match.severities:
        return f"severity {severity!r} not in {sorted(match.severities)}"
    return None


def _labels(incident: Incident, match: Match) -> str | None:
    if match.selector is not None and not match.selector.matches(incident.labels):
        return "labelSelector does not match the incident's labels"
    return None


CHECKS: tuple[Check, ...] = (_alert, _severity, _labels)


def mismatch(incident: Incident, match: Match) -> str | None:
    for check in CHECKS:
        reason = check(incident, match)
        if reason:
            return reason
    return None


@dataclass(frozen=True)
class Selection:
    """The outcome: ``chosen`` (maybe invalid) or None, and why each other policy lost."""

    chosen: Candidate | None
    reason: str
    rejected: tuple[tuple[str, str], ...] = ()


def select_policy(incident: Incident, candidates: Iterable[Candidate]) -> Selection:
    in_namespace = sorted((c for c in candidates if c.namespace == incident.namespace), key=lambda c: c.name)
    if incident.policy_ref:
        pinned = next((c for c in in_namespace if c.name == incident.policy_ref), None)
        if pinned is None:
            return Selection(
                None, f"policyRef {incident.policy_ref!r} does not exist in namespace {incident.namespace!r}"
            )
        return Selection(pinned, f"pinned by policyRef {pinned.name!r}")
    matched: list[Candidate] = []
    rejected: list[tuple[str, str]] = []
    for candidate in in_namespace:
        if candidate.match is None:
            rejected.append((candidate.name, "match section is invalid"))
            continue
        why = mismatch(incident, candidate.match)
        if why:
            rejected.append((candidate.name, why))
        else:
            matched.append(candidate)
    if not matched:
        return Selection(
            None,
            f"no RemediationPolicy in namespace {incident.namespace!r} matches alert {incident.alert!r}",
            tuple(rejected),
        )
    matched.sort(key=lambda c: (-c.priority, c.name))
    best, others = matched[0], matched[1:]
    rejected.extend((c.name, f"lower priority than {best.name!r} (or same priority, later name)") for c in others)
    return Selection(best, f"matched alert {incident.alert!r} (priority {best.priority})", tuple(rejected))
