"""Which RemediationPolicy handles an Incident, and why the others do not.

Each check is a function ``(incident, match) -> str | None`` returning why the
policy does not match (cert-manager's policy-chain shape); the first reason wins.

The policies of a namespace are indexed once per policy-set change (``PolicySet``):
by name (for ``policyRef``) and by alert, each bucket already in winning order
(priority, then name), with one bucket for policies that match any alert. Selecting
then checks only the policies that could match the incident's alert, and stops at
the first that does. Why each other policy lost is worked out only when someone
reads ``Selection.rejected`` (``runbook-operator plan``); the status records only
the chosen policy and the reason.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import overload

from runbook_operator.domain.model import DEFAULT_SEVERITY, Incident, InvalidPolicy, Match, Policy

Candidate = Policy | InvalidPolicy
Check = Callable[[Incident, Match], str | None]
Rejections = tuple[tuple[str, str], ...]


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


def _no_rejections() -> Rejections:
    return ()


@dataclass(frozen=True)
class Selection:
    """The outcome: ``chosen`` (maybe invalid) or None, and why each other policy lost.

    ``rejected`` is computed on first access from ``explain``: the operator never
    reads it while matching, so it costs nothing there.
    """

    chosen: Candidate | None
    reason: str
    explain: Callable[[], Rejections] = field(default=_no_rejections, repr=False, compare=False)

    @cached_property
    def rejected(self) -> Rejections:
        return self.explain()


def _rank(item: tuple[int, Candidate]) -> tuple[int, str, int]:
    """Winning order: higher priority first, then name, then the order given (duplicate names)."""
    position, candidate = item
    return (-candidate.priority, candidate.name, position)


@dataclass(frozen=True)
class _Namespace:
    by_name_order: tuple[tuple[int, Candidate], ...]  # every candidate with its position given, by name
    by_name: dict[str, Candidate]  # the first candidate of each name, in that order
    by_alert: dict[str, tuple[tuple[tuple[int, str, int], Candidate], ...]]  # winning order
    any_alert: tuple[tuple[tuple[int, str, int], Candidate], ...]  # match.alerts empty, winning order


def _index(candidates: Sequence[Candidate]) -> _Namespace:
    ordered = tuple(sorted(enumerate(candidates), key=lambda item: item[1].name))
    by_name: dict[str, Candidate] = {}
    for _, candidate in ordered:
        by_name.setdefault(candidate.name, candidate)
    ranked = sorted(((_rank((i, c)), c) for i, c in enumerate(candidates) if c.match is not None), key=lambda x: x[0])
    by_alert: dict[str, list[tuple[tuple[int, str, int], Candidate]]] = {}
    any_alert = []
    for key, candidate in ranked:
        assert candidate.match is not None
        if not candidate.match.alerts:
            any_alert.append((key, candidate))
        for alert in candidate.match.alerts:
            by_alert.setdefault(alert, []).append((key, candidate))
    return _Namespace(ordered, by_name, {a: tuple(b) for a, b in by_alert.items()}, tuple(any_alert))


_EMPTY = _Namespace((), {}, {}, ())


class PolicySet(Sequence[Candidate]):
    """An immutable sequence of candidates, indexed for ``select_policy``.

    Build it once when the policies change and pass it wherever a sequence of
    candidates goes; ``select_policy`` on a plain iterable builds one per call.
    """

    def __init__(self, candidates: Iterable[Candidate]) -> None:
        self._members = tuple(candidates)
        grouped: dict[str, list[Candidate]] = {}
        for candidate in self._members:
            grouped.setdefault(candidate.namespace, []).append(candidate)
        self._namespaces = {namespace: _index(group) for namespace, group in grouped.items()}

    def same_as(self, candidates: Sequence[Candidate]) -> bool:
        """Whether ``candidates`` are the members this set was built from (same objects, same order)."""
        members = self._members
        return len(candidates) == len(members) and all(a is b for a, b in zip(candidates, members, strict=True))

    @overload
    def __getitem__(self, index: int) -> Candidate: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[Candidate]: ...
    def __getitem__(self, index: int | slice) -> Candidate | Sequence[Candidate]:
        return self._members[index]

    def __len__(self) -> int:
        return len(self._members)

    def __iter__(self) -> Iterator[Candidate]:
        return iter(self._members)

    def __repr__(self) -> str:
        return f"PolicySet({len(self._members)} candidates)"

    def namespace(self, namespace: str) -> _Namespace | None:
        return self._namespaces.get(namespace)


def _matches(incident: Incident, match: Match) -> bool:
    """``mismatch(...) is None`` for a policy whose alerts include the incident's (or are empty)."""
    if match.severities and (incident.severity or DEFAULT_SEVERITY) not in match.severities:
        return False
    return match.selector is None or match.selector.matches(incident.labels)


def _first(
    incident: Incident, bucket: tuple[tuple[tuple[int, str, int], Candidate], ...]
) -> tuple[tuple[int, str, int], Candidate] | None:
    for entry in bucket:
        match = entry[1].match
        assert match is not None
        if _matches(incident, match):
            return entry
    return None


def _rejections(
    incident: Incident, ordered: Sequence[tuple[int, Candidate]], best: tuple[tuple[int, str, int], Candidate] | None
) -> Rejections:
    """Why each candidate but ``best`` lost: mismatches in name order, then the other matches in winning order."""
    rejected: list[tuple[str, str]] = []
    matched: list[tuple[int, Candidate]] = []
    for position, candidate in ordered:
        if candidate.match is None:
            rejected.append((candidate.name, "match section is invalid"))
            continue
        why = mismatch(incident, candidate.match)
        if why:
            rejected.append((candidate.name, why))
        elif best is None or position != best[0][2]:
            matched.append((position, candidate))
    if best is not None:
        matched.sort(key=_rank)
        why = f"lower priority than {best[1].name!r} (or same priority, later name)"
        rejected.extend((candidate.name, why) for _, candidate in matched)
    return tuple(rejected)


def select_policy(incident: Incident, candidates: Iterable[Candidate]) -> Selection:
    """The policy for ``incident``: ``policyRef`` pins one; else the highest priority that matches, ties by name.

    Pass a ``PolicySet`` when selecting repeatedly from the same policies; any other
    iterable is scanned once (no index is built for a single call).
    """
    namespace = incident.namespace
    found: tuple[tuple[int, str, int], Candidate] | None = None
    ordered: Callable[[], Sequence[tuple[int, Candidate]]]
    if isinstance(candidates, PolicySet):
        space = candidates.namespace(namespace)
        if space is None:
            space = _EMPTY
        if incident.policy_ref:
            return _pinned(incident, named(candidates, namespace, incident.policy_ref))
        found = _first(incident, space.by_alert.get(incident.alert, ()))
        wildcard = _first(incident, space.any_alert)
        if wildcard is not None and (found is None or wildcard[0] < found[0]):
            found = wildcard
        by_name_order = space.by_name_order
        ordered = lambda: by_name_order  # noqa: E731
    else:
        members = [c for c in candidates if c.namespace == namespace]
        if incident.policy_ref:
            return _pinned(incident, named(members, namespace, incident.policy_ref))
        for position, candidate in enumerate(members):
            match = candidate.match
            if match is None or (match.alerts and incident.alert not in match.alerts):
                continue
            if _matches(incident, match):
                key = _rank((position, candidate))
                if found is None or key < found[0]:
                    found = (key, candidate)
        ordered = lambda: sorted(enumerate(members), key=lambda item: item[1].name)  # noqa: E731

    def explain() -> Rejections:
        return _rejections(incident, ordered(), found)

    if found is None:
        return Selection(
            None, f"no RemediationPolicy in namespace {namespace!r} matches alert {incident.alert!r}", explain
        )
    best = found[1]
    return Selection(best, f"matched alert {incident.alert!r} (priority {best.priority})", explain)


def named(candidates: Iterable[Candidate], namespace: str, name: str | None) -> Candidate | None:
    """The candidate called ``name`` in ``namespace`` (the first given, if two are); indexed in a ``PolicySet``."""
    if name is None:
        return None
    if isinstance(candidates, PolicySet):
        space = candidates.namespace(namespace)
        return space.by_name.get(name) if space is not None else None
    return next((c for c in candidates if c.name == name and c.namespace == namespace), None)


def _pinned(incident: Incident, pinned: Candidate | None) -> Selection:
    if pinned is None:
        return Selection(None, f"policyRef {incident.policy_ref!r} does not exist in namespace {incident.namespace!r}")
    return Selection(pinned, f"pinned by policyRef {pinned.name!r}")
