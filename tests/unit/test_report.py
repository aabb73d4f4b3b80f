"""The post-incident report, rendered from hand-made Incident bodies."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from runbook_operator import cli
from runbook_operator.report import merge_timeline, render

SECTIONS = (
    "## Summary",
    "## Timeline",
    "## Findings",
    "## Actions taken",
    "## Notifications",
    "## Escalations",
    "## Response metrics",
    "## Follow-ups left for humans",
)


def body(status: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "apiVersion": "remediation.ishchat.io/v1alpha1",
        "kind": "Incident",
        "metadata": {"name": "im-1", "namespace": "prod"},
        "spec": {"alert": "InstanceManagerDown", **spec},
    }
    if status is not None:
        doc["status"] = status
    return doc


def step(stage: str, name: str, state: str, start: str, end: str, attempt: int = 1, **extra: Any) -> dict[str, Any]:
    return {"stage": stage, "name": name, "action": "http.request", "attempt": attempt, "state": state,
            "startedAt": start, "finishedAt": end, "message": f"{name} {state.lower()}", **extra}  # fmt: skip


def cond(type_: str, reason: str, message: str) -> dict[str, Any]:
    return {"type": type_, "status": "True", "reason": reason, "message": message, "lastTransitionTime": "x"}


RESOLVED = {
    "phase": "Resolved",
    "policy": "im-down",
    "policyGeneration": 3,
    "severity": "Critical",
    "attempts": 1,
    "startedAt": "2026-11-27T08:20:00Z",
    "acknowledgedAt": "2026-11-27T08:24:30Z",
    "resolvedAt": "2026-11-27T08:31:05Z",
    "responseDeadline": "2026-11-27T08:35:00Z",
    "conditions": [cond("Diagnosed", "DiagnosisComplete", "1 step(s) ran"),
                   cond("Resolved", "Verified", "1 verification step(s) passed on attempt 1")],
    "findings": [{"step": "health", "message": "GET /health: status 503, expected 200"}],
    "steps": [
        step("Diagnose", "health", "Failed", "2026-11-27T08:20:00Z", "2026-11-27T08:20:01Z"),
        step("Remediate", "failover", "Succeeded", "2026-11-27T08:25:00Z", "2026-11-27T08:26:30Z",
             approvedBy="alice", approvedAt="2026-11-27T08:24:59Z"),
        step("Verify", "healthy-again", "Succeeded", "2026-11-27T08:31:00Z", "2026-11-27T08:31:05Z"),
    ],
    "timeline": [
        {"time": "2026-11-27T08:20:00Z", "type": "PolicyMatched", "message": "Pending -> Diagnosing: policy im-down"},
        {"time": "2026-11-27T08:24:59Z", "type": "Approved", "message": "step 'failover' approved by alice"},
        {"time": "2026-11-27T08:31:05Z", "type": "Verified", "message": "Verifying -> Resolved: passed"},
    ],
}  # fmt: skip

ESCALATED = {
    "phase": "Escalated",
    "policy": "im-down",
    "policyGeneration": 1,
    "severity": "High",
    "attempts": 2,
    "startedAt": "2026-11-27T10:00:00Z",
    "responseDeadline": "2026-11-27T11:00:00Z",
    "conditions": [cond("Escalated", "RemediationExhausted", "2 attempt(s) did not fix it")],
    "escalation": {"level": "team-lead", "notifiedAt": "2026-11-27T10:30:00Z", "fired": ["on-call", "team-lead"],
                   "updates": 2, "lastUpdateAt": "2026-11-27T11:00:00Z", "overdueNoted": True},
    "steps": [
        step("Remediate", "restart", "Succeeded", "2026-11-27T10:00:01Z", "2026-11-27T10:00:02Z"),
        step("Verify", "healthy-again", "Failed", "2026-11-27T10:00:03Z", "2026-11-27T10:00:13Z"),
        step("Remediate", "failover", "Skipped", "2026-11-27T10:01:00Z", "2026-11-27T10:01:00Z", attempt=2,
             message="interrupted: the operator stopped while this destructive step ran; outcome unknown, not run again"),
        step("Escalate", "page-oncall", "Succeeded", "2026-11-27T10:02:00Z", "2026-11-27T10:02:01Z"),
    ],
    "timeline": [
        {"time": "2026-11-27T10:02:00Z", "type": "EscalationLevelReached", "message": "escalation level 1 'on-call' reached (page-oncall)"},
        {"time": "2026-11-27T10:30:00Z", "type": "EscalationLevelReached", "message": "escalation level 2 'team-lead' reached (page-lead)"},
    ],
}  # fmt: skip


def test_resolved_incident_has_every_section_and_the_numbers() -> None:
    text = render(body(RESOLVED, acknowledgedBy="bob", summary="IM is down"))
    assert text.startswith("# Post-incident report: InstanceManagerDown — prod/im-1\n")
    assert "**Severity:** Critical · **Outcome:** Resolved (Verified)" in text
    for section in SECTIONS:
        assert f"\n{section}\n" in text
    assert "reason `Verified`: 1 verification step(s) passed on attempt 1" in text
    assert "`im-down` (generation 3)" in text and "**Remediation attempts:** 1" in text
    assert "IM is down" in text
    assert "- **MTTA** (started → acknowledged): 4m 30s" in text
    assert "- **MTTR** (started → resolved): 11m 05s" in text
    assert "**met** (acknowledged 10m 30s before it)" in text
    assert "- **health**: GET /health: status 503, expected 200" in text
    assert "| Remediate | failover | http.request | 1 | Succeeded, approved by alice at 2026-11-27T08:24:59Z |" in text
    assert "| 1m 30s |" in text  # the failover's duration
    assert "- **Acknowledged:** by bob at 2026-11-27T08:24:30Z" in text
    assert "- **Levels reached:** none" in text
    assert "Root-cause review" not in text
    assert "- [ ] Impact assessment: document the business and user impact" in text
    assert "**Review meeting** (runbook):" in text


def test_escalated_incident_lists_levels_updates_and_follow_ups() -> None:
    text = render(body(ESCALATED))
    assert "**Outcome:** Escalated (RemediationExhausted)" in text
    assert "  1. `on-call` at 2026-11-27T10:02:00Z\n  2. `team-lead` at 2026-11-27T10:30:00Z" in text
    assert "- **Status updates sent:** 2 (last at 2026-11-27T11:00:00Z)" in text
    assert "- **Acknowledged:** no (ResponseOverdue" in text
    assert "- **MTTA** (started → acknowledged): not acknowledged" in text
    assert "- **MTTR** (started → resolved): unresolved" in text
    assert "**missed** (nobody acknowledged it)" in text
    assert "- [ ] Root-cause review: the incident escalated (RemediationExhausted: 2 attempt(s) did not fix it)" in text
    assert "- [ ] Check what Remediate step `failover` (http.request, attempt 2) did: it was interrupted" in text
    assert "- [ ] Investigate why Verify step `healthy-again` (http.request, attempt 1) failed" in text
    assert "review on-call paging" in text
    for section in SECTIONS:
        assert section in text


def test_dry_run_steps_are_follow_ups() -> None:
    status = {
        "phase": "Escalated", "severity": "Critical", "attempts": 1, "startedAt": "2026-11-27T08:00:00Z",
        "conditions": [cond("Escalated", "DryRun", "dry run: 1 step(s) not run")],
        "steps": [step("Remediate", "restart", "Skipped", "2026-11-27T08:00:01Z", "2026-11-27T08:00:01Z",
                       message="dry run: would run http.request with {url: x}")],
    }  # fmt: skip
    text = render(body(status, dryRun=True))
    assert "**Outcome:** Escalated (DryRun)" in text and "- **Mode:** dry run" in text
    assert "- [ ] Dry run: Remediate step `restart` (http.request, attempt 1) did not run" in text
    assert "| 0s |" in text


def test_awaiting_approval_is_an_open_follow_up() -> None:
    status = {"phase": "AwaitingApproval", "startedAt": "2026-11-27T08:00:00Z",
              "steps": [{"stage": "Remediate", "name": "failover", "action": "http.request", "attempt": 1,
                         "state": "AwaitingApproval", "startedAt": "2026-11-27T08:00:01Z"}]}  # fmt: skip
    text = render(body(status))
    assert "**Outcome:** open (AwaitingApproval)" in text
    assert "failover` (http.request, attempt 1) still awaits approval" in text
    assert "| — |" in text  # no finish, no duration
    assert "The incident is still open (phase AwaitingApproval)" in text


@pytest.mark.parametrize("status", [None, {}, {"phase": None}])
def test_an_incident_without_status_is_not_handled_yet(status: dict[str, Any] | None) -> None:
    text = render(body(status))
    assert "**Outcome:** not handled yet" in text
    for section in SECTIONS:
        assert section in text
    assert "No steps ran." in text and "No timeline entries." in text and "unresolved" in text


def test_garbage_fields_do_not_break_it() -> None:
    text = render({"spec": None, "status": {"phase": "Resolved", "steps": [{}], "timeline": [{"time": "soon"}],
                                            "findings": [None], "escalation": "x", "conditions": [None]}})  # fmt: skip
    assert "# Post-incident report: unknown alert — ?/?" in text


def event(time: str, reason: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"kind": "Event", "reason": reason, "message": message, "lastTimestamp": time, "type": "Normal",
            "involvedObject": {"kind": "Incident", "name": "im-1"}, **extra}  # fmt: skip


def test_timeline_merges_events_by_time_and_drops_duplicates() -> None:
    events = [
        event("2026-11-27T08:31:06+00:00", "Verified", "Verifying -> Resolved: passed"),  # twin of the status entry
        event("2026-11-27T08:22:00Z", "Acknowledged", "acknowledged by bob"),  # older than the timeline kept
        event("2026-11-27T08:22:00Z", "Acknowledged", "acknowledged by bob"),  # listed twice
        event("2026-11-27T07:59:00Z", "Other", "from another controller", count=3),
    ]
    entries = merge_timeline(RESOLVED["timeline"], events)
    assert [(e.reason, e.source) for e in entries] == [
        ("Other", "event"),
        ("PolicyMatched", "status"),
        ("Acknowledged", "event"),
        ("Approved", "status"),
        ("Verified", "status"),
    ]
    text = render(body(RESOLVED), events)
    assert "| 2026-11-27T08:22:00Z | Acknowledged (event) | acknowledged by bob |" in text
    assert "from another controller (x3)" in text
    assert text.count("Verifying -> Resolved: passed") == 1


def test_the_same_message_much_later_is_another_entry() -> None:
    events = [event("2026-11-27T09:31:05Z", "Verified", "Verifying -> Resolved: passed")]
    assert len(merge_timeline(RESOLVED["timeline"], events)) == 4


def test_cli_renders_from_a_file_yaml_json_or_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "inc.yaml"
    source.write_text(yaml.safe_dump(body(RESOLVED)))
    assert cli.main(["report", "-f", str(source)]) == 0
    from_yaml = capsys.readouterr().out
    assert from_yaml == render(body(RESOLVED))
    listed = tmp_path / "list.json"
    listed.write_text(
        json.dumps(
            {
                "kind": "List",
                "items": [body(RESOLVED), event("2026-11-27T08:22:00Z", "Acknowledged", "acknowledged by bob")],
            }
        )
    )
    out = tmp_path / "report.md"
    assert cli.main(["report", "-f", str(listed), "-o", str(out)]) == 0
    assert "acknowledged by bob" in out.read_text() and capsys.readouterr().out == ""


def test_cli_says_when_there_is_no_incident(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "inc.yaml"
    source.write_text(yaml.safe_dump(body(RESOLVED)))
    assert cli.main(["report", "other", "-f", str(source)]) == 1
    assert "no Incident named other found" in capsys.readouterr().err


def test_every_notification_is_listed_with_its_time_and_what_it_was_about() -> None:
    status = {
        "phase": "Resolved",
        "announcements": [
            {"number": 1, "phase": "Diagnosing", "at": "2026-11-27T08:00:00Z", "done": True},
            {"number": 2, "phase": "Resolved", "at": "2026-11-27T08:05:00Z", "done": True},
        ],
        "steps": [
            step("Announce", "tell-slack", "Succeeded", "2026-11-27T08:00:01Z", "2026-11-27T08:00:02Z"),
            step("Diagnose", "ping", "Failed", "2026-11-27T08:00:02Z", "2026-11-27T08:00:03Z"),
            step("Escalate", "page", "Failed", "2026-11-27T08:03:00Z", "2026-11-27T08:03:01Z"),
            step("Escalate", "page", "Succeeded", "2026-11-27T08:33:00Z", "2026-11-27T08:33:01Z", 101, update=1),
            step("Announce", "tell-slack", "Succeeded", "2026-11-27T08:05:01Z", "2026-11-27T08:05:02Z", 2),
            step("Announce", "tell-pd", "Skipped", "2026-11-27T08:05:02Z", "2026-11-27T08:05:02Z", 2),
        ],
    }
    text = render(body(status))
    section = text.split("## Notifications", 1)[1].split("\n## ", 1)[0]
    assert "3 sent, 1 failed, 1 not sent" in section
    rows = [line for line in section.splitlines() if line.startswith("| 2026")]
    assert [row.split(" | ")[:3] for row in rows] == [
        ["| 2026-11-27T08:00:02Z", "announcement 1: Diagnosing", "tell-slack"],
        ["| 2026-11-27T08:03:01Z", "escalation level 1", "page"],
        ["| 2026-11-27T08:05:02Z", "announcement 2: Resolved", "tell-slack"],
        ["| 2026-11-27T08:05:02Z", "announcement 2: Resolved", "tell-pd"],
        ["| 2026-11-27T08:33:01Z", "escalation update 1", "page"],
    ]
    assert "ping" not in section
