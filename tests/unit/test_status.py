from datetime import UTC, datetime, timedelta

from runbook_operator.domain.consent import Approval
from runbook_operator.domain.lifecycle import decide
from runbook_operator.domain.model import Incident
from runbook_operator.domain.status import TIMELINE_LIMIT, ApprovalRequest, Phase, Status, StepRecord
from tests.unit.builders import policy, request

T0 = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)


def test_round_trips_through_the_api_dict() -> None:
    status = (
        Status(phase="Verifying", attempts=2, policy="p")
        .with_condition("Resolved", False, "InProgress", "m", T0)
        .with_record(StepRecord("a", "Verify", "http.check", 2, "Succeeded", "2026-11-27T08:00:00Z", output={"x": 1}))
        .noted(T0, "Verified", "done")
    )
    assert Status.from_dict(status.to_dict()) == status


def test_an_approval_request_round_trips_and_a_record_without_one_still_loads() -> None:
    request = ApprovalRequest("0a1b", "sha256:ff", "2026-11-27T08:00:00Z", {"pattern": "session:bob"})
    record = StepRecord("clear", "Remediate", "redis.deleteByPattern", 1, "AwaitingApproval", approvalRequest=request)
    status = Status(phase="AwaitingApproval").with_record(record)
    raw = status.to_dict()
    assert raw["steps"][0]["approvalRequest"] == {
        "nonce": "0a1b", "digest": "sha256:ff", "requestedAt": "2026-11-27T08:00:00Z",
        "parameters": {"pattern": "session:bob"},
    }  # fmt: skip
    assert Status.from_dict(raw) == status
    legacy = {"steps": [{"name": "clear", "stage": "Remediate", "action": "x", "attempt": 1, "state": "Succeeded",
                         "approvedBy": "alice"}]}  # fmt: skip
    loaded = Status.from_dict(legacy).steps[0]
    assert loaded.approvalRequest is None and loaded.approvedBy == "alice" and loaded.approvedDigest is None


def test_approvals_load_from_the_spec_including_ones_written_before_rounds_and_nonces() -> None:
    body = {
        "metadata": {"name": "i", "namespace": "ns"},
        "spec": {"alert": "A", "approvals": [
            {"step": "failover", "by": "alice"},  # an older version's entry: it never answers a request
            {"step": "failover", "by": "bob", "round": 2, "nonce": "00ff"},
            {"step": "", "by": "carol"}, {"by": "dave"}, "junk",
        ]},
    }  # fmt: skip
    approvals = Incident.from_body(body).approvals
    assert approvals == (Approval("failover", "alice", 0, ""), Approval("failover", "bob", 2, "00ff"))
    assert not approvals[0].answers("failover", 0, "")
    assert approvals[1].answers("failover", 2, "00ff") and not approvals[1].answers("failover", 1, "00ff")


def test_loads_a_status_written_by_a_newer_operator() -> None:
    raw = Status(phase="Resolved").to_dict() | {"futureField": 1}
    raw["conditions"] = [{"type": "Resolved", "status": "True", "reason": "Verified", "message": "",
                          "lastTransitionTime": "2026-11-27T08:00:00Z", "futureKey": "x"}]  # fmt: skip
    assert Status.from_dict(raw).condition("Resolved") is not None


def test_list_items_carry_no_nulls_but_top_level_nulls_clear_fields() -> None:
    raw = Status(phase="Diagnosing").with_record(StepRecord("a", "Diagnose", "http.check", 1, "Running")).to_dict()
    assert "finishedAt" not in raw["steps"][0] and "output" not in raw["steps"][0]
    assert raw["resolvedAt"] is None  # a merge patch removes a stale value


def test_condition_transition_time_moves_only_when_the_status_flips() -> None:
    s = Status().with_condition("Resolved", False, "InProgress", "a", T0)
    s = s.with_condition("Resolved", False, "Other", "b", T0 + timedelta(minutes=5))
    assert s.condition("Resolved").lastTransitionTime == "2026-11-27T08:00:00Z"  # type: ignore[union-attr]
    s = s.with_condition("Resolved", True, "Verified", "c", T0 + timedelta(minutes=9))
    assert s.condition("Resolved").lastTransitionTime == "2026-11-27T08:09:00Z"  # type: ignore[union-attr]
    assert len(s.conditions) == 1


def test_a_changed_condition_keeps_its_place() -> None:
    s = Status().with_condition("Diagnosed", True, "DiagnosisComplete", "a", T0)
    s = s.with_condition("Resolved", False, "InProgress", "b", T0)
    s = s.with_condition("Diagnosed", False, "Other", "c", T0 + timedelta(minutes=1))
    assert [c.type for c in s.conditions] == ["Diagnosed", "Resolved"]
    assert s.condition("Diagnosed").reason == "Other"  # type: ignore[union-attr]


def test_timeline_is_bounded() -> None:
    s = Status()
    for i in range(TIMELINE_LIMIT + 25):
        s = s.noted(T0, "Tick", str(i))
    assert len(s.timeline) == TIMELINE_LIMIT
    assert s.timeline[-1].message == str(TIMELINE_LIMIT + 24)


def test_the_phase_loads_as_a_phase_and_goes_back_as_plain_text() -> None:
    status = Status.from_dict({"phase": "Verifying"})
    assert status.phase is Phase.VERIFYING
    assert type(status.to_dict()["phase"]) is str and Status.from_dict({}).phase is None


def test_an_unknown_phase_loads_as_itself_and_the_state_machine_leaves_it_alone() -> None:
    status = Status.from_dict({"phase": "Paused", "policy": "p", "startedAt": "2026-11-27T08:00:00Z"})
    assert status.phase == "Paused" and isinstance(status.phase, Phase)
    assert status.to_dict()["phase"] == "Paused"
    body = {"metadata": {"name": "i", "namespace": "ns", "generation": 1}, "spec": {"alert": "A"}}
    decision = decide(Incident.from_body(body), status, [policy("p", remediate=[request("r")])], T0, nonce="00")
    assert decision.run is None and decision.status.phase == "Paused"


def test_a_timestamp_reads_back_only_in_the_form_the_operator_writes() -> None:
    from datetime import UTC, datetime

    import pytest

    from runbook_operator.domain.wire import parse_timestamp, timestamp

    when = datetime(2026, 11, 27, 8, 0, 5, tzinfo=UTC)
    assert parse_timestamp(timestamp(when)) == when
    for other in ("2026-11-27T08:00:05", "2026-11-27 08:00:05Z", "2026-11-27T08:00:05.5Z", "2026-13-27T08:00:05Z",
                  "2026-11-27T08:00:05+0", "yesterday", ""):  # fmt: skip
        with pytest.raises(ValueError):
            parse_timestamp(other)
