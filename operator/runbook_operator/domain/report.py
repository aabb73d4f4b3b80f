"""A post-incident report in Markdown, from an Incident's body (and its Events).

Follows the runbook's "Post-Incident Procedures": the timeline, root-cause
candidates, the steps taken, every notification sent, escalation, and what is left
for humans to do.
Pure: no clock, no cluster; every field may be missing (a report for an incident
the operator has not touched yet says so instead of failing).

Every string that comes from the Incident, its status or its Events is hostile input: it
reaches the Markdown only through ``_md``, which makes it text and nothing else (no HTML,
link, image, emphasis, code-span break-out, table cell or line of its own).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from runbook_operator.domain.status import timestamp
from runbook_operator.domain.wire import clipped, printable

# Event and timeline timestamps differ by the time it takes to write status and post the Event.
_SAME_ENTRY_SECONDS = 60.0
_MESSAGE_CELL = 240
_LEVEL = re.compile(r"escalation level (\d+) '([^']*)' reached")
# Inside a line, these start Markdown (CommonMark, and GitHub's tables, strikethrough and math):
# a backslash before one of them, or an entity for HTML's three, makes each plain text.
_ESCAPES = str.maketrans({c: "\\" + c for c in "\\`*_[]~|#$"} | {"&": "&amp;", "<": "&lt;"})
_BACKTICKS = re.compile(r"`+")

# The runbook's "Post-Incident Procedures", as a checklist for the humans.
CHECKLIST = (
    ("Incident documentation", (
        "Timeline: check the timeline above and add what happened outside the operator",
        "Root cause: document the root cause analysis (the findings above are candidates, not a cause)",
        "Impact assessment: document the business and user impact",
        "Resolution steps: document the steps taken to resolve (the actions above, plus manual ones)",
    )),
    ("Prevention measures", (
        "Monitoring improvements: add or improve monitoring and alerting",
        "Process improvements: update procedures, the runbook and the RemediationPolicy",
        "Technical fixes: implement technical improvements",
        "Training: provide training to prevent recurrence",
    )),
    ("Review meeting", (
        "Participants: include all incident responders",
        "Timeline review: walk through the incident timeline",
        "Lessons learned: identify key learnings",
        "Action items: create actionable improvement items",
    )),
)  # fmt: skip


@dataclass(frozen=True)
class _Entry:
    time: datetime | None
    text_time: str
    reason: str
    message: str
    source: str  # "status" or "event"
    count: int = 1


def render(
    incident_body: Mapping[str, Any], events: Sequence[Mapping[str, Any]] = (), export: str | None = None
) -> str:
    """The report for one Incident; ``events`` are its Events as API dicts (camelCase);
    ``export``: the file ``report --export`` wrote the Incident to, for its replay command."""
    meta = _map(incident_body.get("metadata"))
    spec = _map(incident_body.get("spec"))
    status = _map(incident_body.get("status"))
    handled = bool(status.get("phase") or status.get("steps") or status.get("timeline"))
    name, namespace = str(meta.get("name") or "?"), str(meta.get("namespace") or "?")
    alert = str(spec.get("alert") or "unknown alert")
    severity = str(status.get("severity") or spec.get("severity") or "unset")
    outcome = _outcome(status) if handled else "not handled yet"

    lines = [f"# Post-incident report: {md(alert)} — {md(namespace)}/{md(name)}", ""]
    lines += [f"**Severity:** {md(severity)} · **Outcome:** {outcome}", ""]
    lines += _summary(meta, spec, status, handled)
    lines += _timeline(status, events)
    lines += _findings(status)
    lines += _actions(status)
    lines += _notifications(status)
    lines += _escalations(spec, status)
    lines += _metrics(status)
    lines += _follow_ups(spec, status, handled)
    lines += _replay(meta, export)
    return "\n".join(lines).rstrip() + "\n"


# -- sections ----------------------------------------------------------------------


def _summary(meta: Mapping[str, Any], spec: Mapping[str, Any], status: Mapping[str, Any], handled: bool) -> list[str]:
    out = ["## Summary", ""]
    what = f"alert {md(spec.get('alert') or '?', code=True)}"
    if spec.get("summary"):
        what += f": {md(spec['summary'])}"
    out.append(f"- **What happened:** {what}")
    if spec.get("description"):
        out.append(f"- **Description:** {md(spec['description'])}")
    labels = _map(spec.get("labels"))
    if labels:
        out.append("- **Labels:** " + ", ".join(md(f"{k}={v}", code=True) for k, v in sorted(labels.items())))
    target = _map(spec.get("target"))
    if target:
        where = target.get("namespace") or meta.get("namespace") or "?"
        out.append(f"- **Target:** {md(target.get('kind', '?'))} {md(where)}/{md(target.get('name', '?'))}")
    if not handled:
        out += ["- **Outcome:** not handled yet: the operator has not written a status for this incident", ""]
        return out
    out.append(f"- **Outcome:** {_outcome(status, detailed=True)}")
    policy = status.get("policy")
    if policy:
        generation = status.get("policyGeneration")
        out.append(
            f"- **Policy:** {md(policy, code=True)}"
            + (f" (generation {md(generation)})" if generation is not None else "")
        )
    else:
        out.append("- **Policy:** none")
    out.append(f"- **Remediation attempts:** {int(status.get('attempts') or 0)}")
    flags = [f for f, on in (("dry run", spec.get("dryRun")), ("suspended", spec.get("suspend"))) if on]
    if flags:
        out.append(f"- **Mode:** {', '.join(flags)}")
    if status.get("duplicateOf"):
        out.append(f"- **Duplicate of:** {md(status['duplicateOf'], code=True)}")
    started, resolved = md(status.get("startedAt") or "unknown"), md(status.get("resolvedAt") or "no")
    out.append(f"- **Started:** {started} · **Resolved:** {resolved}")
    out.append("")
    return out


def _timeline(status: Mapping[str, Any], events: Sequence[Mapping[str, Any]]) -> list[str]:
    entries = merge_timeline(status.get("timeline") or (), events)
    out = ["## Timeline", ""]
    if not entries:
        return [*out, "No timeline entries.", ""]
    out += ["| time | reason | message |", "|---|---|---|"]
    for e in entries:
        message = md(e.message, limit=_MESSAGE_CELL) + (f" (x{e.count})" if e.count > 1 else "")
        source = " (event)" if e.source == "event" else ""
        out.append(
            f"| {md(e.text_time, limit=_MESSAGE_CELL)} | {md(e.reason, limit=_MESSAGE_CELL)}{source} | {message} |"
        )
    return [*out, ""]


def merge_timeline(timeline: Iterable[Any], events: Iterable[Mapping[str, Any]]) -> list[_Entry]:
    """status.timeline and Events, ordered by time; an Event that repeats a timeline entry is dropped."""
    entries: list[_Entry] = []
    for raw in timeline:
        item = _map(raw)
        text = str(item.get("time") or "")
        entries.append(
            _Entry(_parse(text), text, str(item.get("type") or ""), str(item.get("message") or ""), "status")
        )
    unmatched = list(entries)  # each timeline entry absorbs at most one Event
    seen: set[tuple[str, ...]] = set()
    for raw in events:
        event = _map(raw)
        event_meta = _map(event.get("metadata"))
        text = str(
            event.get("lastTimestamp")
            or event.get("eventTime")
            or event.get("firstTimestamp")
            or event_meta.get("creationTimestamp")
            or ""
        )
        when = _parse(text)
        entry = _Entry(
            when,
            timestamp(when) if when else text,
            str(event.get("reason") or ""),
            str(event.get("message") or event.get("note") or ""),
            "event",
            int(event.get("count") or 1),
        )
        key = (str(event_meta.get("uid") or ""), text, entry.reason, entry.message)
        if key in seen or (not key[0] and key[1:] in {k[1:] for k in seen}):
            continue
        seen.add(key)
        twin = next((e for e in unmatched if _same(entry, e)), None)
        if twin is not None:
            unmatched.remove(twin)
            continue
        entries.append(entry)
    far = datetime.max.replace(tzinfo=UTC)
    return sorted(entries, key=lambda e: e.time or far)  # stable: same-second entries keep their order


def _findings(status: Mapping[str, Any]) -> list[str]:
    out = ["## Findings", "", "Root-cause candidates from the diagnosis (and failed steps):", ""]
    findings = [_map(f) for f in status.get("findings") or ()]
    if not findings:
        return ["## Findings", "", "No findings recorded.", ""]
    out += [f"- **{md(f.get('step')) or '?'}**: {md(f.get('message') or '')}" for f in findings]
    return [*out, ""]


def _actions(status: Mapping[str, Any]) -> list[str]:
    steps = [_map(s) for s in status.get("steps") or ()]
    out = ["## Actions taken", ""]
    if not steps:
        return [*out, "No steps ran.", ""]
    out += [
        "| stage | step | action | attempt | state | started | duration | message |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in steps:
        state = str(s.get("state") or "?")
        if s.get("approvedBy"):
            state += f", approved by {s['approvedBy']}" + (f" at {s['approvedAt']}" if s.get("approvedAt") else "")
        started, finished = _parse(s.get("startedAt")), _parse(s.get("finishedAt"))
        duration = _duration((finished - started).total_seconds()) if started and finished else "—"
        cells = (s.get("stage"), s.get("name"), s.get("action"), s.get("attempt"), state, s.get("startedAt"))
        row = " | ".join(md(c if c is not None else "—", limit=_MESSAGE_CELL) for c in cells)
        out.append(f"| {row} | {duration} | {md(s.get('message') or '', limit=_MESSAGE_CELL)} |")
    return [*out, ""]


def _notifications(status: Mapping[str, Any]) -> list[str]:
    """Every announcement and escalation notification, when it went out, what it was about."""
    steps = [_map(s) for s in status.get("steps") or () if _map(s).get("stage") in ("Announce", "Escalate")]
    out = ["## Notifications", ""]
    if not steps:
        return [*out, "None sent.", ""]
    phases = {a.get("number"): a.get("phase") for a in map(_map, status.get("announcements") or ())}
    sent = sum(1 for s in steps if s.get("state") == "Succeeded")
    failed = sum(1 for s in steps if s.get("state") == "Failed")
    out += [f"{sent} sent, {failed} failed, {len(steps) - sent - failed} not sent (skipped or still running).", ""]
    out += ["| time | about | step | action | state | message |", "|---|---|---|---|---|---|"]
    for s in sorted(steps, key=lambda s: str(s.get("finishedAt") or s.get("startedAt") or "")):
        attempt = s.get("attempt")
        if s.get("stage") == "Announce":
            about = f"announcement {attempt}: {phases.get(attempt) or 'status change'}"
        elif s.get("update"):
            about = f"escalation update {s['update']}"
        else:
            about = f"escalation level {attempt}"
        cells = (s.get("finishedAt") or s.get("startedAt"), about, s.get("name"), s.get("action"), s.get("state"))
        row = " | ".join(md(c if c is not None else "—", limit=_MESSAGE_CELL) for c in cells)
        out.append(f"| {row} | {md(s.get('message') or '', limit=_MESSAGE_CELL)} |")
    return [*out, ""]


def _escalations(spec: Mapping[str, Any], status: Mapping[str, Any]) -> list[str]:
    out = ["## Escalations", ""]
    escalation = _map(status.get("escalation"))
    fired = [str(f) for f in escalation.get("fired") or ()]
    reached: dict[str, tuple[str, str]] = {}
    for item in status.get("timeline") or ():
        entry = _map(item)
        match = _LEVEL.search(str(entry.get("message") or ""))
        if entry.get("type") == "EscalationLevelReached" and match:
            reached.setdefault(match.group(2), (match.group(1), str(entry.get("time") or "")))
    if not fired:
        out.append("- **Levels reached:** none")
    else:
        out.append("- **Levels reached:**")
        for i, level in enumerate(fired, 1):
            number, when = reached.get(level, (str(i), ""))
            if not when and level == escalation.get("level"):
                when = str(escalation.get("notifiedAt") or "")
            out.append(f"  {number}. {md(level, code=True)}" + (f" at {md(when)}" if when else ""))
    if escalation.get("nextAt"):
        out.append(f"- **Next level due:** {md(escalation['nextAt'])}")
    updates = int(escalation.get("updates") or 0)
    last = f" (last at {md(escalation['lastUpdateAt'])})" if updates and escalation.get("lastUpdateAt") else ""
    out.append(f"- **Status updates sent:** {updates}{last}")
    if status.get("acknowledgedAt"):
        who = f" by {md(spec['acknowledgedBy'])}" if spec.get("acknowledgedBy") else ""
        out.append(f"- **Acknowledged:**{who} at {md(status['acknowledgedAt'])}")
    else:
        overdue = " (ResponseOverdue: the response deadline passed)" if escalation.get("overdueNoted") else ""
        out.append(f"- **Acknowledged:** no{overdue}")
    return [*out, ""]


def _metrics(status: Mapping[str, Any]) -> list[str]:
    started = _parse(status.get("startedAt"))
    acked, resolved = _parse(status.get("acknowledgedAt")), _parse(status.get("resolvedAt"))
    deadline = _parse(status.get("responseDeadline"))
    out = ["## Response metrics", ""]
    if started is None:
        return [*out, "- **MTTA:** not acknowledged", "- **MTTR:** unresolved", "- **Response deadline:** none", ""]
    mtta = _duration((acked - started).total_seconds()) if acked else "not acknowledged"
    mttr = _duration((resolved - started).total_seconds()) if resolved else "unresolved"
    out.append(f"- **MTTA** (started → acknowledged): {mtta}")
    out.append(f"- **MTTR** (started → resolved): {mttr}")
    out.append(f"- **Response deadline:** {_deadline(status, started, acked, resolved, deadline)}")
    return [*out, ""]


def _deadline(
    status: Mapping[str, Any],
    started: datetime,
    acked: datetime | None,
    resolved: datetime | None,
    deadline: datetime | None,
) -> str:
    if deadline is None:
        return "none"
    window = _duration((deadline - started).total_seconds())
    severity = md(status.get("severity") or "default")
    head = f"{md(status.get('responseDeadline'))} ({window} after start, {severity} severity)"
    responded = min((t for t in (acked, resolved) if t is not None), default=None)
    if responded is not None and responded <= deadline:
        how = "acknowledged" if responded == acked else "resolved"
        return f"{head}: **met** ({how} {_duration((deadline - responded).total_seconds())} before it)"
    if responded is not None:
        how = "acknowledged" if responded == acked else "resolved"
        return f"{head}: **missed** ({how} {_duration((responded - deadline).total_seconds())} after it)"
    if _map(status.get("escalation")).get("overdueNoted"):
        return f"{head}: **missed** (nobody acknowledged it)"
    return f"{head}: not reached when this report was made"


def _follow_ups(spec: Mapping[str, Any], status: Mapping[str, Any], handled: bool) -> list[str]:
    out = ["## Follow-ups left for humans", ""]
    derived: list[str] = []
    if not handled:
        derived.append("The operator has not handled this incident yet: check that it runs and watches this namespace")
    phase = status.get("phase")
    for raw in status.get("steps") or ():
        s = _map(raw)
        label = f"{md(s.get('stage', '?'))} step {md(s.get('name', '?'), code=True)} ({md(s.get('action', '?'))}"
        label += f", attempt {md(s.get('attempt', '?'))})"
        message = str(s.get("message") or "")
        state = s.get("state")
        if state == "Skipped" and message.startswith("interrupted"):
            derived.append(f"Check what {label} did: it was interrupted, outcome unknown")
        elif state == "Skipped" and message.startswith("dry run"):
            derived.append(f"Dry run: {label} did not run; run it by hand or without dryRun if still needed")
        elif state == "Failed" and s.get("stage") != "Diagnose":
            derived.append(f"Investigate why {label} failed: {md(message)}")
        elif state == "AwaitingApproval" and phase not in ("Resolved", "Escalated"):
            derived.append(
                f"{label} still awaits approval: approve it (`kubectl runbook approve`) or resolve the incident"
            )
    if phase == "Escalated":
        why = _condition(status, "Escalated")
        reason = f" ({md(why.get('reason'))}: {md(why.get('message') or '')})" if why else ""
        derived.append(f"Root-cause review: the incident escalated{reason}; automation did not fix it")
    elif handled and phase != "Resolved":
        derived.append(
            f"The incident is still open (phase {md(phase or 'unknown')}): resolve it before closing the review"
        )
    if handled and not status.get("acknowledgedAt") and _map(status.get("escalation")).get("overdueNoted"):
        derived.append("Nobody acknowledged the incident by the response deadline: review on-call paging")
    out += [f"- [ ] {item}" for item in derived] or ["- Nothing derived from the incident's status."]
    out.append("")
    for title, items in CHECKLIST:
        out += [f"**{title}** (runbook):", "", *(f"- [ ] {item}" for item in items), ""]
    return out


def _replay(meta: Mapping[str, Any], export: str | None) -> list[str]:
    """How to replay this incident against a proposed policy change (docs/policies.md)."""
    name, namespace = str(meta.get("name") or "?"), str(meta.get("namespace") or "?")
    source = f"--incidents {shlex.quote(export)}" if export else f"--incidents {shlex.quote(f'{name}.yaml')}"
    archive = f"runbook-operator replay --archive -n {shlex.quote(namespace)} --name {shlex.quote(name)} --policies DIR"
    files = f"runbook-operator replay {source} --baseline MERGED_DIR --policies DIR"
    fetch = [] if export else [
        "- Without the archive, from this Incident as the cluster holds it: "
        + md(f"kubectl get incident {shlex.quote(name)} -n {shlex.quote(namespace)} -o yaml > "
             f"{shlex.quote(f'{name}.yaml')}", code=True) + ", then:"
    ]  # fmt: skip
    return [
        "## Replay against a policy change",
        "",
        "What a change of the policies would have done to this incident (docs/policies.md, "
        '"Replay past incidents against a change"):',
        "",
        f"- From the incident archive: {md(archive, code=True)}",
        *fetch,
        f"- {'From the export beside this report' if export else 'From the file'}: {md(files, code=True)}",
        "",
    ]


# -- helpers -----------------------------------------------------------------------


def _outcome(status: Mapping[str, Any], detailed: bool = False) -> str:
    phase = str(status.get("phase") or "Pending")
    condition = _condition(status, phase) if phase in ("Resolved", "Escalated") else None
    if phase not in ("Resolved", "Escalated"):
        return f"open ({md(phase)})"
    if condition is None:
        return phase
    if not detailed:
        return f"{phase} ({md(condition.get('reason') or '?')})"
    return f"{phase}, reason {md(condition.get('reason') or '?', code=True)}: {md(condition.get('message') or '')}"


def _condition(status: Mapping[str, Any], type_: str) -> Mapping[str, Any] | None:
    for raw in status.get("conditions") or ():
        c = _map(raw)
        if c.get("type") == type_ and c.get("status") == "True":
            return c
    return None


def _same(a: _Entry, b: _Entry) -> bool:
    if a.reason != b.reason or not (a.message == b.message or _truncated(a.message, b.message)):
        return False
    if a.time is None or b.time is None:
        return a.text_time == b.text_time
    return abs((a.time - b.time).total_seconds()) <= _SAME_ENTRY_SECONDS


def _truncated(a: str, b: str) -> bool:
    """Events carry at most 1024 characters of a message."""
    short, long = sorted((a, b), key=len)
    return len(short) >= 1000 and long.startswith(short)


def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _parse(text: Any) -> datetime | None:
    if not text:
        return None
    if isinstance(text, datetime):
        return text if text.tzinfo else text.replace(tzinfo=UTC)
    try:
        parsed = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _duration(seconds: float) -> str:
    total = round(seconds)
    sign, total = ("-" if total < 0 else ""), abs(total)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{sign}{days}d {hours}h {minutes:02d}m"
    if hours:
        return f"{sign}{hours}h {minutes:02d}m {secs:02d}s"
    if minutes:
        return f"{sign}{minutes}m {secs:02d}s"
    return f"{sign}{secs}s"


def md(value: Any, *, code: bool = False, limit: int | None = None) -> str:
    """``value`` as Markdown that shows exactly its text and nothing else, for every string taken
    from the Incident, its status or its Events.

    One line: control characters and line breaks become spaces, runs of blanks one space (so no
    heading, list item or table row of its own), then at most ``limit`` characters. Then either
    plain text, Markdown's punctuation behind a backslash and ``&<`` as entities (no HTML,
    autolink, link, image, emphasis or table cell; a ``>`` is harmless inside a line), or
    with ``code`` a code span fenced by more backticks than the longest run in the text, which
    nothing inside can close. The result never starts a line, and a code span never goes in a
    table cell (GitHub splits cells at ``|`` there).
    """
    text = " ".join(printable(str(value)).split())
    if limit is not None:
        text = clipped(text, limit)  # before escaping: a cut never splits an escape or an entity
    if not code:
        return text.translate(_ESCAPES)
    fence = "`" * (max(map(len, _BACKTICKS.findall(text)), default=0) + 1)
    if not text or text[0] == "`" or text[-1] == "`":
        text = f" {text} "  # the renderer strips one space each side
    return f"{fence}{text}{fence}"
