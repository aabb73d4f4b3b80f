"""RemediationBudgets in the pure core (issue 26): the ledger, and decide() throttling steps.

The engine's part (writing the ledger with a resourceVersion precondition before a step is
claimed) is played here by ``Fleet``, which applies each Reservation the core asks for; the
property tests play two operators racing with stale copies of the ledger and of each incident.
"""

from __future__ import annotations

import copy
import itertools
import random
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runbook_operator.domain.budgets import GRACE, Ask, Budget, InvalidBudget, Window, applicable, parse_budget
from runbook_operator.domain.consent import Approval
from runbook_operator.domain.lifecycle import Decision, StepResult, complete, decide
from runbook_operator.domain.matching import Candidate
from runbook_operator.domain.model import Incident, Policy
from runbook_operator.domain.status import Phase, Status
from runbook_operator.domain.wire import timestamp
from tests.unit.builders import check, policy, request

T0 = datetime(2026, 12, 8, 3, 0, tzinfo=UTC)
FIVE_MINUTES = 300.0


def restart_policy(name: str = "restart", labels: dict[str, str] | None = None, **extra: Any) -> Policy:
    """diagnose, one destructive restart that needs no approval, verify."""
    body_labels = {"labels": labels} if labels else {}
    p = policy(
        name,
        match={"alerts": extra.pop("alerts", ["InstanceManagerDown"])},
        diagnose=[check("ping")],
        remediate=[
            request("restart", requiresApproval=False, **{"with": {"url": "http://127.0.0.1:1/r", "destructive": True}})
        ],
        verify=[check("healthy")],
        **extra,
    )
    return replace(p, labels=body_labels.get("labels", {}))


def budget_body(name: str = "b", namespace: str = "ns", **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": namespace, "generation": 1}, "spec": spec}


def budget(name: str = "b", namespace: str = "ns", **spec: Any) -> Budget:
    parsed = parse_budget(budget_body(name, namespace, **spec))
    assert isinstance(parsed, Budget), parsed
    return parsed


def ask(
    uid: str = "u1",
    step: str = "restart",
    attempt: int = 1,
    target: str = "",
    destructive: bool = True,
    round_started: bool = False,
) -> Ask:
    return Ask(uid, f"ns/{uid}", step, attempt, target, destructive, round_started)


class Fleet:
    """Incidents driven together through decide(), sharing budgets whose ledgers this applies."""

    def __init__(self, candidates: Sequence[Candidate], budgets: Sequence[Budget], defaults: Sequence[Budget] = ()):
        self.candidates = list(candidates)
        self.ledgers = {b.key: b for b in (*budgets, *defaults)}
        self.default_keys = {b.key for b in defaults}
        self.now = T0
        self.incidents: dict[str, Incident] = {}
        self.status: dict[str, Status] = {}
        self.calls: list[tuple[str, str, datetime]] = []  # (incident, step, when): what reached the world
        self.events: list[tuple[str, str, str]] = []  # (incident, reason, message)
        self.nonces = (f"nonce-{n}" for n in itertools.count(1))
        self.fixed: set[str] = set()  # incidents whose verification passes (all, unless told otherwise)
        self.broken: set[str] = set()

    def open(self, name: str, alert: str = "InstanceManagerDown", target: str | None = None, **spec: Any) -> None:
        body = {
            "metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}", "generation": 1,
                         "creationTimestamp": timestamp(self.now)},
            "spec": {"alert": alert, **({"target": {"kind": "Deployment", "name": target}} if target else {}), **spec},
        }  # fmt: skip
        self.incidents[name] = Incident.from_body(body)
        self.status[name] = Status()

    def budgets(self) -> tuple[list[Budget], list[Budget]]:
        own = [b for k, b in self.ledgers.items() if k not in self.default_keys]
        return own, [b for k, b in self.ledgers.items() if k in self.default_keys]

    def once(self, name: str) -> Decision:
        """One decision for this incident, and whatever it asks done (a reservation or a step)."""
        own, defaults = self.budgets()
        inc, before = self.incidents[name], self.status[name]
        decision = decide(
            inc, before, self.candidates, self.now, nonce=next(self.nonces), budgets=own, defaults=defaults
        )
        self.status[name] = decision.status
        self.events.extend((name, e.reason, e.message) for e in decision.events)
        if decision.reserve is not None:
            self.reserve(decision)
        if decision.run is not None:
            call = decision.run
            self.calls.append((name, call.step.name, self.now))
            ok = name not in self.broken
            self.status[name], events = complete(
                self.status[name], call, StepResult(ok, "ok" if ok else "no"), self.now
            )
            self.events.extend((name, e.reason, e.message) for e in events)
        if self.status[name].phase in (Phase.RESOLVED, Phase.ESCALATED) and before.phase != self.status[name].phase:
            uid = inc.uid
            self.ledgers = {k: b.release(uid) for k, b in self.ledgers.items()}
        return decision

    def reserve(self, decision: Decision) -> None:
        assert decision.reserve is not None
        r = decision.reserve
        for key in r.budgets:
            b = self.ledgers[key]
            if r.approved_by is None:
                assert b.refusal(r.ask, self.now) is None, "the core asked to reserve past a refusal"
            self.ledgers[key] = b.spend(r.ask, self.now, r.approved_by)

    def settle(self, rounds: int = 50) -> None:
        """Drive every incident until none runs or reserves anything."""
        for _ in range(rounds):
            busy = False
            for name in self.incidents:
                for _ in range(40):
                    d = self.once(name)
                    if d.run is None and d.reserve is None:
                        break
                    busy = True
            if not busy:
                return
        raise AssertionError("the fleet did not come to rest")

    def later(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)
        self.settle()

    def phase(self, name: str) -> str | None:
        return self.status[name].phase

    def condition(self, name: str, type_: str) -> tuple[str, str, str] | None:
        c = self.status[name].condition(type_)
        return (c.status, c.reason, c.message) if c else None

    def restarts(self) -> list[str]:
        return [n for n, step, _ in self.calls if step == "restart"]

    def approve(self, name: str, by: str = "alice") -> None:
        record = next(s for s in self.status[name].steps if s.state == "AwaitingApproval")
        assert record.approvalRequest is not None
        approval = Approval(record.name, by, record.attempt, record.approvalRequest.nonce)
        self.incidents[name] = replace(self.incidents[name], approvals=(*self.incidents[name].approvals, approval))


# -- reading a RemediationBudget -------------------------------------------------------------------
def test_a_budget_reads_its_spec_and_ledger() -> None:
    body = budget_body(
        policySelector={"matchLabels": {"team": "chat"}},
        alerts=["InstanceManagerDown"],
        severities=["Critical"],
        destructiveSteps={"limit": 2, "window": "5m"},
        perTarget={"limit": 1, "window": "1h"},
        concurrentIncidents=3,
    )
    body["status"] = {
        "spent": [{"uid": "u1", "incident": "ns/a", "step": "restart", "attempt": 1, "at": timestamp(T0)}],
        "holds": [{"uid": "u1", "incident": "ns/a", "since": timestamp(T0)}],
    }
    b = parse_budget(body)
    assert isinstance(b, Budget)
    assert (b.destructive, b.per_target, b.concurrent) == (Window(2, 300.0), Window(1, 3600.0), 3)
    assert b.alerts == {"InstanceManagerDown"} and b.severities == {"Critical"}
    assert [s.key for s in b.spent] == [("u1", "destructive", "restart", 1)] and [h.uid for h in b.holds] == ["u1"]


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        ({"destructiveSteps": {"limit": -1, "window": "5m"}}, "spec.destructiveSteps.limit: must be a whole number"),
        ({"destructiveSteps": {"limit": 2, "window": "soon"}}, "spec.destructiveSteps.window: invalid duration 'soon'"),
        ({"perTarget": {"limit": 2, "window": "0s"}}, "spec.perTarget.window: must be longer than 0s"),
        ({"perTarget": 3}, "spec.perTarget: must be an object with limit and window"),
        ({"concurrentIncidents": "many"}, "spec.concurrentIncidents: must be a whole number"),
        ({"severities": ["Urgent"]}, "spec.severities: unknown severity 'Urgent'"),
        ({"policySelector": {"matchExpressions": [{"key": "a", "operator": "Near"}]}},
         "spec.policySelector.matchExpressions[0].operator: unknown operator 'Near'"),
    ],
)  # fmt: skip
def test_a_bad_budget_names_the_field(spec: dict[str, Any], error: str) -> None:
    parsed = parse_budget(budget_body(**spec))
    assert isinstance(parsed, InvalidBudget) and parsed.error.startswith(error), parsed


# -- the ledger ------------------------------------------------------------------------------------
def test_a_spent_window_refuses_and_says_when_it_frees_up() -> None:
    b = budget(destructiveSteps={"limit": 2, "window": "5m"})
    b = b.spend(ask("u1"), T0).spend(ask("u2"), T0 + timedelta(minutes=1))
    refusal = b.refusal(ask("u3"), T0 + timedelta(minutes=2))
    assert refusal is not None
    frees = T0 + timedelta(minutes=5, seconds=GRACE)  # the oldest leaves the window (and the grace to start)
    assert refusal.frees_at == frees
    assert refusal.text() == f"budget ns/b: 2 of 2 destructive step(s) per 5m spent; frees up at {timestamp(frees)}"
    assert b.refusal(ask("u3"), frees - timedelta(seconds=1)) is not None
    assert b.refusal(ask("u3"), frees + timedelta(seconds=1)) is None
    assert b.used(T0 + timedelta(minutes=2)) == 2 and b.used(frees + timedelta(seconds=1)) == 1


def test_a_spend_is_made_once_per_step_and_round_and_renewed_when_unused() -> None:
    b = budget(destructiveSteps={"limit": 1, "window": "5m"})
    once = b.spend(ask("u1"), T0)
    assert once.spend(ask("u1"), T0 + timedelta(seconds=1)) == once  # the same step and round: nothing new
    assert not once.needs(ask("u1"), T0 + timedelta(seconds=GRACE))
    assert once.needs(ask("u1"), T0 + timedelta(seconds=GRACE + 1))  # too old to start on: renew it
    assert once.refusal(ask("u1"), T0 + timedelta(seconds=GRACE + 1)) is None  # its own spend does not block it
    renewed = once.spend(ask("u1"), T0 + timedelta(seconds=GRACE + 1))
    assert [s.at for s in renewed.spent] == [T0 + timedelta(seconds=GRACE + 1)]
    assert once.refusal(ask("u1", attempt=2), T0 + timedelta(seconds=1)) is not None  # a new round is a new step


def test_per_target_counts_only_that_target() -> None:
    b = budget(perTarget={"limit": 1, "window": "1h"}).spend(ask("u1", target="Deployment/ns/a"), T0)
    assert b.refusal(ask("u2", target="Deployment/ns/a"), T0 + timedelta(minutes=10)) is not None
    assert b.refusal(ask("u2", target="Deployment/ns/b"), T0 + timedelta(minutes=10)) is None
    assert not b.needs(ask("u3", target=""), T0)  # no target: no per-target limit to spend


def test_remediations_count_rounds_not_steps() -> None:
    """A round of three steps spends one remediation; a new round (or incident) spends another."""
    b = budget(remediations={"limit": 2, "window": "10m"})
    b = b.spend(ask("u1", step="scale", destructive=False), T0)
    for step in ("tune", "restart"):  # the same round's later steps: nothing new to spend
        assert not b.needs(ask("u1", step=step, destructive=False, round_started=True), T0 + timedelta(minutes=5))
    b = b.spend(ask("u1", attempt=2, destructive=False), T0 + timedelta(minutes=1))
    refusal = b.refusal(ask("u2", destructive=False), T0 + timedelta(minutes=2))
    assert refusal is not None and refusal.why == "2 of 2 remediation(s) per 10m spent"
    assert b.status(T0 + timedelta(minutes=2))["remediationsUsed"] == 2
    # a round's spend that waited unused (its first step never started) is renewed, not trusted
    assert b.needs(ask("u1", attempt=2, destructive=False), T0 + timedelta(minutes=1, seconds=GRACE + 1))


def test_a_destructive_step_spends_its_round_and_itself() -> None:
    b = budget(remediations={"limit": 5, "window": "10m"}, destructiveSteps={"limit": 1, "window": "10m"})
    b = b.spend(ask("u1"), T0)
    assert sorted(s.kind for s in b.spent) == ["destructive", "remediation"]
    refusal = b.refusal(ask("u2"), T0)
    assert refusal is not None and "1 of 1 destructive step(s) per 10m spent" in refusal.why
    assert b.refusal(ask("u2", destructive=False), T0) is None  # a restart still fits the remediations


def test_concurrency_is_held_until_released() -> None:
    b = budget(concurrentIncidents=1).spend(ask("u1", destructive=False), T0)
    assert [h.uid for h in b.holds] == ["u1"] and b.spent == ()  # a hold, no spend for a safe step
    refusal = b.refusal(ask("u2"), T0)
    assert refusal is not None and refusal.frees_at is None and "1 of 1 incident(s) remediating (ns/u1)" in refusal.why
    assert not b.needs(ask("u1", step="other"), T0)  # its next steps need nothing more
    assert b.release("u1").refusal(ask("u2"), T0) is None


def test_a_limit_of_zero_never_frees_up() -> None:
    refusal = budget(destructiveSteps={"limit": 0, "window": "5m"}).refusal(ask(), T0)
    assert refusal is not None and refusal.frees_at is None


def test_the_status_adds_up_the_ledger_and_drops_what_no_window_counts() -> None:
    b = budget(destructiveSteps={"limit": 2, "window": "5m"}, concurrentIncidents=5)
    b = b.spend(ask("u1"), T0).spend(ask("u2"), T0 + timedelta(minutes=1))
    now = T0 + timedelta(minutes=2)
    status = b.status(now)
    frees = T0 + timedelta(minutes=5, seconds=GRACE)
    assert (status["destructiveUsed"], status["remediating"], status["nextFree"]) == (2, 2, timestamp(frees))
    assert b.next_change(now) == frees
    later = b.pruned(frees + timedelta(seconds=1))
    assert [s.uid for s in later.spent] == ["u2"] and later.status(frees + timedelta(seconds=1))["nextFree"] is None
    again = parse_budget(budget_body(destructiveSteps={"limit": 2, "window": "5m"}) | {"status": status})
    assert isinstance(again, Budget) and again.spent == b.spent  # the ledger survives its round trip


def test_defaults_apply_only_where_no_budget_of_the_namespace_selects() -> None:
    chat = restart_policy("chat", labels={"team": "chat"})
    other = restart_policy("other")
    inc = Incident.from_body({"metadata": {"name": "i", "namespace": "ns"}, "spec": {"alert": "InstanceManagerDown"}})
    mine = budget(
        "mine", policySelector={"matchLabels": {"team": "chat"}}, destructiveSteps={"limit": 1, "window": "1m"}
    )
    elsewhere = budget("theirs", "other-ns", destructiveSteps={"limit": 1, "window": "1m"})
    default = budget("default", "runbook-operator", destructiveSteps={"limit": 9, "window": "1m"})
    assert applicable([mine, elsewhere], [default], chat, inc, "High") == (mine,)
    assert applicable([mine, elsewhere], [default], other, inc, "High") == (default,)
    critical = budget(
        "crit", severities=["Critical"], alerts=["InstanceManagerDown"], destructiveSteps={"limit": 1, "window": "1m"}
    )
    assert applicable([critical], [], other, inc, "High") == ()
    assert applicable([critical], [], other, inc, "Critical") == (critical,)


# -- decide() with budgets -------------------------------------------------------------------------
def six(fleet: Fleet) -> None:
    for i in range(6):
        fleet.open(f"i{i}", target=f"svc-{i}")
    fleet.settle()


def test_a_spent_budget_throttles_the_next_destructive_step_visibly() -> None:
    fleet = Fleet([restart_policy()], [budget("restarts", destructiveSteps={"limit": 2, "window": "5m"})])
    six(fleet)
    assert fleet.restarts() == ["i0", "i1"]
    assert [fleet.phase(f"i{i}") for i in range(6)] == ["Resolved"] * 2 + ["AwaitingApproval"] * 4
    frees = timestamp(T0 + timedelta(minutes=5, seconds=GRACE))
    status, reason, message = fleet.condition("i2", "Throttled") or ("", "", "")
    assert (status, reason) == ("True", "Throttled")
    assert (
        message
        == f"step 'restart' waits: budget ns/restarts: 2 of 2 destructive step(s) per 5m spent; frees up at {frees}"
    )
    assert fleet.condition("i2", "Resolved")[:2] == ("False", "Throttled")  # type: ignore[index]
    told = [m for n, r, m in fleet.events if n == "i2" and r == "Throttled"]
    assert len(told) == 2  # the phase change and the Throttled Event, once each
    assert "approved past it" in told[0] and "kubectl runbook approve" in told[0]
    fleet.later(60)
    assert fleet.restarts() == ["i0", "i1"]  # nothing new inside the window, and nothing said again
    assert len([1 for n, r, _ in fleet.events if n == "i2" and r == "Throttled"]) == 2


def test_the_window_frees_up_and_the_throttled_steps_run_as_it_does() -> None:
    fleet = Fleet([restart_policy()], [budget("restarts", destructiveSteps={"limit": 2, "window": "5m"})])
    six(fleet)
    fleet.later(300 + GRACE)  # the first two leave the window: two more start, no person involved
    assert fleet.restarts() == ["i0", "i1", "i2", "i3"]
    assert fleet.phase("i2") == "Resolved"
    assert fleet.condition("i2", "Throttled")[:2] == ("False", "BudgetAvailable")  # type: ignore[index]
    record = next(s for s in fleet.status["i2"].steps if s.name == "restart")
    assert record.approvedBy is None and record.state == "Succeeded"
    assert fleet.phase("i4") == "AwaitingApproval"
    fleet.later(300 + GRACE)
    assert fleet.restarts() == ["i0", "i1", "i2", "i3", "i4", "i5"]


def test_a_person_approves_past_the_budget_and_the_spend_says_so() -> None:
    fleet = Fleet([restart_policy()], [budget("restarts", destructiveSteps={"limit": 2, "window": "5m"})])
    six(fleet)
    fleet.approve("i3", by="alice")
    fleet.later(10)
    assert fleet.restarts() == ["i0", "i1", "i3"]
    assert fleet.phase("i3") == "Resolved" and fleet.phase("i2") == "AwaitingApproval"
    assert fleet.condition("i3", "Throttled")[:2] == ("False", "ApprovedPastBudget")  # type: ignore[index]
    record = next(s for s in fleet.status["i3"].steps if s.name == "restart")
    assert record.approvedBy == "alice"
    past = [s for s in fleet.ledgers["ns/restarts"].spent if s.approvedBy]
    assert [(s.incident, s.approvedBy) for s in past] == [("ns/i3", "alice")]
    assert any(r == "ApprovedPastBudget" and "alice" in m for n, r, m in fleet.events if n == "i3")


def test_a_budget_deleted_while_it_throttles_lets_the_step_start_and_says_so() -> None:
    fleet = Fleet([restart_policy()], [budget("restarts", destructiveSteps={"limit": 1, "window": "1h"})])
    fleet.open("a", target="x")
    fleet.open("b", target="y")
    fleet.settle()
    assert fleet.restarts() == ["a"] and fleet.phase("b") == "AwaitingApproval"
    fleet.ledgers.clear()  # kubectl delete rbud restarts
    fleet.later(1)
    assert fleet.restarts() == ["a", "b"] and fleet.phase("b") == "Resolved"
    status, reason, message = fleet.condition("b", "Throttled") or ("", "", "")
    assert (status, reason) == ("False", "BudgetAvailable") and "no budget limits it any more" in message


def test_an_approval_of_another_request_does_not_pass_the_budget() -> None:
    fleet = Fleet([restart_policy()], [budget("restarts", destructiveSteps={"limit": 1, "window": "5m"})])
    fleet.open("a", target="x")
    fleet.open("b", target="y")
    fleet.settle()
    fleet.incidents["b"] = replace(fleet.incidents["b"], approvals=(Approval("restart", "mallory", 1, "guessed"),))
    fleet.later(10)
    assert fleet.restarts() == ["a"] and fleet.phase("b") == "AwaitingApproval"


def test_throttled_past_the_approval_timeout_escalates_to_on_call() -> None:
    fleet = Fleet(
        [restart_policy(limits={"approvalTimeout": "2m"})],
        [budget("restarts", destructiveSteps={"limit": 1, "window": "1h"})],
    )
    fleet.open("a", target="x")
    fleet.open("b", target="y")
    fleet.settle()
    fleet.later(121)
    assert fleet.phase("b") == "Escalated"
    escalated = fleet.condition("b", "Escalated")
    assert escalated is not None and escalated[1] == "ThrottleTimeout"
    assert "stayed throttled for 120s and nobody approved it past the budget: budget ns/restarts" in escalated[2]
    assert fleet.condition("b", "Throttled")[:2] == ("False", "ThrottleTimeout")  # type: ignore[index]
    assert fleet.restarts() == ["a"]


def test_a_step_that_needs_approval_anyway_runs_once_approved_even_past_the_budget() -> None:
    gated = replace(
        restart_policy(), remediate=tuple(replace(s, requires_approval=True) for s in restart_policy().remediate)
    )
    fleet = Fleet([gated], [budget("restarts", destructiveSteps={"limit": 0, "window": "1h"})])
    fleet.open("a", target="x")
    fleet.settle()
    assert fleet.phase("a") == "AwaitingApproval" and fleet.condition("a", "Throttled") is None
    fleet.approve("a", by="bob")
    fleet.settle()
    assert fleet.restarts() == ["a"] and fleet.phase("a") == "Resolved"
    assert [s.approvedBy for s in fleet.ledgers["ns/restarts"].spent] == ["bob"]


def test_remediations_hold_a_third_round_and_never_split_one() -> None:
    """Two steps that change something (neither destructive) per round; a budget of 2 remediations:
    two incidents run both their steps, the third waits whole, and none is stopped halfway."""
    steps = [request("scale", requiresApproval=False), request("tune", requiresApproval=False)]
    pol = policy("tune", match={"alerts": ["InstanceManagerDown"]}, diagnose=[check("ping")], remediate=steps)
    fleet = Fleet([pol], [budget("rounds", remediations={"limit": 2, "window": "10m"})])
    for i in range(3):
        fleet.open(f"i{i}", target=f"svc-{i}")
    fleet.settle()
    ran = [(n, s) for n, s, _ in fleet.calls if s in ("scale", "tune")]
    assert ran == [("i0", "scale"), ("i0", "tune"), ("i1", "scale"), ("i1", "tune")]
    assert fleet.phase("i2") == "AwaitingApproval"
    assert "2 of 2 remediation(s) per 10m spent" in (fleet.condition("i2", "Throttled") or ("", "", ""))[2]
    assert sorted(s.kind for s in fleet.ledgers["ns/rounds"].spent) == ["remediation", "remediation"]


def test_concurrent_incidents_wait_for_a_slot_and_take_it_when_one_ends() -> None:
    fleet = Fleet([restart_policy(settle="1m")], [budget("two", concurrentIncidents=2)])
    six(fleet)
    assert fleet.restarts() == ["i0", "i1"]  # both verifying after a settle: still remediating
    throttled = fleet.condition("i2", "Throttled")
    assert throttled is not None and "2 of 2 incident(s) remediating (ns/i0, ns/i1)" in throttled[2]
    fleet.later(61)  # i0 and i1 verify and resolve; their slots go to the next two
    assert fleet.restarts() == ["i0", "i1", "i2", "i3"]
    assert sorted(h.incident for h in fleet.ledgers["ns/two"].holds) == ["ns/i2", "ns/i3"]


def test_dry_runs_read_only_steps_and_other_namespaces_spend_nothing() -> None:
    fleet = Fleet([restart_policy(dryRun=True)], [budget("restarts", destructiveSteps={"limit": 0, "window": "1h"})])
    fleet.open("a", target="x")
    fleet.settle()
    assert fleet.restarts() == [] and fleet.ledgers["ns/restarts"].spent == ()
    assert any("dry run: would run http.request" in m for _, _, m in fleet.events)
    assert fleet.condition("a", "Throttled") is None
    fleet = Fleet([restart_policy()], [budget("restarts", "elsewhere", destructiveSteps={"limit": 0, "window": "1h"})])
    fleet.open("a", target="x")
    fleet.settle()
    assert fleet.restarts() == ["a"]


def test_the_default_budget_holds_where_the_namespace_has_none() -> None:
    default = budget("default", "runbook-operator", destructiveSteps={"limit": 1, "window": "1h"})
    fleet = Fleet([restart_policy()], [], defaults=[default])
    fleet.open("a", target="x")
    fleet.open("b", target="y")
    fleet.settle()
    assert fleet.restarts() == ["a"]
    assert "budget runbook-operator/default" in (fleet.condition("b", "Throttled") or ("", "", ""))[2]


# -- properties ------------------------------------------------------------------------------------
def most_in_any_window(times: Sequence[datetime], window: float) -> int:
    times = sorted(times)
    return max((sum(1 for u in times[i:] if (u - t).total_seconds() < window) for i, t in enumerate(times)), default=0)


@settings(max_examples=200, deadline=None)
@given(
    limit=st.integers(0, 4),
    window=st.sampled_from([30.0, 60.0, 300.0]),
    gaps=st.lists(st.floats(0, 120), min_size=1, max_size=40),
    uids=st.lists(st.integers(0, 8), min_size=40, max_size=40),
)
def test_never_more_than_the_limit_in_any_window(limit: int, window: float, gaps: list[float], uids: list[int]) -> None:
    """Asks arriving at any times, repeated or not: what the ledger lets start never exceeds the limit."""
    b = budget(destructiveSteps={"limit": limit, "window": f"{int(window)}s"})
    now, started = T0, list[datetime]()
    for gap, uid in zip(gaps, uids, strict=False):
        now += timedelta(seconds=gap)
        a = ask(f"u{uid}", attempt=1 + len(started))
        if b.refusal(a, now) is None:
            b = b.spend(a, now)
            assert not b.needs(a, now)
            started.append(now)
    assert most_in_any_window(started, window) <= limit


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    limit=st.integers(1, 4),
    incidents=st.integers(2, 10),
    kind=st.sampled_from(["destructiveSteps", "remediations"]),
)
def test_two_operators_racing_with_stale_copies_never_overspend(
    seed: int, limit: int, incidents: int, kind: str
) -> None:
    """Two operators decide from their own (possibly stale) copies of each Incident and of the
    ledger; every write is compare-and-swap on a version, as the API server's resourceVersion is.
    However their moves interleave, destructive calls in any window stay within the limit."""
    rng = random.Random(seed)
    window = 120.0
    truth: dict[str, tuple[int, Any]] = {"budget": (0, budget("b", **{kind: {"limit": limit, "window": "2m"}}))}
    candidates = [restart_policy()]
    for i in range(incidents):
        body = {"metadata": {"name": f"i{i}", "namespace": "ns", "uid": f"uid-{i}", "generation": 1},
                "spec": {"alert": "InstanceManagerDown", "target": {"kind": "Deployment", "name": f"s{i}"}}}  # fmt: skip
        truth[f"i{i}"] = (0, (Incident.from_body(body), Status()))
    copies = [dict(truth), dict(truth)]  # each operator's view: (version, value) per object
    now, calls = T0, list[datetime]()

    def write(op: int, key: str, seen: int, value: Any) -> bool:
        version, _ = truth[key]
        if version != seen:
            copies[op][key] = truth[key]  # the write lost: read it again
            return False
        truth[key] = copies[op][key] = (version + 1, value)
        return True

    for _ in range(400):
        now += timedelta(seconds=rng.choice([0, 0, 1, 5, 30]))
        op = rng.randrange(2)
        if rng.random() < 0.2:  # a watch event brings one object up to date
            key = rng.choice(list(truth))
            copies[op][key] = truth[key]
            continue
        name = f"i{rng.randrange(incidents)}"
        version, (inc, status) = copies[op][name]
        bversion, ledger = copies[op]["budget"]
        d = decide(inc, status, candidates, now, nonce="n", budgets=[ledger])
        if d.reserve is not None:
            if d.reserve.approved_by is None and ledger.refusal(d.reserve.ask, now) is None:
                write(op, "budget", bversion, ledger.spend(d.reserve.ask, now))
            continue
        if not write(op, name, version, (inc, d.status)):
            continue  # fenced: this decision never acts
        if d.run is not None and d.run.step.name == "restart":
            calls.append(now)
        if d.run is not None:
            done, _ = complete(d.status, d.run, StepResult(True, "ok"), now)
            write(op, name, version + 1, (inc, done))
    assert most_in_any_window(calls, window) <= limit, calls


# -- the engine's ledger writes (engine.budgets), on a versioned store that fences as the API server does
class Store:
    """Objects by (plural, namespace, name) with a resourceVersion; a stale write gets Conflict."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.version = 0

    def put(self, plural: str, body: dict[str, Any]) -> None:
        self.version += 1
        body["metadata"]["resourceVersion"] = str(self.version)
        self.objects[plural, body["metadata"]["namespace"], body["metadata"]["name"]] = body

    async def patch_status(
        self, plural: str, namespace: str, name: str, status: Any, resource_version: Any = None
    ) -> str:
        from runbook_operator.adapters.kube import Conflict

        body = self.objects[plural, namespace, name]
        if resource_version is not None and body["metadata"]["resourceVersion"] != resource_version:
            raise Conflict("stale")
        self.put(plural, copy.deepcopy(body) | {"status": {**(body.get("status") or {}), **status}})
        return str(self.version)

    async def get(self, plural: str, namespace: str, name: str) -> dict[str, Any]:
        found = self.objects.get((plural, namespace, name))
        if found is None:
            raise NotFound()
        return found


class NotFound(Exception):
    status = 404  # as kubernetes.client.ApiException says it


def ledgers(store: Store, stale: dict[str, Any] | None = None, **kwargs: Any) -> Any:
    from runbook_operator.engine.budgets import Ledgers, parsed

    def index() -> dict[str | None, list[Any]]:
        bodies = (
            [stale] if stale is not None else [b for (p, _, _), b in store.objects.items() if p == "remediationbudgets"]
        )
        return {"ns": [parsed(b) for b in bodies]}

    return Ledgers(store, index, lambda: T0, **kwargs)


async def test_two_operators_reserving_from_one_stale_copy_spend_once_past_a_limit_of_one() -> None:
    from runbook_operator.domain.progress import Reservation
    from runbook_operator.engine.budgets import Outcome

    store = Store()
    store.put("remediationbudgets", budget_body("b", destructiveSteps={"limit": 1, "window": "1h"}))
    stale = copy.deepcopy(store.objects["remediationbudgets", "ns", "b"])  # what both watches showed
    a, b = ledgers(store, stale), ledgers(store, stale)
    first = await a.reserve(Reservation(ask("u1"), ("ns/b",)))
    second = await b.reserve(Reservation(ask("u2"), ("ns/b",)))  # its copy says there is room: the write loses
    assert (first, second) == (Outcome.RESERVED, Outcome.REFUSED)
    ledger = store.objects["remediationbudgets", "ns", "b"]["status"]["spent"]
    assert [s["uid"] for s in ledger] == ["u1"]
    assert b.of("ns")[0][0].refusal(ask("u2"), T0) is not None  # and b now decides from the fresh ledger
    assert await b.reserve(Reservation(ask("u2"), ("ns/b",), approved_by="alice")) is Outcome.RESERVED
    assert [s.get("approvedBy") for s in store.objects["remediationbudgets", "ns", "b"]["status"]["spent"]] == [
        None,
        "alice",
    ]


async def test_a_slot_held_by_an_incident_that_is_gone_is_released_when_the_budget_is_full() -> None:
    from runbook_operator.domain.progress import Reservation
    from runbook_operator.engine.budgets import Outcome

    store = Store()
    body = budget_body("b", concurrentIncidents=1)
    body["status"] = {
        "holds": [
            {"uid": "dead", "incident": "ns/dead", "since": timestamp(T0)},
        ]
    }
    store.put("remediationbudgets", body)
    store.put(
        "incidents",
        {"metadata": {"name": "ended", "namespace": "ns", "uid": "u-ended"}, "status": {"phase": "Resolved"}},
    )
    keeper = ledgers(store)
    assert await keeper.reserve(Reservation(ask("u1", destructive=False), ("ns/b",))) is Outcome.RESERVED
    holds = store.objects["remediationbudgets", "ns", "b"]["status"]["holds"]
    assert [h["uid"] for h in holds] == ["u1"]
    # a hold whose incident still runs (the operator knows it) is kept
    keeper = ledgers(store, ended=lambda uid: False)
    assert await keeper.reserve(Reservation(ask("u2", destructive=False), ("ns/b",))) is Outcome.REFUSED


def test_the_default_budget_flag_names_one_watched_budget() -> None:
    from runbook_operator.entrypoints.cli.run import budget_name

    assert budget_name("runbook-operator/default", None) == ("runbook-operator", "default")
    assert budget_name(None, None) is None
    for bad, said in (
        ("default", "NAMESPACE/NAME"),
        ("a/b/c", "NAMESPACE/NAME"),
        ("ops/default", "'ops' is not watched"),
    ):
        with pytest.raises(ValueError, match=said):
            budget_name(bad, ["ishchat"] if bad.startswith("ops") else None)


def test_the_metrics_show_each_budgets_use_and_limit() -> None:
    from prometheus_client import CollectorRegistry

    from runbook_operator.adapters.metrics import Metrics

    registry = CollectorRegistry()
    b = budget("restarts", destructiveSteps={"limit": 2, "window": "5m"}, concurrentIncidents=3)
    b = b.spend(ask("u1"), T0).spend(ask("u2"), T0 + timedelta(minutes=4))
    clock = [T0 + timedelta(minutes=5)]
    Metrics(registry).budgets(lambda: [b], lambda: clock[0])
    labels = {"namespace": "ns", "budget": "restarts"}
    sample = registry.get_sample_value
    assert sample("runbook_budget_used", labels | {"kind": "destructive_steps"}) == 2
    assert sample("runbook_budget_limit", labels | {"kind": "destructive_steps"}) == 2
    assert sample("runbook_budget_used", labels | {"kind": "concurrent_incidents"}) == 2
    assert sample("runbook_budget_limit", labels | {"kind": "concurrent_incidents"}) == 3
    clock[0] = T0 + timedelta(minutes=5, seconds=GRACE + 1)  # the first spend has left the window
    assert sample("runbook_budget_used", labels | {"kind": "destructive_steps"}) == 1
