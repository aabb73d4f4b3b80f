"""What a policy change would have done: each incident replayed under the baseline and under
the proposal, the differences named by kind, the riskiest first, as a terminal table, Markdown
(for a pull request's comment; every value from an alert escaped) or JSON (``SCHEMA``).

Kinds of change, riskiest first (``--fail-on`` takes their names):

- ``unapproved-destructive``: a destructive step would now run without anyone's approval;
- ``unmatched``: a policy handled it, none would;
- ``ended-worse``: it would end worse (Resolved < AwaitingApproval < Escalated);
- ``later-escalation``: it would reach people later (escalated in both, later now, or a level of
  the escalation reached later or not at all);
- ``throttled``: a RemediationBudget in the files would have held one of its remediation steps
  (the incidents replayed together, in the order they happened);
- ``unknown-steps``: the proposal runs a call never recorded that the baseline does not (its paths
  assume success and failure);
- ``policy-changed``: another policy would handle it;
- ``approval-added``: it would now wait for a person where it did not;
- ``steps-changed``: other steps, or other outcomes, on the way to the same end;
- ``newly-matched``: no policy handled it, one would;
- ``ended-better``: it would end better.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from runbook_operator.domain.budgets import Ask, Budget, applicable
from runbook_operator.domain.evolve import evolve
from runbook_operator.domain.matching import Candidate, named, select_policy
from runbook_operator.domain.model import DEFAULT_SEVERITY, Incident, Policy, Stage
from runbook_operator.domain.report import md
from runbook_operator.domain.status import StepState, parse_timestamp, timestamp
from runbook_operator.domain.wire import clipped, printable
from runbook_operator.gitops.replay import Assume, Path, Recording, replay

KINDS = (
    "unapproved-destructive",
    "unmatched",
    "ended-worse",
    "later-escalation",
    "throttled",
    "unknown-steps",
    "policy-changed",
    "approval-added",
    "steps-changed",
    "newly-matched",
    "ended-better",
)
RANK = {"Resolved": 0, "AwaitingApproval": 1, "Escalated": 2}  # how an incident ends, best first
SCHEMA = 1  # of --output json; a field's meaning never changes within one


# A remediation step that changes something, as the budgets count it: when it started (epoch
# seconds), the step, its round, whether it is destructive, and who approved it (or None).
Start = tuple[float, str, int, bool, str | None]


@dataclass(frozen=True)
class Spending:
    """What the budgets need of an incident's proposed path: who it is and its starts."""

    uid: str
    target: str
    severity: str
    policy: str
    starts: tuple[Start, ...]


@dataclass(frozen=True)
class Verdict:
    namespace: str
    name: str
    alert: str
    before: tuple[Path, ...]
    after: tuple[Path, ...]
    kinds: tuple[str, ...]  # in KINDS order: the first is the riskiest
    spending: Spending | None = None  # with budgets only (``compare(..., budgeted=True)``)
    throttled: str = ""  # which step a budget would have held, and why

    @property
    def changed(self) -> bool:
        return bool(self.kinds)


def compare(
    recording: Recording,
    baseline: Sequence[Candidate],
    proposed: Sequence[Candidate],
    assume: Assume | None = None,
    every_path: bool = True,
    budgeted: bool = False,
) -> Verdict:
    """``every_path`` False: an incident that the same policy, as written, handles under both is
    not replayed (nothing about it can change: a replay depends on nothing else); its paths are
    left empty. The table and Markdown show only changes; JSON shows every incident's paths.
    ``budgeted``: keep what the budgets need (``Verdict.spending``) for :func:`throttled`."""
    inc = recording.incident
    chosen = select_policy(inc, proposed).chosen
    same = _same(select_policy(inc, baseline).chosen, chosen)
    if same and not every_path:
        spending = _recorded_spending(recording, chosen) if budgeted else None
        return Verdict(inc.namespace, inc.name, inc.alert, (), (), (), spending)
    before = tuple(replay(recording, baseline, assume))
    after = before if same else tuple(replay(recording, proposed, assume))
    spending = _replayed_spending(recording, chosen, after) if budgeted else None
    return Verdict(inc.namespace, inc.name, inc.alert, before, after, _kinds(before, after), spending)


def _spending(recording: Recording, policy: Candidate | None, starts: Sequence[Start]) -> Spending | None:
    if not isinstance(policy, Policy):
        return None
    inc = recording.incident
    severity = inc.severity or policy.severity or DEFAULT_SEVERITY
    return Spending(inc.uid, str(inc.target) if inc.target else "", severity, policy.name, tuple(starts))


def _replayed_spending(recording: Recording, policy: Candidate | None, after: Sequence[Path]) -> Spending | None:
    """The starts of the proposal's first path, in time."""
    ran = after[0].ran if after else ()
    starts = [(r.started.timestamp(), r.name, r.attempt, r.destructive, r.approved_by)
              for r in ran if r.stage == Stage.REMEDIATE.value and r.changes and r.started is not None]  # fmt: skip
    return _spending(recording, policy, starts)


def _recorded_spending(recording: Recording, policy: Candidate | None) -> Spending | None:
    """The starts as the incident recorded them (its policy unchanged, the replay would repeat them)."""
    if not isinstance(policy, Policy):
        return None
    steps = {s.name: s for s in policy.remediate}
    started = (StepState.RUNNING, StepState.SUCCEEDED, StepState.FAILED)
    starts = []
    for record in recording.status.steps:
        step = steps.get(record.name)
        if record.stage != Stage.REMEDIATE.value or step is None or step.read_only or record.state not in started:
            continue
        if record.startedAt:
            at = parse_timestamp(record.startedAt).timestamp()
            starts.append((at, record.name, record.attempt, step.destructive, record.approvedBy))
    return _spending(recording, policy, starts)


def throttled(
    verdicts: Sequence[Verdict],
    budgets: Sequence[Budget],
    defaults: Sequence[Budget],
    policies: Mapping[str, Sequence[Candidate]],
) -> list[Verdict]:
    """The verdicts, with ``throttled`` where a budget would have held a remediation step.

    The incidents' starts are played in the order they happened against the budgets' ledgers
    (empty at first). A step a budget has no room for would have waited: the incident is marked
    and its later steps spend nothing (when they would have run is not known). A step someone
    approved passes, and is counted."""
    ledgers = {b.key: b for b in (*budgets, *defaults)}
    own_keys = {b.key for b in budgets}
    events = sorted(
        (start[0], i, start) for i, v in enumerate(verdicts) if v.spending is not None for start in v.spending.starts
    )
    held: dict[int, str] = {}
    rounds: set[tuple[int, int]] = set()
    for at, i, (_, step_name, attempt, destructive, approved_by) in events:
        if i in held:
            continue
        v = verdicts[i]
        spending = v.spending
        assert spending is not None
        policy = named(policies.get(v.namespace, ()), v.namespace, spending.policy)
        if not isinstance(policy, Policy):
            continue
        now = datetime.fromtimestamp(at, UTC)
        uid = spending.uid or f"{v.namespace}/{v.name}"  # files written by hand may name no uid
        incident = Incident(namespace=v.namespace, name=v.name, generation=0, alert=v.alert, uid=uid)
        own = [b for k, b in ledgers.items() if k in own_keys]
        chosen = applicable(own, [b for k, b in ledgers.items() if k not in own_keys], policy, incident,
                            spending.severity)  # fmt: skip
        ask = Ask(uid, f"{v.namespace}/{v.name}", step_name, attempt, spending.target, destructive,
                  (i, attempt) in rounds)  # fmt: skip
        lacking = [b for b in chosen if b.needs(ask, now)]
        refusals = [r for b in lacking if (r := b.refusal(ask, now)) is not None]
        if refusals and approved_by is None:
            held[i] = f"{step_name} (round {attempt}, {timestamp(now)}) would wait Throttled: {refusals[0].text()}"
            continue
        for budget in lacking:
            ledgers[budget.key] = budget.spend(ask, now, approved_by)
        rounds.add((i, attempt))
    return [
        evolve(v, kinds=tuple(k for k in KINDS if k in {*v.kinds, "throttled"}), throttled=held[i])
        if i in held else v
        for i, v in enumerate(verdicts)
    ]  # fmt: skip


def _same(one: Candidate | None, other: Candidate | None) -> bool:
    """The same policy, as written: a policy is what its spec says (parsed the same way here)."""
    if one is other:
        return True
    if isinstance(one, Policy) and isinstance(other, Policy) and one.spec and other.spec:
        return (one.namespace, one.name, one.spec) == (other.namespace, other.name, other.spec)
    return one == other and getattr(one, "spec", None) == getattr(other, "spec", None)  # spec: not in ==


def _kinds(before: Sequence[Path], after: Sequence[Path]) -> tuple[str, ...]:
    found: set[str] = set()
    was = {name for p in before for name in p.unapproved_destructive}
    if any(set(p.unapproved_destructive) - was for p in after):
        found.add("unapproved-destructive")
    had, has = _policy(before), _policy(after)
    if had and not has:
        found.add("unmatched")
    elif has and not had:
        found.add("newly-matched")
    elif had != has:
        found.add("policy-changed")
    worst_before, worst_after = _worst(before), _worst(after)
    if had and has and worst_after > worst_before:
        found.add("ended-worse")
    elif had and has and worst_after < worst_before:
        found.add("ended-better")
    if _escalated_at(after) > _escalated_at(before) > 0 or _level_later(before, after):
        found.add("later-escalation")
    if {n for p in after for n, _ in p.assumed} - {n for p in before for n, _ in p.assumed}:
        found.add("unknown-steps")
    if any(p.waits_for_approval for p in after) and not any(p.waits_for_approval for p in before):
        found.add("approval-added")
    if has and had and not found & {"ended-worse", "ended-better"} and _route(before) != _route(after):
        found.add("steps-changed")
    return tuple(k for k in KINDS if k in found)


def _policy(paths: Sequence[Path]) -> str | None:
    return next((p.policy for p in paths if p.policy), None)


def _worst(paths: Sequence[Path]) -> int:
    return max((RANK.get(p.end, len(RANK)) for p in paths), default=0)


def _escalated_at(paths: Sequence[Path]) -> float:
    return max((p.seconds for p in paths if p.end == "Escalated"), default=0.0)


def _level_later(before: Sequence[Path], after: Sequence[Path]) -> bool:
    """Escalated in both, and a level people were reached by before is reached later now, or never."""
    if _worst(before) != RANK["Escalated"] or _worst(after) != RANK["Escalated"]:
        return False
    was, now = _level_times(before), _level_times(after)
    return any(name not in now or now[name] > at + 0.5 for name, at in was.items())  # timestamps: to the second


def _level_times(paths: Sequence[Path]) -> dict[str, float]:
    """Each escalation level, when the latest of the escalated paths reached it."""
    times: dict[str, float] = {}
    for p in paths:
        if p.end == "Escalated":
            for name, at in p.levels:
                times[name] = max(at, times.get(name, at))
    return times


def _route(paths: Sequence[Path]) -> list[tuple[str, ...]]:
    return sorted(tuple(f"{r.stage}/{r.name}/{r.ok}" for r in p.ran) for p in paths)


@dataclass(frozen=True)
class Summary:
    verdicts: tuple[Verdict, ...]
    not_replayable: int = 0  # archived before the archive kept what a replay needs

    def count(self, kind: str) -> int:
        return sum(kind in v.kinds for v in self.verdicts)

    def changed(self) -> list[Verdict]:
        """The incidents that change, the riskiest first, then by name."""
        return sorted((v for v in self.verdicts if v.changed),
                      key=lambda v: (KINDS.index(v.kinds[0]), v.namespace, v.name))  # fmt: skip

    def failing(self, rules: Iterable[str]) -> dict[str, int]:
        """Of the ``--fail-on`` kinds, those that occur, with how often."""
        return {k: self.count(k) for k in rules if self.count(k)}


# -- outputs ----------------------------------------------------------------------------------


def _end(paths: Sequence[Path]) -> str:
    ends = []
    for p in paths:
        text = f"{p.end} after {_duration(p.seconds)}"
        if p.assumed:
            text += " if " + ", ".join(f"{name} {'succeeds' if a == 'ok' else 'fails'}" for name, a in p.assumed)
        if p.waits_for_approval:
            text += f" (waits for approval of {', '.join(p.waits_for_approval)})"
        ends.append(text)
    return "; ".join(ends) or "-"


def _duration(seconds: float) -> str:
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _cell(text: str, limit: int = 60) -> str:
    return clipped(" ".join(printable(text).split()), limit)


def table(summary: Summary) -> str:
    """For a terminal: one line per changed incident, then the counts."""
    rows = [("INCIDENT", "ALERT", "CHANGE", "POLICY", "BEFORE", "AFTER")]
    for v in summary.changed():
        rows.append((
            _cell(f"{v.namespace}/{v.name}", 50), _cell(v.alert, 30), ",".join(v.kinds),
            _cell(f"{_policy(v.before) or '-'} -> {_policy(v.after) or '-'}", 50),
            _cell(_end(v.before), 80), _cell(_end(v.after), 80),
        ))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = (
        ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows] if len(rows) > 1 else []
    )
    return "\n".join([*lines, *([""] if lines else []), _totals(summary)]) + "\n"


def _totals(summary: Summary) -> str:
    changed = len(summary.changed())
    parts = [f"{changed} of {len(summary.verdicts)} incident(s) would change"]
    parts += [f"{summary.count(k)} {k}" for k in KINDS if summary.count(k)]
    if summary.not_replayable:
        parts.append(f"{summary.not_replayable} not replayable (archived before the archive kept their spec)")
    return "; ".join(parts)


def markdown(summary: Summary) -> str:
    """For a pull request's comment: every value from an incident or a policy escaped."""
    out = ["### What this change would have done", "", md(_totals(summary)), ""]
    changed = summary.changed()
    if changed:
        out += ["| incident | alert | change | policy | before | after |", "|---|---|---|---|---|---|"]
        for v in changed:
            out.append("| " + " | ".join((
                md(f"{v.namespace}/{v.name}"), md(v.alert), md(", ".join(v.kinds)),
                md(f"{_policy(v.before) or '-'} → {_policy(v.after) or '-'}"),
                md(_end(v.before), limit=300), md(_end(v.after), limit=300),
            )) + " |")  # fmt: skip
        out.append("")
        risky = [v for v in changed if "unapproved-destructive" in v.kinds]
        for v in risky:
            steps = sorted({n for p in v.after for n in p.unapproved_destructive})
            out.append(
                f"- **{md(f'{v.namespace}/{v.name}')}**: " + md(f"would run {', '.join(steps)} without approval")
            )
        out += [f"- **{md(f'{v.namespace}/{v.name}')}**: " + md(v.throttled) for v in changed if v.throttled]
    return "\n".join(out).rstrip() + "\n"


def as_json(summary: Summary, incidents: Sequence[str] | None = None) -> str:
    """``--output json``: schema ``SCHEMA`` (docs/policies.md describes it), on one line (the C
    encoder). ``incidents``: each verdict already encoded (``encoded``), as worker processes do."""
    head = {
        "schema": SCHEMA,
        "summary": {"incidents": len(summary.verdicts), "changed": len(summary.changed()),
                    "notReplayable": summary.not_replayable, "kinds": {k: summary.count(k) for k in KINDS}},
    }  # fmt: skip
    items = incidents if incidents is not None else [encoded(v) for v in summary.verdicts]
    return f'{json.dumps(head, separators=(",", ":"))[:-1]},"incidents":[{",".join(items)}]}}\n'


def encoded(v: Verdict) -> str:
    """One incident of ``--output json``."""

    def path(p: Path) -> dict[str, Any]:
        return {
            "policy": p.policy, "end": p.end, "seconds": round(p.seconds, 3),
            "assumed": [{"step": n, "outcome": a} for n, a in p.assumed],
            "waitsForApproval": list(p.waits_for_approval), "unapprovedDestructive": list(p.unapproved_destructive),
            "escalations": list(p.escalations), "capped": p.capped,
            "levels": [{"name": n, "seconds": round(at, 3)} for n, at in p.levels],
            "steps": [{"stage": r.stage, "name": r.name, "action": r.action, "ok": r.ok, "recorded": r.known,
                       "approvedBy": r.approved_by, "destructive": r.destructive, "params": r.params} for r in p.ran],
        }  # fmt: skip

    document = {"namespace": v.namespace, "name": v.name, "alert": v.alert, "changes": list(v.kinds),
                "before": [path(p) for p in v.before], "after": [path(p) for p in v.after]}  # fmt: skip
    if v.throttled:
        document["throttled"] = v.throttled
    return json.dumps(document, separators=(",", ":"), default=str)


def rethrottled(text: str, v: Verdict) -> str:
    """An incident's JSON (``encoded``, made before :func:`throttled` ran) with its verdict's
    changes and throttle."""
    document = json.loads(text)
    document["changes"] = list(v.kinds)
    if v.throttled:
        document["throttled"] = v.throttled
    return json.dumps(document, separators=(",", ":"), default=str)
