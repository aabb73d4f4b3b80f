"""Escalation timing with an injected clock: levels, updates, acknowledgement, notify once per level."""

from dataclasses import replace
from datetime import timedelta

from runbook_operator.domain.status import Phase, Status
from tests.unit.builders import check, incident, policy, request
from tests.unit.test_lifecycle import T0, Run


def webhook(name: str) -> dict[str, object]:
    return {"name": name, "action": "notify.webhook", "with": {"url": "http://hooks.local/x", "format": "slack"}}


def escalating(**escalate: object) -> list[object]:
    spec = {"levels": [{"name": "on-call", "notify": [webhook("page-oncall")]},
                       {"name": "team-lead", "after": "30m", "notify": [webhook("page-lead")]},
                       {"name": "manager", "after": "1h", "notify": [webhook("page-manager")]}]} | escalate  # fmt: skip
    return [policy("p", remediate=[request("restart")], verify=[check("ok")], escalate=spec)]


def never_fixed(name: str, attempt: int) -> bool:
    return name.startswith("page") or name == "restart"


def test_each_level_fires_at_its_time_and_notifies_exactly_once() -> None:
    run = Run(incident(severity="Critical"), escalating(), never_fixed)  # type: ignore[arg-type]
    run.drive()
    assert run.status.phase == Phase.ESCALATED.value
    assert run.ran.count(("page-oncall", 1)) == 1 and run.status.escalation.fired == ("on-call",)
    assert run.status.escalation.nextAt == "2026-11-27T08:15:00Z"  # the response deadline comes first
    run.drive(horizon=timedelta(minutes=29))
    assert run.status.escalation.fired == ("on-call",)
    run.drive(horizon=timedelta(hours=2))
    assert run.status.escalation.fired == ("on-call", "team-lead", "manager")
    for page, level in (("page-oncall", 1), ("page-lead", 2), ("page-manager", 3)):
        assert run.ran.count((page, level)) == 1, run.ran
    assert run.status.escalation.level == "manager"
    assert [e.message.split(" reached")[0] for e in run.events if e.reason == "EscalationLevelReached"] == [
        "escalation level 1 'on-call'", "escalation level 2 'team-lead'", "escalation level 3 'manager'"]  # fmt: skip


def test_time_based_levels_fire_even_while_remediation_is_in_progress() -> None:
    candidates = [policy("p", remediate=[request("restart", requiresApproval=True)],
                         escalate={"levels": [{"name": "team-lead", "after": "30m", "notify": [webhook("page-lead")]}]})]  # fmt: skip
    run = Run(incident(), candidates, lambda n, a: True)
    run.drive(horizon=timedelta(minutes=31))
    assert run.status.phase == Phase.AWAITING_APPROVAL.value
    assert ("page-lead", 1) in run.ran and run.status.escalation.level == "team-lead"


def test_updates_are_sent_every_interval_while_escalated() -> None:
    run = Run(
        incident(),
        escalating(updateEvery="30m", levels=[{"name": "on-call", "notify": [webhook("page-oncall")]}]),
        never_fixed,
    )  # type: ignore[arg-type]
    run.drive(horizon=timedelta(hours=2, minutes=1))
    assert run.status.escalation.updates == 4
    assert [a for n, a in run.ran if n == "page-oncall"] == [1, 101, 102, 103, 104]


def test_runbook_defaults_without_an_escalate_section() -> None:
    run = Run(
        incident(severity="Critical"),
        [policy("p", remediate=[request("r")], verify=[check("v")])],
        lambda n, a: n == "r",
    )
    run.drive(horizon=timedelta(hours=2))
    assert run.status.escalation.fired == ("on-call", "team-lead", "manager")
    assert run.status.escalation.updates == 2  # Critical: every 30 minutes after the last level (09:30, 10:00)
    medium = Run(incident(), [policy("p", remediate=[request("r")], verify=[check("v")])], lambda n, a: n == "r")
    medium.drive(horizon=timedelta(hours=2))
    assert medium.status.escalation.fired == ("on-call", "team-lead") and medium.status.escalation.updates == 0


def test_response_deadline_from_severity_and_acknowledgement() -> None:
    for severity, minutes in (("Critical", 15), ("High", 60), ("Medium", 240), ("Low", 1440)):
        run = Run(incident(severity=severity), escalating(), never_fixed)  # type: ignore[arg-type]
        run.drive(horizon=timedelta(0))
        assert run.status.responseDeadline == (T0 + timedelta(minutes=minutes)).strftime("%Y-%m-%dT%H:%M:%SZ")
    run = Run(incident(severity="Critical"), escalating(), never_fixed)  # type: ignore[arg-type]
    run.drive(horizon=timedelta(minutes=16))
    assert "ResponseOverdue" in run.reasons
    acked = Run(incident(severity="Critical"), escalating(), never_fixed)  # type: ignore[arg-type]
    acked.drive(horizon=timedelta(0))
    acked.now += timedelta(minutes=5)
    acked.inc = replace(acked.inc, acknowledged_by="bob")
    acked.drive(horizon=timedelta(minutes=16))
    assert acked.status.acknowledgedAt == "2026-11-27T08:05:00Z"
    assert acked.condition("Acknowledged") == ("True", "Acknowledged")
    assert "ResponseOverdue" not in acked.reasons


def test_after_attempts_escalates_before_max_attempts() -> None:
    candidates = [
        policy(
            "p", remediate=[request("r")], verify=[check("v")], limits={"maxAttempts": 5}, escalate={"afterAttempts": 2}
        )
    ]
    run = Run(incident(), candidates, lambda n, a: n == "r")
    run.drive()
    assert run.status.attempts == 2 and run.condition("Escalated") == ("True", "RemediationExhausted")


def test_a_failed_notification_is_recorded_and_not_retried_forever() -> None:
    run = Run(incident(), escalating(), lambda n, a: n == "restart")  # type: ignore[arg-type]
    run.drive()
    record = run.status.record("Escalate", "page-oncall", 1)
    assert record is not None and record.state == "Failed"
    run.drive()
    assert run.ran.count(("page-oncall", 1)) == 1


def test_update_records_say_which_update_and_keep_the_attempt_the_previous_version_reads() -> None:
    run = Run(
        incident(),
        escalating(updateEvery="30m", levels=[{"name": "on-call", "notify": [webhook("page-oncall")]}]),
        never_fixed,
    )  # type: ignore[arg-type]
    run.drive(horizon=timedelta(hours=1, minutes=1))
    written = run.status.to_dict()["steps"]
    pages = [(s["attempt"], s.get("update")) for s in written if s["name"] == "page-oncall"]
    assert pages == [(1, None), (101, 1), (102, 2)]
    # the previous version loads only the fields it knows, and finds its records by the attempt
    previous = [{k: v for k, v in s.items() if k != "update"} for s in written]
    assert [(s["stage"], s["name"], s["attempt"]) for s in previous] == [
        (s["stage"], s["name"], s["attempt"]) for s in written
    ]


def test_update_records_the_previous_version_wrote_are_read_as_updates() -> None:
    run = Run(
        incident(),
        escalating(updateEvery="30m", levels=[{"name": "on-call", "notify": [webhook("page-oncall")]}]),
        never_fixed,
    )  # type: ignore[arg-type]
    run.drive(horizon=timedelta(hours=1, minutes=1))
    raw = run.status.to_dict()
    raw["steps"] = [{k: v for k, v in s.items() if k != "update"} for s in raw["steps"]]  # as it wrote them
    run.status = Status.from_dict(raw)
    assert [s.update for s in run.status.steps if s.name == "page-oncall"] == [None, 1, 2]
    run.drive(horizon=timedelta(minutes=1))
    assert [a for n, a in run.ran if n == "page-oncall"] == [1, 101, 102]  # nothing sent again
    run.drive(horizon=timedelta(minutes=30))
    assert run.status.escalation.updates == 3
    assert [a for n, a in run.ran if n == "page-oncall"] == [1, 101, 102, 103]
