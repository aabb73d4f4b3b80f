"""The state machine, driven the way the engine drives it, with scripted step results."""

import itertools
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from runbook_operator.domain.consent import Approval
from runbook_operator.domain.lifecycle import Decision, Event, Peer, StepResult, complete, decide
from runbook_operator.domain.matching import Candidate
from runbook_operator.domain.model import Incident
from runbook_operator.domain.status import Phase, Status, StepRecord
from tests.unit.builders import check, incident, invalid, policy, request

T0 = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)
Results = Callable[[str, int], bool]  # (step name, attempt) -> ok


def standard(**extra: object) -> list[Candidate]:
    return [
        policy(
            "redis",
            match={"alerts": ["RedisDown"]},
            diagnose=[check("ping")],
            remediate=[request("restart")],
            verify=[check("healthy")],
            **extra,
        )
    ]


class Run:
    """Loop decide/complete until the core waits, recording Events and phases."""

    def __init__(self, inc: Incident, candidates: Sequence[Candidate], results: Results) -> None:
        self.inc, self.candidates, self.results = inc, candidates, results
        self.status, self.now = Status(), T0
        self.events: list[Event] = []
        self.ran: list[tuple[str, int]] = []
        self.peers: list[Peer] = []
        self.nonces = (f"nonce-{n}" for n in itertools.count(1))

    def drive(self, horizon: timedelta = timedelta(minutes=10), limit: int = 200) -> Decision:
        """Run steps and follow the core's wake-ups until it rests or the next one is past the horizon."""
        until = self.now + horizon
        for _ in range(limit):
            decision = decide(self.inc, self.status, self.candidates, self.now, self.peers, nonce=next(self.nonces))
            self.status = decision.status
            self.events.extend(decision.events)
            if decision.run is None:
                if decision.wake_at is None or decision.wake_at > until:
                    return decision
                self.now = max(self.now, decision.wake_at)
                continue
            call = decision.run
            self.ran.append((call.step.name, call.attempt))
            ok = self.results(call.step.name, call.attempt)
            self.status, events = complete(self.status, call, StepResult(ok, "ok" if ok else "boom"), self.now)
            self.events.extend(events)
        raise AssertionError("the state machine did not come to rest")

    def waiting(self) -> StepRecord:
        """The record of the step that waits for approval (it has the open request)."""
        record = next(s for s in self.status.steps if s.state == "AwaitingApproval")
        assert record.approvalRequest is not None
        return record

    def approve(self, by: str = "alice") -> Approval:
        """Approve the open request, as `kubectl runbook approve` does."""
        record = self.waiting()
        assert record.approvalRequest is not None
        approval = Approval(record.name, by, record.attempt, record.approvalRequest.nonce)
        self.inc = replace(self.inc, approvals=(*self.inc.approvals, approval))
        return approval

    @property
    def reasons(self) -> list[str]:
        return [e.reason for e in self.events]

    def event(self, reason: str) -> Event:
        return next(e for e in self.events if e.reason == reason)

    def condition(self, type_: str) -> tuple[str, str] | None:
        c = self.status.condition(type_)
        return (c.status, c.reason) if c else None


def healthy_after_restart(name: str, attempt: int) -> bool:
    return name != "ping"


def test_fixed_on_the_first_round_resolves_verified() -> None:
    run = Run(incident(), standard(), healthy_after_restart)
    run.drive()
    assert run.status.phase == Phase.RESOLVED.value
    assert run.ran == [("ping", 1), ("restart", 1), ("healthy", 1)]
    assert run.reasons == [
        "PolicyMatched", "StepFailed", "DiagnosisComplete", "StepSucceeded",
        "RemediationApplied", "StepSucceeded", "Verified",
    ]  # fmt: skip
    assert run.condition("Diagnosed") == ("True", "DiagnosisComplete")
    assert run.condition("Remediated") == ("True", "RemediationApplied")
    assert run.condition("Resolved") == ("True", "Verified")
    assert [f.step for f in run.status.findings] == ["ping"]
    assert run.status.resolvedAt and run.status.attempts == 1 and run.status.currentStep is None
    assert run.status.escalation.nextAt is None and run.status.escalation.fired == ()


def test_fixed_on_the_second_round() -> None:
    run = Run(incident(), standard(limits={"maxAttempts": 3}), lambda n, a: n == "restart" or a == 2)
    run.drive()
    assert run.status.phase == Phase.RESOLVED.value
    assert run.status.attempts == 2
    assert [r for r in run.ran if r[0] == "restart"] == [("restart", 1), ("restart", 2)]
    assert "VerificationFailed" in run.reasons


def test_never_fixed_escalates_after_max_attempts_and_stops() -> None:
    run = Run(incident(), standard(limits={"maxAttempts": 2}), lambda n, a: n == "restart")
    run.drive()
    assert run.status.phase == Phase.ESCALATED.value
    assert run.condition("Escalated") == ("True", "RemediationExhausted")
    assert run.condition("Resolved") == ("False", "RemediationExhausted")
    assert run.status.attempts == 2
    assert len([r for r in run.ran if r[0] == "restart"]) == 2
    assert run.status.escalation.fired == ("on-call",)
    quiet = decide(run.inc, run.status, run.candidates, run.now, nonce="n0")
    assert quiet.run is None and quiet.events == () and quiet.status == run.status


def test_a_failed_remediation_step_skips_verification_of_that_round() -> None:
    run = Run(incident(), standard(), lambda n, a: False)
    run.drive()
    assert ("healthy", 1) not in run.ran
    assert run.condition("Remediated") == ("False", "RemediationFailed")
    assert run.status.phase == Phase.ESCALATED.value


def test_continue_on_failure_goes_on_to_the_next_step() -> None:
    candidates = [policy("p", remediate=[request("a", continueOnFailure=True), request("b")], verify=[check("v")])]
    run = Run(incident(), candidates, lambda n, a: n != "a")
    run.drive()
    assert run.ran == [("a", 1), ("b", 1), ("v", 1)]
    assert run.status.phase == Phase.RESOLVED.value


def test_no_matching_policy_escalates_with_that_reason() -> None:
    run = Run(incident("Unknown"), standard(), healthy_after_restart)
    run.drive()
    assert run.status.phase == Phase.ESCALATED.value
    assert run.condition("Escalated") == ("True", "NoMatchingPolicy")
    assert run.ran == [] and run.status.steps == ()
    assert run.events[0].type == "Warning" and "matches alert 'Unknown'" in run.events[0].message
    assert run.status.escalation.level == "on-call"  # the runbook's first level fires on escalation


def test_an_invalid_policy_escalates_with_its_error() -> None:
    bad = invalid("redis", match={"alerts": ["RedisDown"]}, verify=[{"name": "v", "action": "nope.x"}])
    run = Run(incident(), [bad], healthy_after_restart)
    run.drive()
    assert run.condition("Escalated") == ("True", "InvalidPolicy")
    assert "unknown action 'nope.x'" in run.event("InvalidPolicy").message
    assert run.status.policy == "redis"


def test_a_policy_applied_after_the_incident_takes_over_the_escalation() -> None:
    run = Run(incident(), [], healthy_after_restart)
    run.drive()
    assert run.condition("Escalated") == ("True", "NoMatchingPolicy")
    run.candidates = standard()
    run.drive()
    assert run.status.phase == Phase.RESOLVED.value
    assert run.condition("Escalated") == ("False", "PolicyMatched")


def test_remediation_exhausted_does_not_start_over_when_policies_change() -> None:
    run = Run(incident(), standard(), lambda n, a: False)
    run.drive()
    run.candidates = standard(priority=1)
    ran = len(run.ran)
    run.drive()
    assert len(run.ran) == ran and run.status.phase == Phase.ESCALATED.value


def test_settle_waits_before_verifying() -> None:
    candidates = standard(settle="30s")
    inc = incident()
    status = Status()
    now = T0
    while True:
        decision = decide(inc, status, candidates, now, nonce="n0")
        status = decision.status
        if decision.run is None:
            break
        status, _ = complete(status, decision.run, StepResult(True, "ok"), now)
    assert status.phase == Phase.VERIFYING.value
    assert decision.wake_at == T0 + timedelta(seconds=30)
    early = decide(inc, status, candidates, T0 + timedelta(seconds=29), nonce="n0")
    assert early.run is None and early.wake_at == decision.wake_at
    assert decide(inc, status, candidates, T0 + timedelta(seconds=30), nonce="n0").run is not None


def test_spec_resolved_stops_pending_work() -> None:
    run = Run(incident(), standard(), healthy_after_restart)
    first = decide(run.inc, Status(), run.candidates, T0, nonce="n0")
    assert first.run is not None
    done = decide(incident(resolved=True), first.status, run.candidates, T0, nonce="n0")
    assert done.run is None and done.status.phase == Phase.RESOLVED.value
    assert done.status.condition("Resolved").reason == "ResolvedExternally"  # type: ignore[union-attr]


def test_a_step_left_running_by_a_dead_operator_is_resumed_and_said_so() -> None:
    first = decide(incident(), Status(), standard(), T0, nonce="n0")
    assert first.run is not None and first.run.step.name == "ping"
    record = first.status.record("Diagnose", "ping", 1)
    assert record is not None and record.state == "Running"
    again = decide(incident(), first.status, standard(), T0 + timedelta(minutes=1), nonce="n0")
    assert again.run is not None and again.run.resumed and again.run.step.name == "ping"
    assert [e.reason for e in again.events] == ["StepResumed"]
    kept = again.status.record("Diagnose", "ping", 1)
    assert kept is not None and kept.startedAt == record.startedAt


def test_a_policy_deleted_mid_incident_escalates() -> None:
    first = decide(incident(), Status(), standard(), T0, nonce="n0")
    gone = decide(incident(), first.status, [], T0, nonce="n0")
    assert gone.status.phase == Phase.ESCALATED.value
    assert "was deleted" in gone.status.condition("Escalated").message  # type: ignore[union-attr]


def test_observed_generation_follows_the_spec() -> None:
    decision = decide(incident(generation=7), Status(), standard(), T0, nonce="n0")
    assert decision.status.observedGeneration == 7
    assert all(c.observedGeneration == 7 for c in decision.status.conditions)


def test_step_output_is_bounded() -> None:
    first = decide(incident(), Status(), standard(), T0, nonce="n0")
    assert first.run is not None
    status, _ = complete(first.status, first.run, StepResult(True, "ok", {f"k{i}": "x" * 100 for i in range(100)}), T0)
    record = status.record("Diagnose", "ping", 1)
    assert record is not None and record.output is not None
    assert record.output.get("truncated") is True and len(str(record.output)) < 4096


def test_severity_defaults_from_the_policy_then_medium() -> None:
    assert decide(incident(), Status(), standard(severity="Critical"), T0, nonce="n0").status.severity == "Critical"
    assert (
        decide(incident(severity="Low"), Status(), standard(severity="Critical"), T0, nonce="n0").status.severity
        == "Low"
    )
    assert decide(incident(), Status(), standard(), T0, nonce="n0").status.severity == "Medium"


def test_a_resolved_incident_is_terminal() -> None:
    run = Run(incident(), standard(), healthy_after_restart)
    run.drive()
    later = decide(replace(run.inc, resolved=True), run.status, [], T0 + timedelta(days=1), nonce="n0")
    assert later.status == run.status and later.events == ()


def test_a_stale_pending_record_runs() -> None:
    status = Status(
        phase="Diagnosing", policy="redis", steps=(StepRecord("ping", "Diagnose", "http.check", 1, "Pending"),)
    )
    decision = decide(incident(), status, standard(), T0, nonce="n0")
    assert decision.run is not None and not decision.run.resumed


def test_each_step_record_keeps_what_a_replay_matches_on() -> None:
    """Its action and rendered parameters as a digest (the claim writes it) and how long it ran."""
    from runbook_operator.domain import consent

    decision = decide(incident("RedisDown"), Status(), standard(), T0, nonce="n")
    call = decision.run
    assert call is not None
    claimed = decision.status.record(call.step.stage.value, call.step.name, call.attempt)
    assert claimed is not None and claimed.paramsDigest == consent.digest(call.step.action, call.params)
    done, _ = complete(decision.status, call, StepResult(True, "ok"), T0 + timedelta(seconds=2), 1.23456)
    record = done.record(call.step.stage.value, call.step.name, call.attempt)
    assert record is not None and (record.duration, record.paramsDigest) == (1.235, claimed.paramsDigest)
    assert Status.from_dict(done.to_dict()).record(call.step.stage.value, call.step.name, 1) == record
