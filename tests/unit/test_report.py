"""The post-incident report, rendered from hand-made Incident bodies."""

from __future__ import annotations

import itertools
import json
import unicodedata
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from markdown_it import MarkdownIt

from runbook_operator.domain.report import merge_timeline, render
from runbook_operator.domain.wire import clipped
from runbook_operator.entrypoints import cli

SECTIONS = (
    "## Summary",
    "## Timeline",
    "## Findings",
    "## Actions taken",
    "## Notifications",
    "## Escalations",
    "## Response metrics",
    "## Follow-ups left for humans",
    "## Replay against a policy change",
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
    assert "`kubectl get incident im-1 -n prod -o yaml > im-1.yaml`, then:" in text
    assert "`runbook-operator replay --archive -n prod --name im-1 --policies DIR`" in text


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


# -- hostile text: the report renders as text, never as markup ------------------------------

# What an alert sender, an Incident creator or a step's output can put in any field.
HOSTILE = (
    "`</code><img src=x onerror=alert(1)>`",
    "```",
    "[click](https://evil.example)",
    "![x](https://evil.example/a.png)",
    "| a | b |\n# heading",
    "<script>alert(1)</script>",
    "nul\u0000byte\u0007bell\u001b[31mred",
    "`` ` ``",
    "<https://evil.example/autolink> <a href='https://evil.example'>x</a>",
    "**bold** _em_ ~~strike~~ $x^2$ [^1] \\",
    "&lt;img src=x onerror=alert(1)&gt; &#60;b&#62;",
    "one\r\n- item\n\n> quote\n\n    indented\n---\n===",
    "x\\|y\\` <!-- comment --> <![CDATA[x]]> <?php ?>",
    "[ref]: https://evil.example\n[ref] ###",
)
LONG = "<img src=x onerror=alert(1)> " + "y" * 20_000


def _incident(value: Callable[[str], str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """An Incident and an Event with ``value(field)`` in every string field the report shows; the
    fields that decide its shape (phase, states, stages, numbers, the first timestamps) are fixed."""
    v = value
    attempt = v("steps.attempt")
    status = {
        "phase": "Escalated", "severity": v("status.severity"), "policy": v("status.policy"),
        "policyGeneration": v("status.policyGeneration"), "attempts": 2, "duplicateOf": v("status.duplicateOf"),
        "startedAt": "2026-11-27T10:00:00Z", "responseDeadline": "2026-11-27T11:00:00Z",
        "resolvedAt": v("status.resolvedAt"), "acknowledgedAt": v("status.acknowledgedAt"),
        "conditions": [cond("Escalated", v("conditions.reason"), v("conditions.message"))],
        "findings": [{"step": v("findings.step"), "message": v("findings.message")}],
        "escalation": {"level": v("escalation.level"), "notifiedAt": v("escalation.notifiedAt"),
                       "fired": [v("escalation.fired")], "nextAt": v("escalation.nextAt"), "updates": 1,
                       "lastUpdateAt": v("escalation.lastUpdateAt"), "overdueNoted": True},
        "announcements": [{"number": attempt, "phase": v("announcements.phase")}],
        "steps": [
            {"stage": "Remediate", "name": v("steps.name"), "action": v("steps.action"), "attempt": attempt,
             "state": "Failed", "startedAt": v("steps.startedAt"), "finishedAt": v("steps.finishedAt"),
             "message": v("steps[0].message")},
            {"stage": "Remediate", "name": v("steps.name"), "action": v("steps.action"), "attempt": attempt,
             "state": "Succeeded", "approvedBy": v("steps.approvedBy"), "approvedAt": v("steps.approvedAt"),
             "message": v("steps[1].message")},
            {"stage": "Announce", "name": v("steps.name"), "action": v("steps.action"), "attempt": attempt,
             "state": "Succeeded", "message": v("notifications.message")},
            {"stage": "Escalate", "name": v("steps.name"), "action": v("steps.action"), "attempt": attempt,
             "state": "Failed", "update": v("steps.update"), "message": v("notifications.message")},
        ],
        "timeline": [{"time": v("timeline.time"), "type": v("timeline.type"), "message": v("timeline.message")}],
    }  # fmt: skip
    spec = {
        "summary": v("spec.summary"), "description": v("spec.description"), "severity": v("spec.severity"),
        "labels": {v("labels.key"): v("labels.value")}, "acknowledgedBy": v("spec.acknowledgedBy"),
        "target": {"kind": v("target.kind"), "namespace": v("target.namespace"), "name": v("target.name")},
    }  # fmt: skip
    incident = {"metadata": {"name": v("metadata.name"), "namespace": v("metadata.namespace")},
                "spec": {"alert": v("spec.alert"), **spec}, "status": status}  # fmt: skip
    events = [{"reason": v("event.reason"), "message": v("event.message"), "lastTimestamp": v("event.time"),
               "count": 2, "metadata": {"uid": "u1"}}]  # fmt: skip
    return incident, events


class _Html(HTMLParser):
    """What a browser would build from the rendered report: its elements, with their attributes,
    and the text it shows."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, tuple[tuple[str, str | None], ...]]] = []
        self.rows: list[list[str]] = []
        self.text: list[str] = []
        self.in_cell = False
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, tuple(attrs)))
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self.rows[-1].append("")
            self.in_cell = True

    def handle_endtag(self, tag: str) -> None:
        self.in_cell = self.in_cell and tag not in ("td", "th")

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self.in_cell:
            self.rows[-1][-1] += data

    def handle_comment(self, data: str) -> None:
        self.elements.append(("<!--", ()))

    def handle_decl(self, decl: str) -> None:
        self.elements.append(("<!", ()))

    def handle_pi(self, data: str) -> None:
        self.elements.append(("<?", ()))

    def unknown_decl(self, data: str) -> None:
        self.elements.append(("<![", ()))

    def shown(self) -> str:
        return _norm("".join(self.text))


def _html(text: str) -> _Html:
    """The report as GitHub renders it: CommonMark, with tables and strikethrough, raw HTML passed."""
    renderer = MarkdownIt("commonmark", {"html": True}).enable(["table", "strikethrough"])
    return _Html(renderer.render(text))


BIDI = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"


def _norm(text: str) -> str:
    """Text as it is shown: a control or bidirectional character is a blank, a run of blanks one space."""
    return " ".join("".join(" " if unicodedata.category(c) == "Cc" or c in BIDI else c for c in text).split())


def test_bidirectional_controls_cannot_reorder_what_the_report_shows() -> None:
    """ "Trojan Source": U+202E shows the text after it reversed, so `resolved\u202e...` could
    read as something else in a rendered report or a Slack message."""
    disguised = "approved by \u202eecila\u202c \u2066admin\u2069 \u200fok"
    text = render(*_incident(lambda field: disguised))
    assert not set(BIDI) & set(text)
    assert "approved by ecila admin ok" in _html(text).shown()


def test_hostile_text_in_every_field_is_shown_as_text_and_builds_no_markup() -> None:
    placed: dict[str, str] = {}
    hostile = itertools.cycle(HOSTILE)

    def value(field: str) -> str:
        if field not in placed:
            placed[field] = LONG if field == "spec.description" else next(hostile)
        return placed[field]

    incident, events = _incident(value)
    page = _html(render(incident, events))
    plain = _html(render(*_incident(lambda field: field)))

    # The same elements, in the same order, as the report of an incident without markup in it:
    # no <img>, <script>, <a>, comment or heading came from the data.
    assert page.elements == plain.elements
    assert {tag for tag, _ in page.elements} <= {"h1", "h2", "p", "strong", "code", "ul", "ol", "li", "table",
                                                 "thead", "tbody", "tr", "th", "td"}  # fmt: skip
    assert not any(attrs for _, attrs in page.elements)
    # Each value is on the page as the text it is, whole (a table cell shows its first 237 characters).
    shown = page.shown()
    for field, text in placed.items():
        assert _norm(text)[:237] in shown, field
    assert _norm(LONG) in shown
    # A | or a line break in a step's message stays in that step's message cell.
    actions = [row for row in page.rows if len(row) == 8][1:]
    messages = ("steps[0].message", "steps[1].message", "notifications.message", "notifications.message")
    assert [row[7] for row in actions] == [clipped(_norm(placed[f]), 240) for f in messages]


def test_a_backtick_run_gets_a_longer_fence_and_normal_text_is_left_as_it_is() -> None:
    text = render(body(RESOLVED, summary="a ``` b", labels={"app": "im", "q": "`x`"}))
    assert "- **What happened:** alert `InstanceManagerDown`: a \\`\\`\\` b" in text
    assert "- **Labels:** `app=im`, `` q=`x` ``\n" in text  # its own backtick: a longer fence, a space inside
    assert "| Remediate | failover | http.request | 1 | Succeeded, approved by alice at 2026-11-27T08:24:59Z |" in text
    assert "- **health**: GET /health: status 503, expected 200" in text


# Arbitrary text, with the pieces of Markdown's and HTML's syntax drawn often.
SYNTAX = ("`", "``", "\\", "*", "_", "~~", "[", "](", ")", "!", "|", "#", "$", "<", ">", "&", "&lt;", "&#60;",
          "<img src=x>", "<a href=x>", "</code>", "<!--", "http://e.x", "\n", "\r", "\x00", " ", "    ", "- ", "1. ",
          "> ", "---", ":")  # fmt: skip
TEXTS = st.lists(st.sampled_from(SYNTAX) | st.text(max_size=4), min_size=1, max_size=12).map("".join).filter(bool)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(min_size=1, max_size=80) | TEXTS)
def test_any_text_in_any_field_is_shown_as_that_text(text: str) -> None:
    page = _html(render(*_incident(lambda field: text)))
    plain = _html(render(*_incident(lambda field: "x")))
    assert page.elements == plain.elements
    assert _norm(text) in page.shown()
    steps = [row for row in page.rows if len(row) == 8][1:]  # the Actions table, without its header
    assert len(steps) == 4 and all(row[1] == _norm(text) for row in steps)
