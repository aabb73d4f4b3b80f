"""Consent, dry runs, suspension, restarts, locks, cooldowns, duplicates: the rules that make it safe."""

from dataclasses import replace
from datetime import timedelta

from runbook_operator.domain.lifecycle import Peer, StepResult, complete, decide
from runbook_operator.domain.matching import Candidate
from runbook_operator.domain.status import Phase, Status
from tests.unit.builders import check, incident, policy, request
from tests.unit.test_lifecycle import T0, Run

TARGET = {"kind": "Deployment", "name": "instance-manager"}


def destructive_policy(**extra: object) -> list[Candidate]:
    return [
        policy(
            "p",
            diagnose=[check("ping")],
            remediate=[request("failover", **{"with": {"url": "http://lb:9092/failover", "destructive": True}})],
            verify=[check("healthy")],
            **extra,
        )
    ]


def always(name: str, attempt: int) -> bool:
    return True


# -- approvals ----------------------------------------------------------------------


def test_a_destructive_step_waits_for_approval_with_the_command_to_give_it() -> None:
    run = Run(incident(), destructive_policy(), always)
    run.drive()
    assert run.status.phase == Phase.AWAITING_APPROVAL.value
    assert ("failover", 1) not in run.ran
    record = run.status.record("Remediate", "failover", 1)
    assert record is not None and record.state == "AwaitingApproval"
    message = run.event("AwaitingApproval").message
    assert "kubectl patch incident i -n ns --type=merge" in message
    assert '{"spec":{"approvals":[{"step":"failover","by":"YOUR-NAME"}]}}' in message
    assert run.condition("Resolved") == ("False", "AwaitingApproval")


def test_an_approval_lets_it_run_and_records_who_and_when() -> None:
    run = Run(incident(), destructive_policy(), always)
    run.drive()
    run.now += timedelta(minutes=3)
    run.inc = replace(run.inc, approvals={"failover": "alice"})
    run.drive()
    assert run.status.phase == Phase.RESOLVED.value
    assert run.ran.count(("failover", 1)) == 1
    record = run.status.record("Remediate", "failover", 1)
    assert record is not None and record.approvedBy == "alice" and record.approvedAt == "2026-11-27T08:03:00Z"
    assert "Approved" in run.reasons


def test_no_approval_in_time_escalates() -> None:
    run = Run(incident(), destructive_policy(limits={"approvalTimeout": "10m"}), always)
    run.drive(horizon=timedelta(minutes=30))
    assert run.status.phase == Phase.ESCALATED.value
    assert run.condition("Escalated") == ("True", "ApprovalTimeout")
    assert ("failover", 1) not in run.ran


def test_the_approval_timeout_defaults_to_the_severity_response_time() -> None:
    run = Run(incident(severity="Critical"), destructive_policy(), always)
    run.drive()
    run.now = T0 + timedelta(minutes=14, seconds=59)
    run.drive(horizon=timedelta(0))
    assert run.status.phase == Phase.AWAITING_APPROVAL.value
    run.now = T0 + timedelta(minutes=15)
    run.drive(horizon=timedelta(0))
    assert run.condition("Escalated") == ("True", "ApprovalTimeout")


def test_a_step_can_opt_out_of_approval_or_ask_for_it() -> None:
    opted_out = policy(
        "p", remediate=[request("x", requiresApproval=False, **{"with": {"url": "http://a/", "destructive": True}})]
    )
    run = Run(incident(), [opted_out], always)
    run.drive()
    assert run.status.phase == Phase.RESOLVED.value and ("x", 1) in run.ran
    asked = policy("p", remediate=[request("x", requiresApproval=True)])
    run = Run(incident(), [asked], always)
    run.drive()
    assert run.status.phase == Phase.AWAITING_APPROVAL.value


# -- dry run, suspend --------------------------------------------------------------


def test_dry_run_runs_only_read_only_steps_and_records_the_rest() -> None:
    run = Run(incident(dryRun=True), destructive_policy(), lambda n, a: n != "healthy")
    run.drive()
    assert run.ran == [("ping", 1), ("healthy", 1)]
    record = run.status.record("Remediate", "failover", 1)
    assert record is not None and record.state == "Skipped"
    assert record.message.startswith('dry run: would run http.request with {"destructive": true')
    assert run.condition("Escalated") == ("True", "DryRun")


def test_a_policy_dry_run_works_the_same() -> None:
    run = Run(incident(), destructive_policy(dryRun=True), always)
    run.drive()
    assert ("failover", 1) not in run.ran
    assert run.status.record("Remediate", "failover", 1).state == "Skipped"  # type: ignore[union-attr]


def test_suspend_holds_everything_until_lifted() -> None:
    run = Run(incident(suspend=True), destructive_policy(), always)
    run.drive()
    assert run.ran == [] and run.condition("Suspended") == ("True", "Suspended")
    run.inc = replace(run.inc, suspend=False)
    run.drive()
    assert run.ran[0] == ("ping", 1) and run.condition("Suspended") == ("False", "Resumed")


def test_a_suspended_policy_starts_nothing() -> None:
    run = Run(incident(), destructive_policy(suspend=True), always)
    run.drive()
    assert run.ran == [] and run.status.phase == Phase.PENDING.value
    assert "is suspended" in (run.status.waiting or "")


# -- restarts ----------------------------------------------------------------------


def test_a_destructive_step_running_at_a_crash_is_not_run_again_and_verification_decides() -> None:
    candidates = destructive_policy()
    inc = replace(incident(), approvals={"failover": "alice"})
    status = Status()
    while True:  # up to the moment the failover starts
        decision = decide(inc, status, candidates, T0)
        status = decision.status
        assert decision.run is not None
        if decision.run.step.name == "failover":
            break
        status, _ = complete(status, decision.run, StepResult(False, "refused"), T0)
    # the operator dies here; a new one reads the status
    after = decide(inc, status, candidates, T0 + timedelta(seconds=30))
    assert after.run is None or after.run.step.name != "failover"
    record = after.status.record("Remediate", "failover", 1)
    assert record is not None and record.state == "Skipped" and "outcome unknown" in record.message
    assert "StepInterrupted" in [e.reason for e in after.events]


def test_a_safe_step_running_at_a_crash_runs_again() -> None:
    first = decide(incident(), Status(), destructive_policy(), T0)
    again = decide(incident(), first.status, destructive_policy(), T0)
    assert again.run is not None and again.run.resumed and again.run.step.name == "ping"


# -- target lock, cooldown, duplicates --------------------------------------------


def peer(name: str = "other", *, remediating: bool = False, phase: str | None = "Remediating", **extra: object) -> Peer:
    values: dict[str, object] = {"alert": "Other", "created": "2026-11-27T07:00:00Z", "last_remediated": None} | extra
    return Peer(name=name, phase=phase, remediating=remediating, **values)  # type: ignore[arg-type]


def on_target(**spec: object) -> Run:
    candidates = [policy("p", remediate=[request("restart")], verify=[check("ok")], limits={"cooldown": "10m"})]
    return Run(incident(target=TARGET, **spec), candidates, always)


def test_one_remediation_at_a_time_per_target() -> None:
    run = on_target()
    run.peers = [peer(remediating=True)]
    run.drive()
    assert run.ran == [] and run.status.phase == Phase.REMEDIATING.value
    assert "incident 'other' is remediating Deployment/ns/instance-manager" in (run.status.waiting or "")
    locked = len(run.events)
    run.drive()
    assert len(run.events) == locked  # said once, not on every look
    run.peers = [peer(remediating=False, phase="Resolved")]
    run.drive()
    assert ("restart", 1) in run.ran and run.status.waiting is None


def test_cooldown_per_target_across_incidents() -> None:
    run = on_target()
    run.peers = [peer(phase="Resolved", last_remediated=T0 - timedelta(minutes=4))]
    decision = run.drive(horizon=timedelta(minutes=1))
    assert run.ran == [] and decision.wake_at == T0 + timedelta(minutes=6)
    run.drive(horizon=timedelta(minutes=10))
    assert ("restart", 1) in run.ran


def test_a_second_incident_for_the_same_alert_and_target_is_a_duplicate() -> None:
    run = on_target()
    run.inc = replace(run.inc, created="2026-11-27T08:00:00Z")
    run.peers = [peer("first", alert="RedisDown", phase="Escalated", created="2026-11-27T07:59:00Z")]
    run.drive()
    assert run.ran == [] and run.status.phase == Phase.RESOLVED.value
    assert run.condition("Resolved") == ("True", "Duplicate") and run.status.duplicateOf == "first"


def test_an_incident_already_handled_comes_first_even_if_created_in_the_same_second() -> None:
    run = on_target()
    run.inc = replace(run.inc, name="aaa", created="2026-11-27T08:00:00Z")
    run.peers = [peer("zzz", alert="RedisDown", phase="AwaitingApproval", created="2026-11-27T08:00:00Z")]
    run.drive()
    assert run.status.duplicateOf == "zzz"


def test_the_first_of_two_is_not_the_duplicate() -> None:
    run = on_target()
    run.inc = replace(run.inc, created="2026-11-27T07:00:00Z")
    run.peers = [peer("later", alert="RedisDown", phase=None, created="2026-11-27T08:00:00Z")]
    run.drive()
    assert run.status.duplicateOf is None and run.status.phase == Phase.RESOLVED.value and run.ran


# -- when and step outputs ---------------------------------------------------------


def test_when_skips_steps_and_outputs_feed_later_steps() -> None:
    candidates = [
        policy(
            "p",
            diagnose=[check("ping")],
            remediate=[
                request("restart", when="!steps.ping.ok"),
                request("noop", when="steps.ping.ok"),
                request("report", **{"with": {"url": "http://a/report", "json": {"was": "{{ steps.ping.message }}"}}}),
            ],
        )
    ]
    run = Run(incident(), candidates, lambda n, a: n != "ping")
    seen: list[dict[str, object]] = []
    original = decide

    def spy(*args: object, **kwargs: object) -> object:
        d = original(*args, **kwargs)  # type: ignore[arg-type]
        if d.run is not None:
            seen.append({"step": d.run.step.name, "params": dict(d.run.params)})
        return d

    import tests.unit.test_lifecycle as harness

    harness.decide = spy  # type: ignore[assignment]
    try:
        run.drive()
    finally:
        harness.decide = original
    assert [r[0] for r in run.ran] == ["ping", "restart", "report"]
    assert run.status.record("Remediate", "noop", 1).state == "Skipped"  # type: ignore[union-attr]
    report = next(s for s in seen if s["step"] == "report")
    assert report["params"]["json"] == {"was": "boom"}  # type: ignore[index]


def test_a_template_that_cannot_render_fails_the_step_with_the_reason() -> None:
    candidates = [
        policy(
            "p",
            remediate=[request("r", **{"with": {"url": "http://a/", "json": {"x": "{{ incident.labels.absent }}"}}})],
        )
    ]
    run = Run(incident(), candidates, always)
    run.drive()
    record = run.status.record("Remediate", "r", 1)
    assert record is not None and record.state == "Failed" and "cannot render parameters" in record.message
    assert run.ran == []


def test_waiting_for_the_lock_does_not_hold_it() -> None:
    """Otherwise two incidents of one target, both waiting, would wait for each other."""
    run = on_target()
    run.peers = [peer(remediating=True)]
    run.drive()
    assert run.status.phase == Phase.REMEDIATING.value and run.status.waiting
    assert Peer.of(run.inc, run.status).remediating is False
    run.peers = []
    run.drive()
    assert Peer.of(run.inc, run.status).remediating is False  # resolved: the lock is free again
    assert Peer.of(run.inc, run.status).last_remediated == T0


def test_a_policy_edited_mid_incident_applies_from_the_next_step() -> None:
    v1 = policy("p", diagnose=[check("ping")], remediate=[request("restart")])
    v2 = replace(policy("p", diagnose=[check("ping")], remediate=[request("scale-up")]), generation=2)
    first = decide(incident(), Status(), [v1], T0)
    assert first.status.policyGeneration == 1 and first.run is not None
    status, _ = complete(first.status, first.run, StepResult(True, "ok"), T0)
    second = decide(incident(), status, [v2], T0)
    assert second.run is not None and second.run.step.name == "scale-up"
    assert second.status.policyGeneration == 2
