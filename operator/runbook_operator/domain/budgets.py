"""RemediationBudgets: limits that hold across policies, decided without I/O.

A budget selects the policies of its namespace by label (an empty selector: all of them),
optionally only incidents of some alerts or severities, and limits what they may do together:

- ``remediations {limit, window}``: remediation rounds started in any sliding window (a round
  starts with its first remediation step that changes something: a restart, a scale, ...);
- ``destructiveSteps {limit, window}``: destructive remediation steps started in any window;
- ``perTarget {limit, window}``: remediation rounds started on one target in any window;
- ``concurrentIncidents``: incidents remediating at once (from their first remediation step
  until they resolve or escalate).

Its status is the ledger: one ``Spend`` per round and per destructive step allowed to start, one
``Hold`` per incident remediating. The engine writes the ledger, with a resourceVersion
precondition, *before* the step may be claimed; a step is claimed only once what it needs is in
the ledger (``Budget.needs`` is false). Ledger entries are keyed by incident, kind, step and
round, so two operators that race for one step spend once, and nothing is spent twice.

Windows slide, and are exact for the times steps start: a step starts at most ``GRACE`` after its
spend is counted (an older spend, never used because the step still waited, is renewed first;
a round's spend is used once its first step started), and a spend counts for its window plus
``GRACE``. So two steps that one limit keeps apart start at least a window apart, whatever
happens between the spend and the start.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from runbook_operator.domain.durations import format_duration
from runbook_operator.domain.evolve import evolve
from runbook_operator.domain.model import Incident, LabelSelector, Policy, PolicyError, Step
from runbook_operator.domain.parsing import parse_duration_at, parse_selector, parse_severities
from runbook_operator.domain.wire import parse_timestamp, timestamp

GRACE = 15.0  # seconds a spend stays good for the step it was made for, before the step starts
ROUND, DESTRUCTIVE = "remediation", "destructive"  # the kinds of spend
Key = tuple[str, str, str, int]


def _key(uid: str, kind: str, step: str, attempt: int) -> Key:
    """What a spend is for: a destructive step of a round, or the round itself (whichever step started it)."""
    return (uid, kind, step if kind == DESTRUCTIVE else "", attempt)


@dataclass(frozen=True)
class Window:
    limit: int
    seconds: float

    def text(self, what: str) -> str:
        return f"{self.limit} {what} per {format_duration(self.seconds)}"


@dataclass(frozen=True)
class Ask:
    """What one remediation step asks of the budgets before it starts."""

    uid: str  # the incident's
    incident: str  # namespace/name, for people reading the ledger
    step: str
    attempt: int
    target: str  # str(Target), or "" when the incident names none
    destructive: bool
    round_started: bool = False  # a step of this round already started: the round is spent for good

    @classmethod
    def of(cls, incident: Incident, step: Step, attempt: int, round_started: bool = False) -> Ask:
        target = str(incident.target) if incident.target is not None else ""
        where = f"{incident.namespace}/{incident.name}"
        return cls(incident.uid, where, step.name, attempt, target, step.destructive, round_started)

    def key(self, kind: str) -> Key:
        return _key(self.uid, kind, self.step, self.attempt)


@dataclass(frozen=True)
class Spend:
    uid: str
    incident: str
    kind: str  # ROUND: a remediation round; DESTRUCTIVE: one destructive step of it
    step: str  # the destructive step; for a round, the step that started it
    attempt: int
    target: str
    at: datetime
    approvedBy: str | None = None  # started past the budget, with this person's approval

    @property
    def key(self) -> Key:
        return _key(self.uid, self.kind, self.step, self.attempt)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": self.kind, "uid": self.uid, "incident": self.incident, "step": self.step,
            "attempt": self.attempt, "at": timestamp(self.at),
        }  # fmt: skip
        if self.target:
            out["target"] = self.target
        if self.approvedBy:
            out["approvedBy"] = self.approvedBy
        return out


@dataclass(frozen=True)
class Hold:
    uid: str
    incident: str
    since: datetime

    def to_dict(self) -> dict[str, Any]:
        return {"uid": self.uid, "incident": self.incident, "since": timestamp(self.since)}


@dataclass(frozen=True)
class Refusal:
    """Why a budget does not let a step start now, and when it frees up (None: when an incident ends)."""

    budget: str  # namespace/name
    why: str
    frees_at: datetime | None

    def text(self) -> str:
        when = f"; frees up at {timestamp(self.frees_at)}" if self.frees_at is not None else ""
        return f"budget {self.budget}: {self.why}{when}"


@dataclass(frozen=True)
class Budget:
    namespace: str
    name: str
    generation: int = 1
    selector: LabelSelector = field(default_factory=LabelSelector)
    alerts: frozenset[str] = frozenset()
    severities: frozenset[str] = frozenset()
    destructive: Window | None = None
    remediations: Window | None = None
    per_target: Window | None = None
    concurrent: int | None = None
    spent: tuple[Spend, ...] = ()
    holds: tuple[Hold, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def selects(self, policy: Policy, incident: Incident, severity: str) -> bool:
        return (
            self.selector.matches(policy.labels)
            and (not self.alerts or incident.alert in self.alerts)
            and (not self.severities or severity in self.severities)
        )

    # -- what a step needs, and whether it may have it -------------------------------------
    def needs(self, ask: Ask, now: datetime) -> bool:
        """Must the ledger change before this step may start (a spend or a hold it lacks)?"""
        return bool(self._lacking(ask, now)) or self._needs_hold(ask)

    def _lacking(self, ask: Ask, now: datetime) -> list[str]:
        """The kinds of spend this step lacks: its round's, and its own if it is destructive."""
        lacking = []
        if self.remediations is not None or (self.per_target is not None and ask.target):
            spend = self._spent(ask.key(ROUND))
            if spend is None or (not ask.round_started and (now - spend.at).total_seconds() > GRACE):
                lacking.append(ROUND)
        if ask.destructive and self.destructive is not None:
            spend = self._spent(ask.key(DESTRUCTIVE))
            if spend is None or (now - spend.at).total_seconds() > GRACE:
                lacking.append(DESTRUCTIVE)
        return lacking

    def _spent(self, key: Key) -> Spend | None:
        return next((s for s in self.spent if s.key == key), None)

    def _needs_hold(self, ask: Ask) -> bool:
        return self.concurrent is not None and not any(h.uid == ask.uid for h in self.holds)

    def refusal(self, ask: Ask, now: datetime) -> Refusal | None:
        """Why this step may not start now, or None when the budget has room for what it needs."""
        if self._needs_hold(ask) and self.concurrent is not None and len(self.holds) >= self.concurrent:
            who = ", ".join(h.incident for h in self.holds[:3]) + (" …" if len(self.holds) > 3 else "")
            return Refusal(self.key, f"{len(self.holds)} of {self.concurrent} incident(s) remediating ({who})", None)
        lacking = self._lacking(ask, now)
        checks: list[tuple[Window | None, str, list[Spend]]] = []
        if DESTRUCTIVE in lacking:
            mine = ask.key(DESTRUCTIVE)
            others = [s for s in self.spent if s.kind == DESTRUCTIVE and s.key != mine]
            checks.append((self.destructive, "destructive step(s)", others))
        if ROUND in lacking:
            mine = ask.key(ROUND)
            rounds = [s for s in self.spent if s.kind == ROUND and s.key != mine]
            checks.append((self.remediations, "remediation(s)", rounds))
            if ask.target:
                on = [s for s in rounds if s.target == ask.target]
                checks.append((self.per_target, f"remediation(s) of {ask.target}", on))
        for window, what, counted in checks:
            refused = _full(counted, window, now) if window is not None else None
            if refused is not None and window is not None:  # (window: for the type checker)
                used, frees = refused
                return Refusal(self.key, f"{used} of {window.text(what)} spent", frees)
        return None

    # -- the ledger's changes --------------------------------------------------------------
    def spend(self, ask: Ask, now: datetime, approved_by: str | None = None) -> Budget:
        """The ledger with what this step lacks added (its round's spend, its own, its hold),
        expired entries dropped.

        The caller checked :meth:`refusal` (or has a person's approval past it); a spend this step
        already has is renewed, never doubled."""
        budget = self.pruned(now)
        spent = budget.spent
        for kind in budget._lacking(ask, now):
            spend = Spend(ask.uid, ask.incident, kind, ask.step, ask.attempt, ask.target, now, approved_by)
            spent = (*(s for s in spent if s.key != spend.key), spend)
        holds = budget.holds
        if budget._needs_hold(ask):
            holds = (*holds, Hold(ask.uid, ask.incident, now))
        return evolve(budget, spent=spent, holds=holds)

    def release(self, uid: str) -> Budget:
        """The ledger without this incident's hold (it ended)."""
        return evolve(self, holds=tuple(h for h in self.holds if h.uid != uid))

    @property
    def _windows(self) -> list[float]:
        return [w.seconds for w in (self.destructive, self.remediations, self.per_target) if w is not None]

    def pruned(self, now: datetime) -> Budget:
        """Without the spends no window counts any more."""
        horizon = now - timedelta(seconds=max(self._windows, default=0.0) + GRACE)
        kept = tuple(s for s in self.spent if s.at > horizon)
        return self if len(kept) == len(self.spent) else evolve(self, spent=kept)

    def used(self, now: datetime, kind: str = DESTRUCTIVE) -> int:
        """Spends of this kind its window counts now."""
        window = self.destructive if kind == DESTRUCTIVE else self.remediations
        if window is None:
            return 0
        return len(_counting((s for s in self.spent if s.kind == kind), window, now))

    def next_free(self, now: datetime) -> datetime | None:
        """When the next destructive step or remediation round may start again, if either limit
        is spent now (the later of the two)."""
        frees = []
        for kind, window in ((DESTRUCTIVE, self.destructive), (ROUND, self.remediations)):
            refused = _full((s for s in self.spent if s.kind == kind), window, now) if window else None
            if refused is not None and refused[1] is not None:
                frees.append(refused[1])
        return max(frees, default=None)

    def next_change(self, now: datetime) -> datetime | None:
        """The next time a spend leaves a window, after which :meth:`status` says less."""
        ends = (s.at + timedelta(seconds=w + GRACE) for s in self.spent for w in self._windows or [0.0])
        return min((t for t in ends if t > now), default=None)

    def status(self, now: datetime) -> dict[str, Any]:
        """The ``.status`` the operator writes: the ledger and, for people, what it adds up to."""
        out: dict[str, Any] = {
            "observedGeneration": self.generation,
            "spent": [s.to_dict() for s in self.spent],
            "holds": [h.to_dict() for h in self.holds],
            "remediating": len(self.holds),
        }
        if self.destructive is not None:
            out["destructiveUsed"] = self.used(now)
        if self.remediations is not None:
            out["remediationsUsed"] = self.used(now, ROUND)
        free = self.next_free(now)
        out["nextFree"] = timestamp(free) if free is not None else None
        return out


def _counting(spent: Iterable[Spend], window: Window, now: datetime) -> list[Spend]:
    """The spends the window counts now, oldest first."""
    start = now - timedelta(seconds=window.seconds + GRACE)
    return sorted((s for s in spent if s.at > start), key=lambda s: s.at)


def _full(spent: Iterable[Spend], window: Window, now: datetime) -> tuple[int, datetime | None] | None:
    """(used, when one more fits) if the window has no room now, else None. A limit of 0 never frees."""
    counting = _counting(spent, window, now)
    if len(counting) < window.limit:
        return None
    if window.limit == 0:
        return len(counting), None
    # one more fits once all but limit-1 of them have left the window
    oldest = counting[len(counting) - window.limit]
    return len(counting), oldest.at + timedelta(seconds=window.seconds + GRACE)


def applicable(
    budgets: Sequence[Budget], defaults: Sequence[Budget], policy: Policy, incident: Incident, severity: str
) -> tuple[Budget, ...]:
    """The budgets of the incident's namespace that select it; where none does, the operator-wide defaults."""
    own = tuple(b for b in budgets if b.namespace == incident.namespace and b.selects(policy, incident, severity))
    return own or tuple(b for b in defaults if b.selects(policy, incident, severity))


# -- reading a RemediationBudget --------------------------------------------------------------
@dataclass(frozen=True)
class InvalidBudget:
    namespace: str
    name: str
    error: str


def parse_budget(body: Mapping[str, Any]) -> Budget | InvalidBudget:
    """A RemediationBudget body, with its ledger; a bad one says which field is wrong."""
    meta, spec = body.get("metadata") or {}, body.get("spec") or {}
    namespace, name = str(meta.get("namespace") or ""), str(meta.get("name") or "")
    try:
        severities = parse_severities(spec.get("severities"), "spec.severities")
        concurrent = spec.get("concurrentIncidents")
        if concurrent is not None and (not isinstance(concurrent, int) or concurrent < 0):
            raise PolicyError("spec.concurrentIncidents: must be a whole number, 0 or more")
        budget = Budget(
            namespace=namespace,
            name=name,
            generation=int(meta.get("generation") or 1),
            selector=parse_selector(spec.get("policySelector") or {}, "spec.policySelector"),
            alerts=frozenset(str(a) for a in spec.get("alerts") or []),
            severities=severities,
            destructive=_window(spec.get("destructiveSteps"), "spec.destructiveSteps"),
            remediations=_window(spec.get("remediations"), "spec.remediations"),
            per_target=_window(spec.get("perTarget"), "spec.perTarget"),
            concurrent=concurrent,
        )
    except PolicyError as err:
        return InvalidBudget(namespace, name, str(err))
    status = body.get("status") or {}
    return evolve(budget, spent=tuple(_spends(status.get("spent"))), holds=tuple(_holds(status.get("holds"))))


def _window(raw: Any, path: str) -> Window | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise PolicyError(f"{path}: must be an object with limit and window")
    limit = raw.get("limit")
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
        raise PolicyError(f"{path}.limit: must be a whole number, 0 or more")
    seconds = parse_duration_at(raw.get("window"), f"{path}.window")
    if seconds <= 0:
        raise PolicyError(f"{path}.window: must be longer than 0s")
    return Window(limit, seconds)


def _spends(raw: Any) -> Iterable[Spend]:
    """The ledger as written; an entry this version cannot read is dropped, never guessed."""
    for item in raw if isinstance(raw, list) else []:
        try:
            yield Spend(
                str(item["uid"]), str(item.get("incident", "")), str(item.get("kind") or DESTRUCTIVE),
                str(item["step"]), int(item["attempt"]), str(item.get("target") or ""), parse_timestamp(item["at"]),
                item.get("approvedBy") or None,
            )  # fmt: skip
        except (KeyError, TypeError, ValueError):
            continue


def _holds(raw: Any) -> Iterable[Hold]:
    for item in raw if isinstance(raw, list) else []:
        try:
            yield Hold(str(item["uid"]), str(item.get("incident", "")), parse_timestamp(item["since"]))
        except (KeyError, TypeError, ValueError):
            continue
