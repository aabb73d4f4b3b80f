"""What every notification channel says about an incident, as plain text: a headline and
body lines built from the step's ``ctx.details``. Each channel escapes the text for itself
(Slack's ``&<>``, HTML in email); nothing here is markup.

``details`` (built by the engine for every step) holds the incident view (name, namespace,
alert, severity, summary, labels, target), ``phase``, ``level``, ``acknowledgedBy``,
``findings`` (diagnosis), ``steps`` (what ran, in order) and, for a status-change
announcement, ``announcement``: ``{phase, number, at, reason, message}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from runbook_operator.actions.api import ActionContext

# The runbook's status words ("investigating, identified, resolving, resolved") by what is announced.
STATUS_WORDS = {
    "Pending": "waiting",
    "Diagnosing": "investigating",
    "AwaitingApproval": "needs approval",
    "Remediating": "identified, remediating",
    "Verifying": "resolving, verifying the fix",
    "Escalated": "escalated: needs people",
    "Resolved": "resolved",
    "Acknowledged": "acknowledged",
}
FINDINGS_SHOWN = 10
STEPS_SHOWN = 10


def details(ctx: ActionContext) -> dict[str, Any]:
    """The step's ``ctx.details``, with at least the incident's name and namespace (a step run
    outside the engine, e.g. in a test, has none)."""
    return {"name": ctx.incident, "namespace": ctx.namespace, **(ctx.details or {})}


def occasion(details: Mapping[str, Any]) -> str:
    """What this message is about: the announced change, else the incident's phase."""
    announcement = details.get("announcement") or {}
    return str(announcement.get("phase") or details.get("phase") or "Pending")


def headline(details: Mapping[str, Any]) -> str:
    """``[Critical] InstanceManagerDown ishchat/im-1: investigating``."""
    what = occasion(details)
    words = STATUS_WORDS.get(what, what)
    if what == "Acknowledged" and details.get("acknowledgedBy"):
        words = f"acknowledged by {details['acknowledgedBy']}"
    return (
        f"[{details.get('severity') or '-'}] {details.get('alert') or '-'} "
        f"{details.get('namespace')}/{details.get('name')}: {words}"
    )


def body(details: Mapping[str, Any]) -> list[str]:
    """The assessment: why (the transition's message), the alert's summary, what diagnosis
    found, which steps ran, and the command that shows the rest."""
    announcement = details.get("announcement") or {}
    lines = []
    if announcement.get("message") and announcement.get("phase") != "Acknowledged":  # the headline says who
        lines.append(f"{announcement.get('reason') or 'Status'}: {announcement['message']}")
    if details.get("summary"):
        lines.append(f"Summary: {details['summary']}")
    findings = list(details.get("findings") or ())
    if findings:
        lines.append("Findings:")
        lines += [f"- {f.get('step')}: {f.get('message')}" for f in findings[:FINDINGS_SHOWN]]
        if len(findings) > FINDINGS_SHOWN:
            lines.append(f"- ... and {len(findings) - FINDINGS_SHOWN} more")
    taken = [s for s in details.get("steps") or () if s.get("stage") in ("Remediate", "Verify")]
    if taken:
        lines.append("Steps taken:")
        lines += [f"- {s.get('name')} ({s.get('stage')}): {s.get('state')}" for s in taken[-STEPS_SHOWN:]]
    lines.append(f"Inspect: {inspect_command(details)}")
    return lines


def inspect_command(details: Mapping[str, Any]) -> str:
    return f"kubectl describe incident {details.get('name')} -n {details.get('namespace')}"


def text(details: Mapping[str, Any], lead: str | None = None) -> str:
    """The whole message as plain text; ``lead`` (the policy's own text) replaces the headline."""
    return "\n".join([lead or headline(details), *body(details)])
