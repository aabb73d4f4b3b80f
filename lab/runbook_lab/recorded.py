"""Recorded incidents without a cluster: the core driven as the operator drives it, each step
answered by a script instead of a target, people approving on cue. What the archive would hold
after such a run, for the replay's tests and its benchmark."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from runbook_operator.domain.consent import Approval
from runbook_operator.domain.lifecycle import StepResult, complete, decide
from runbook_operator.domain.matching import Candidate
from runbook_operator.domain.model import Incident
from runbook_operator.domain.status import Phase, Status, parse_timestamp
from runbook_operator.gitops.replay import Recording

T0 = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)
Script = Callable[[str, int], tuple[bool, float]]  # (step, attempt) -> (ok, seconds it ran)


def live(
    inc: Incident,
    candidates: Sequence[Candidate],
    script: Script,
    approvals: Mapping[str, tuple[str, float]] | None = None,
    start: datetime = T0,
) -> Recording:
    """Run the core until the incident rests, steps answering from ``script`` and people approving
    ``approvals`` (step -> who, seconds after the request); nobody else approves anything."""
    status, now = Status(), start
    for n in range(500):
        decision = decide(inc, status, candidates, now, nonce=f"live-{n}")
        status = decision.status
        if decision.run is None:
            waiting = status.awaiting_approval()
            request = waiting.approvalRequest if waiting is not None else None
            if waiting is not None and request is not None and waiting.name in (approvals or {}):
                by, after = (approvals or {})[waiting.name]
                inc = replace(
                    inc, approvals=(*inc.approvals, Approval(waiting.name, by, waiting.attempt, request.nonce))
                )
                now = max(now, parse_timestamp(request.requestedAt) + timedelta(seconds=after))
                continue
            if status.phase in (Phase.RESOLVED, Phase.ESCALATED, Phase.AWAITING_APPROVAL) or decision.wake_at is None:
                break
            now = max(now, decision.wake_at)
            continue
        call = decision.run
        ok, seconds = script(call.step.name, call.attempt)
        now += timedelta(seconds=seconds)
        status, _ = complete(status, call, StepResult(ok, "ok" if ok else "boom"), now, seconds)
    return Recording(inc, status)


# -- three changes a reviewer of the ISH Chat pack could be asked to merge -----------------------
# Each takes a RemediationPolicy body and returns it changed (a copy) if it is the policy the
# change is about, else as it is. The replay's end-to-end test and its benchmark propose them.


def _edited(body: Mapping[str, Any], policy: str, edit: Callable[[dict[str, Any]], None]) -> Mapping[str, Any]:
    name = str(body.get("metadata", {}).get("name", ""))
    if name != policy and not name.startswith(f"{policy}-copy"):  # the benchmark's copies: redis-down-copy3
        return body
    changed = copy.deepcopy(dict(body))
    edit(changed["spec"])
    return changed


def failover_without_approval(body: Mapping[str, Any]) -> Mapping[str, Any]:
    """high-error-rate: the provider failovers (destructive) no longer wait for a person."""

    def edit(spec: dict[str, Any]) -> None:
        for step in spec["remediate"]:
            if step["name"].startswith("failover-"):
                step["requiresApproval"] = False

    return _edited(body, "high-error-rate", edit)


def redis_restart_removed(body: Mapping[str, Any]) -> Mapping[str, Any]:
    """redis-down: the rollout restart is dropped (say, another controller restarts Redis now)."""

    def edit(spec: dict[str, Any]) -> None:
        spec["remediate"] = [s for s in spec["remediate"] if s["name"] != "restart"]

    return _edited(body, "redis-down", edit)


def cpu_critical_only(body: Mapping[str, Any]) -> Mapping[str, Any]:
    """high-cpu-usage: a narrower match, only Critical HighCPUUsage alerts (the pack's are High)."""

    def edit(spec: dict[str, Any]) -> None:
        spec["match"]["severities"] = ["Critical"]

    return _edited(body, "high-cpu-usage", edit)


PACK_CHANGES: dict[str, Callable[[Mapping[str, Any]], Mapping[str, Any]]] = {
    "failover-without-approval": failover_without_approval,
    "redis-restart-removed": redis_restart_removed,
    "cpu-critical-only": cpu_critical_only,
}
