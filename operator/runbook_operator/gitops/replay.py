"""Replay: what a set of policies would have done to an incident that really happened.

The real core (``domain.lifecycle.decide`` and ``complete``) is driven with a simulated clock:
no sleeping, no I/O. A step whose action and rendered parameters match a recorded step
(``StepRecord.paramsDigest``) takes the recorded outcome, message and duration. A step with no
recorded outcome is *unknown*: the replay follows both what happens if it succeeds and if it
fails (or one of them, with ``assume``), and says which it assumed, never silently. A step
that waits for approval is approved as it was in the recorded run (the same step and
parameters, after the same delay); one nobody approved then waits, and the replay ends there.
A notification (a step of an escalation or an announcement) with no record is taken as sent:
its outcome changes no phase.

Each incident is replayed alone: a target lock or cooldown that another incident held in the
recorded run is not reproduced (its peers are not in the recording). It is replayed as it
opened: ``spec.resolved`` (the alert clearing, or a person closing it, at some later time) is
not, so the replay shows where the policy would have taken it, not that the alert cleared.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from runbook_operator.domain import consent
from runbook_operator.domain.consent import Approval
from runbook_operator.domain.evolve import evolve
from runbook_operator.domain.lifecycle import StepCall, StepResult, complete, decide
from runbook_operator.domain.matching import Candidate, named
from runbook_operator.domain.model import DEFAULT_SEVERITY, Incident, Policy
from runbook_operator.domain.progress import Context
from runbook_operator.domain.status import Phase, Status, StepRecord, StepState, parse_timestamp

Assume = Literal["ok", "fail"]
MAX_DECISIONS = 400  # decide() calls in one path: a policy that never rests is reported, not followed forever
MAX_PATHS = 16  # paths of one incident; past it, unknown steps follow the first branch (said in the path)
UNKNOWN_DURATION = 1.0  # seconds an unknown step is taken to run
SETTLED = (Phase.RESOLVED, Phase.ESCALATED)


@dataclass(frozen=True)
class Outcome:
    ok: bool
    message: str
    duration: float


@dataclass(frozen=True)
class Recording:
    """An incident as it happened: its spec and its final status (its steps are the outcomes).

    ``recorded`` may be the status as the API serves it: it is parsed when first needed (a replay
    that only has to know which policy would handle the incident never needs it)."""

    incident: Incident
    recorded: Status | Mapping[str, Any] | None

    @functools.cached_property
    def status(self) -> Status:
        if isinstance(self.recorded, Status):
            return self.recorded
        return Status.from_dict(self.recorded if isinstance(self.recorded, Mapping) else None)

    @functools.cached_property
    def steps(self) -> tuple[StepRecord, ...]:
        """The recorded steps, without parsing the rest of the status (a replay needs only these)."""
        if isinstance(self.recorded, Status):
            return self.recorded.steps
        raw = self.recorded.get("steps") if isinstance(self.recorded, Mapping) else None
        return Status.from_dict({"steps": raw}).steps

    @property
    def started(self) -> datetime:
        if isinstance(self.recorded, Mapping):
            raw = self.recorded.get("startedAt")
            text = raw if isinstance(raw, str) else None
        else:
            text = self.status.startedAt
        for candidate in (text, self.incident.created):
            if candidate:
                with contextlib.suppress(ValueError):  # not a timestamp the operator wrote: the next one
                    return parse_timestamp(candidate)
        return datetime.fromtimestamp(0, UTC)

    def outcomes(self) -> dict[str, list[Outcome]]:
        """Recorded outcomes by the call's digest, in the order they happened."""
        found: dict[str, list[Outcome]] = {}
        for record in sorted(self.steps, key=lambda r: r.startedAt or ""):
            if record.paramsDigest and record.state in (StepState.SUCCEEDED, StepState.FAILED):
                took = record.duration if record.duration is not None else _seconds(record)
                found.setdefault(record.paramsDigest, []).append(
                    Outcome(record.state == StepState.SUCCEEDED, record.message, took)
                )
        return found

    def approval_of(self, step: str, digest: str) -> tuple[str, float] | None:
        """Who approved ``step`` for exactly these parameters in the recorded run, and how long after it asked."""
        for record in self.steps:
            if record.name == step and record.approvedBy and record.approvedDigest == digest:
                asked = record.approvalRequest.requestedAt if record.approvalRequest else record.startedAt
                waited = (parse_timestamp(record.approvedAt) - parse_timestamp(asked)).total_seconds() if (
                    record.approvedAt and asked) else 0.0  # fmt: skip
                return record.approvedBy, max(0.0, waited)
        return None


@dataclass(frozen=True)
class Ran:
    """One step the replay ran (or skipped), as a reviewer reads it."""

    stage: str
    name: str
    action: str
    params: Mapping[str, object]
    ok: bool
    known: bool  # False: no recorded outcome; ``ok`` is what this path assumed
    approved_by: str | None = None
    destructive: bool = False
    changes: bool = False  # not read-only: a remediation step that changes something starts a round
    attempt: int = 1
    started: datetime | None = None  # on the replay's clock


@dataclass(frozen=True)
class Path:
    """One way the incident goes under the replayed policies."""

    policy: str | None
    end: str  # a phase, or "NoPolicy"
    seconds: float  # from the start to the end (or to where it waits, or to when it escalated)
    ran: tuple[Ran, ...] = ()
    waits_for_approval: tuple[str, ...] = ()  # steps that wait for a person and nobody approved then
    unapproved_destructive: tuple[str, ...] = ()  # destructive steps that ran without an approval
    escalations: tuple[str, ...] = ()  # levels reached
    levels: tuple[tuple[str, float], ...] = ()  # each level reached, seconds from the start (escalated: all of them)
    assumed: tuple[tuple[str, Assume], ...] = ()  # unknown steps and what this path assumed of them
    capped: bool = False  # past MAX_PATHS or MAX_DECISIONS: see ``assumed`` and ``end``


@dataclass
class _State:
    incident: Incident
    status: Status
    now: datetime
    ran: list[Ran] = field(default_factory=list)
    assumed: list[tuple[str, Assume]] = field(default_factory=list)
    used: dict[str, int] = field(default_factory=dict)  # digest -> recorded outcomes taken so far
    guessed: dict[str, Assume] = field(default_factory=dict)  # digest -> what this path assumed of that call
    decisions: int = 0
    levels: list[tuple[str, float]] = field(default_factory=list)  # escalation levels as they fired
    settled: datetime | None = None  # when it escalated (the path goes on until every level fired)

    def fork(self) -> _State:
        return _State(self.incident, self.status, self.now, list(self.ran), list(self.assumed), dict(self.used),
                      dict(self.guessed), self.decisions, list(self.levels), self.settled)  # fmt: skip


def replay(recording: Recording, candidates: Sequence[Candidate], assume: Assume | None = None) -> list[Path]:
    """Every path the incident takes under ``candidates`` (its namespace's policies, as proposed)."""
    outcomes = recording.outcomes()
    opened = evolve(recording.incident, approvals=(), resolved=False)  # as it opened; approved as it goes
    start = _State(opened, Status(), recording.started)
    paths: list[Path] = []
    pending = [start]
    while pending:
        state = pending.pop()
        forked = _follow(state, recording, candidates, outcomes, assume, room=MAX_PATHS - len(paths) - len(pending))
        if isinstance(forked, Path):
            paths.append(forked)
        else:
            pending.extend(reversed(forked))
    return paths


def _follow(
    state: _State,
    recording: Recording,
    candidates: Sequence[Candidate],
    outcomes: Mapping[str, list[Outcome]],
    assume: Assume | None,
    room: int,
) -> Path | list[_State]:
    """Drive one path until it ends, waits for a person, or forks on an unknown step (two states)."""
    start = recording.started
    while state.decisions < MAX_DECISIONS:
        state.decisions += 1
        decision = decide(state.incident, state.status, candidates, state.now, nonce=f"replay-{state.decisions}")
        state.status = decision.status
        fired = state.status.escalation.fired
        if len(fired) > len(state.levels):
            state.levels += [(name, (state.now - start).total_seconds()) for name in fired[len(state.levels) :]]
        if decision.run is None:
            waiting = state.status.awaiting_approval()
            if waiting is not None:
                approved = _approve(state, recording, waiting)
                if approved:
                    continue
                if decision.wake_at is None or state.status.phase == Phase.AWAITING_APPROVAL:
                    return _path(state, start, waits=(waiting.name,))
            if state.status.phase == Phase.ESCALATED and state.settled is None:
                state.settled = state.now
            if decision.wake_at is None or (state.status.phase in SETTLED and _every_level_fired(state, candidates)):
                return _path(state, start)
            state.now = max(state.now, decision.wake_at)  # escalated: on to the levels that fire later
            continue
        call = decision.run
        claimed = state.status.record(call.step.stage.value, call.step.name, call.attempt)
        digest = (
            claimed.paramsDigest if claimed and claimed.paramsDigest else consent.digest(call.step.action, call.params)
        )
        taken = state.used.get(digest, 0)
        known = outcomes.get(digest, [])
        if taken < len(known):  # the recorded outcomes of this call, in order; the last one repeats
            state.used[digest] = taken + 1
            _finish(state, call, known[taken], True)
        elif known:
            _finish(state, call, known[-1], True)
        elif call.step.notifies:
            _finish(state, call, Outcome(True, "not recorded: taken as sent", UNKNOWN_DURATION), False)
        elif digest in state.guessed:  # the same call again (a later round): as this path assumed it first
            _finish(state, call, _assumed(state.guessed[digest]), False)
        elif assume is not None or room <= 1:
            chosen: Assume = assume or "ok"
            _guess(state, call, digest, chosen)
        else:
            failing = state.fork()
            _guess(state, call, digest, "ok")
            _guess(failing, call, digest, "fail")
            return [state, failing]
    return evolve(_path(state, start), capped=True)


def _guess(state: _State, call: StepCall, digest: str, chosen: Assume) -> None:
    state.guessed[digest] = chosen
    state.assumed.append((call.step.name, chosen))
    _finish(state, call, _assumed(chosen), False)


def _assumed(chosen: Assume) -> Outcome:
    return Outcome(chosen == "ok", f"not recorded: assumed to {'succeed' if chosen == 'ok' else 'fail'}",
                   UNKNOWN_DURATION)  # fmt: skip


def _finish(state: _State, call: StepCall, outcome: Outcome, known: bool) -> None:
    record = state.status.record(call.step.stage.value, call.step.name, call.attempt)
    approved_by = record.approvedBy if record is not None else None
    started = state.now
    state.now += timedelta(seconds=outcome.duration)
    state.status, _ = complete(state.status, call, StepResult(outcome.ok, outcome.message), state.now,
                               outcome.duration)  # fmt: skip
    step = call.step
    state.ran.append(Ran(step.stage.value, step.name, step.action, dict(call.params), outcome.ok, known, approved_by,
                         step.destructive, not step.read_only, call.attempt, started))  # fmt: skip


def _approve(state: _State, recording: Recording, waiting: StepRecord) -> bool:
    """Approve the waiting step as the recorded run did, if it approved exactly these parameters."""
    request = waiting.approvalRequest
    if request is None:
        return False
    recorded = recording.approval_of(waiting.name, request.digest)
    if recorded is None:
        return False
    by, after = recorded
    approval = Approval(waiting.name, by, waiting.attempt, request.nonce)
    state.incident = evolve(state.incident, approvals=(*state.incident.approvals, approval))
    state.now = max(state.now, parse_timestamp(request.requestedAt) + timedelta(seconds=after))
    return True


def _every_level_fired(state: _State, candidates: Sequence[Candidate]) -> bool:
    """Resolved, or escalated with every level of its escalation reached (a level fires once, at
    escalation or after its time unresolved: how long a change makes people wait is part of it)."""
    status = state.status
    if status.phase != Phase.ESCALATED:
        return True
    found = named(candidates, state.incident.namespace, status.policy)
    plan = Context(state.incident, found if isinstance(found, Policy) else None).escalation(
        status.severity or DEFAULT_SEVERITY
    )
    return all(level.name in status.escalation.fired for level in plan.levels)


def _path(state: _State, start: datetime, waits: tuple[str, ...] = ()) -> Path:
    status = state.status
    unapproved = tuple(r.name for r in state.ran if r.destructive and r.approved_by is None)
    ended = state.settled or state.now
    return Path(
        policy=status.policy,
        end=str(status.phase) if status.policy else "NoPolicy",
        seconds=(ended - start).total_seconds(),
        ran=tuple(state.ran),
        waits_for_approval=waits,
        unapproved_destructive=unapproved,
        escalations=tuple(status.escalation.fired),
        levels=tuple(state.levels),
        assumed=tuple(state.assumed),
    )


def _seconds(record: StepRecord) -> float:
    if record.startedAt and record.finishedAt:
        return (parse_timestamp(record.finishedAt) - parse_timestamp(record.startedAt)).total_seconds()
    return 0.0
