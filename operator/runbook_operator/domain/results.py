"""What running a step produced: the one value every action returns and the state machine records."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class StepResult:
    ok: bool
    message: str
    output: Mapping[str, Any] = field(default_factory=dict)
    # (key, id): the conversation this step opened on a channel (a Slack thread's ts, a paging
    # service's alert); recorded in the Incident's status.conversations[key], so the incident's
    # later notifications to that channel join it (ActionContext.conversations)
    conversation: tuple[str, str] | None = None
    # (Alertmanager URL, silence id, endsAt): a silence this step created; recorded in the Incident's
    # status.silences, and expired by the operator when the incident resolves, escalates or is deleted
    silence: tuple[str, str, str] | None = None
