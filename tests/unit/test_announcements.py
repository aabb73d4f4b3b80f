"""Status-change announcements in the pure core: which changes are told, in what order, each once."""

from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest

from runbook_operator.domain.lifecycle import StepResult, complete, decide
from runbook_operator.domain.model import Stage
from runbook_operator.domain.status import Phase, Status
from tests.unit.builders import check, incident, invalid, policy, request
from tests.unit.test_lifecycle import T0, Run


def say(name: str, **extra: Any) -> dict[str, Any]:
    text = "{{ announcement.phase }} #{{ announcement.number }}: {{ announcement.reason }}"
    return {"name": name, "action": "notify.webhook", "with": {"url": "http://hooks.local/x", "text": text}, **extra}


def announcing(*announce: dict[str, Any], **spec: Any) -> list[Any]:
    body = {"diagnose": [check("ping")], "remediate": [request("restart")], "verify": [check("again")]}
    return [policy("p", announce=list(announce), **(body | spec))]


def fixed(name: str, attempt: int) -> bool:
    return name != "ping"


def told(run: Run) -> list[tuple[str, str]]:
    """(step, announced phase) of every announcement step that ran, in order."""
    phases = {a.number: a.phase for a in run.status.announcements}
    return [(name, phases[attempt]) for name, attempt in run.ran if name.startswith("say")]


def test_a_critical_incident_announces_its_changes_by_default_each_before_the_next_step() -> None:
    run = Run(incident(severity="Critical"), announcing({"notify": [say("say")]}), fixed)
    run.drive()
    assert run.status.phase == Phase.RESOLVED.value
    assert run.ran == [("say", 1), ("ping", 1), ("restart", 1), ("again", 1), ("say", 2)]
    assert [(a.phase, a.reason, a.done) for a in run.status.announcements] == [
        ("Diagnosing", "PolicyMatched", True),
        ("Resolved", "Verified", True),
    ]


def test_each_change_is_announced_once_however_often_the_core_looks_again() -> None:
    run = Run(incident(severity="Critical"), announcing({"notify": [say("say")]}), fixed)
    run.drive()
    before = len(run.ran)
    for _ in range(3):
        run.drive(horizon=timedelta(hours=3))
    assert len(run.ran) == before


def test_the_message_templates_see_the_announcement() -> None:
    run = Run(incident(severity="High"), announcing({"notify": [say("say")]}), fixed)
    decision = decide(run.inc, Status(), run.candidates, T0, nonce="n")
    assert decision.run is not None and decision.run.step.name == "say"
    assert decision.run.params["text"] == "Diagnosing #1: PolicyMatched"


def test_medium_and_low_announce_only_what_needs_people_and_the_end() -> None:
    run = Run(incident(severity="Medium"), announcing({"notify": [say("say")]}), fixed)
    run.drive()
    assert told(run) == [("say", "Resolved")]


def test_phases_chosen_by_the_policy_and_every_entry_counts() -> None:
    candidates = announcing({"phases": ["Remediating", "Escalated"], "notify": [say("say")]}, limits={"maxAttempts": 2})
    run = Run(incident(severity="Critical"), candidates, lambda name, attempt: name.startswith("say"))
    run.drive()
    assert run.status.phase == Phase.ESCALATED.value
    assert told(run) == [("say", "Remediating"), ("say", "Remediating"), ("say", "Escalated")]


def test_escalated_is_announced_before_the_escalation_level_pages() -> None:
    page = {"name": "page", "action": "notify.webhook", "with": {"url": "http://hooks.local/page"}}
    candidates = announcing({"notify": [say("say")]}, escalate={"levels": [{"name": "on-call", "notify": [page]}]})
    run = Run(incident(severity="Critical"), candidates, lambda name, attempt: name in ("say", "page"))
    run.drive()
    assert [n for n, _ in run.ran if n in ("say", "page")] == ["say", "say", "page"]
    assert told(run)[-1] == ("say", "Escalated")


def test_an_acknowledgement_is_announced_once() -> None:
    step = request("restart", requiresApproval=True)
    run = Run(incident(severity="High"), announcing({"notify": [say("say")]}, remediate=[step]), fixed)
    run.drive()
    assert run.status.phase == Phase.AWAITING_APPROVAL.value
    run.inc = replace(run.inc, acknowledged_by="alice")
    run.drive()
    run.drive()
    run.approve()
    run.drive()
    assert told(run) == [("say", "Diagnosing"), ("say", "AwaitingApproval"), ("say", "Acknowledged"),
                         ("say", "Resolved")]  # fmt: skip
    acked = next(a for a in run.status.announcements if a.phase == "Acknowledged")
    assert acked.message == "acknowledged by alice"


def test_an_announcement_interrupted_by_a_dead_operator_is_not_sent_again() -> None:
    run = Run(incident(severity="Critical"), announcing({"notify": [say("say"), say("say-too")]}), fixed)
    decision = decide(run.inc, Status(), run.candidates, T0, nonce="n")
    assert decision.run is not None and decision.run.step.name == "say"  # claimed Running, then the operator died
    after = decide(run.inc, decision.status, run.candidates, T0 + timedelta(seconds=30), nonce="n2")
    record = after.status.record(Stage.ANNOUNCE.value, "say", 1)
    assert record is not None and record.state == "Skipped" and record.message.startswith("interrupted")
    assert after.run is not None and after.run.step.name == "say-too"  # the rest of the announcement goes on


def test_a_dry_run_records_announcements_unless_the_policy_asks_for_them() -> None:
    run = Run(incident(severity="Critical", dryRun=True), announcing({"notify": [say("say")]}), fixed)
    run.drive()
    assert told(run) == []
    skipped = [s for s in run.status.steps if s.stage == "Announce"]
    assert skipped and all(s.state == "Skipped" and s.message.startswith("dry run: would run") for s in skipped)

    run = Run(incident(severity="Critical", dryRun=True), announcing({"dryRun": True, "notify": [say("say")]}), fixed)
    run.drive()
    assert told(run) == [("say", "Diagnosing"), ("say", "Resolved")]  # read-only verification ran and passed


def test_a_duplicate_says_it_resolved_as_one() -> None:
    from runbook_operator.domain.lifecycle import Peer

    target = {"kind": "Deployment", "name": "api"}
    run = Run(incident(severity="Critical", target=target), announcing({"notify": [say("say")]}), fixed)
    run.peers = [Peer("ns", "first", "RedisDown", "2026-11-27T07:00:00Z", Phase.REMEDIATING, True, None)]
    run.drive()
    assert run.status.phase == Phase.RESOLVED.value and run.status.duplicateOf == "first"
    assert told(run) == [("say", "Resolved")]
    assert run.status.announcements[0].reason == "Duplicate"


def test_a_step_that_opens_a_conversation_is_remembered_and_replaced_only_when_lost() -> None:
    run = Run(incident(severity="Critical"), announcing({"notify": [say("say")]}), fixed)
    decision = decide(run.inc, Status(), run.candidates, T0, nonce="n")
    assert decision.run is not None
    result = StepResult(True, "posted", {"ts": "1.1"}, conversation=("slack/C1", "1.1"))
    status, _ = complete(decision.status, decision.run, result, T0)
    assert status.conversations == {"slack/C1": "1.1"}
    assert Status.from_dict(status.to_dict()).conversations == {"slack/C1": "1.1"}
    assert status.with_conversation("slack/C1", "1.1") is status
    assert status.with_conversation("slack/C1", "2.2").conversations == {"slack/C1": "2.2"}


def test_announcements_round_trip_through_the_api_dict() -> None:
    run = Run(incident(severity="Critical"), announcing({"notify": [say("say")]}), fixed)
    run.drive()
    assert Status.from_dict(run.status.to_dict()) == run.status


@pytest.mark.parametrize(
    ("announce", "message"),
    [
        ([{"phases": ["Pending"], "notify": [say("say")]}], "spec.announce[0].phases: 'Pending' is not one of"),
        ([{"notify": []}], "spec.announce[0].notify: at least one step is required"),
        ([{"notify": [say("ping")]}], "spec.announce[0].notify[0].name: duplicate step name 'ping'"),
        ([{"notify": [say("say", when="announcement.nope(")]}], "spec.announce[0].notify[0].when: does not compile"),
    ],
)
def test_a_bad_announcement_makes_the_policy_invalid_naming_the_field(
    announce: list[dict[str, Any]], message: str
) -> None:
    bad = invalid("p", diagnose=[check("ping")], announce=announce)
    assert bad.error.startswith(message), bad.error


def test_a_when_can_choose_the_changes_a_step_tells() -> None:
    only_end = say("say-end", when="announcement.phase == 'Resolved'")
    run = Run(incident(severity="Critical"), announcing({"notify": [say("say"), only_end]}), fixed)
    run.drive()
    assert told(run) == [("say", "Diagnosing"), ("say", "Resolved"), ("say-end", "Resolved")]


def test_an_incident_created_acknowledged_announces_it_once_after_the_investigation_starts() -> None:
    run = Run(incident(severity="Critical", acknowledgedBy="alice"), announcing({"notify": [say("say")]}), fixed)
    run.drive()
    assert told(run) == [("say", "Diagnosing"), ("say", "Acknowledged"), ("say", "Resolved")]
