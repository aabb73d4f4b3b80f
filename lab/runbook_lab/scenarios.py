"""The twelve runbook scenarios the lab plays: fault → alert → Incident → where the runbook ends.

Faults are injected in three waves of scenarios that do not touch the same thing, each wave
followed until every one of its alerts has an Incident that reached a settled phase, then
cleared. ``EXPECTED`` is where the runbook leaves each one: ``Resolved`` where its steps fix
the fault, ``AwaitingApproval`` where a destructive step needs a person, ``Escalated`` where
the runbook hands over to people. :func:`play` is shared by ``runbook-operator demo`` and
the end-to-end tests; it reads Incidents through a callable, so it needs no cluster itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from runbook_lab.lab import ALERTS

WAVES: tuple[tuple[str, ...], ...] = (
    ("instance-manager-down", "intelligent-router-down", "load-balancer-down", "postgresql-down", "redis-down"),
    ("high-response-time", "high-error-rate", "high-memory-usage", "disk-space-running-low", "postgresql-slow-queries"),
    ("high-cpu-usage", "unexpected-cost-spike"),
)
EXPECTED = {
    "InstanceManagerDown": "Resolved",
    "IntelligentRouterDown": "Resolved",
    "LoadBalancerDown": "Resolved",
    "PostgreSQLDown": "Resolved",
    "RedisDown": "Resolved",
    "HighResponseTime": "Resolved",
    "HighErrorRate": "Resolved",  # failing over a provider is destructive: on-call approves it (APPROVALS)
    "HighMemoryUsage": "Escalated",  # a restart does not fix a leak: people raise limits, find the leak
    "DiskSpaceRunningLow": "AwaitingApproval",  # docker prune
    "PostgreSQLSlowQueries": "AwaitingApproval",  # REINDEX (after ANALYZE ran)
    "HighCPUUsage": "Resolved",
    "UnexpectedCostSpike": "AwaitingApproval",  # scaling a provider down is a budget decision
}
SETTLED = frozenset({"Resolved", "AwaitingApproval", "Escalated"})
# the step on-call approves (through `runbook-operator approve`) once its incident waits for it
APPROVALS = {"HighErrorRate": "failover-openai"}
Approve = Callable[[str, str], bool]  # (incident name, step) -> approved


@dataclass
class Outcome:
    """One scenario as it ended (or as far as it got)."""

    fault: str
    alert: str
    injected: float  # time.monotonic()
    incident: dict[str, Any] | None = None
    settled_after: float | None = None  # seconds from injection
    phases: list[str] = field(default_factory=list)
    approved: bool | None = None  # on-call approved its step of APPROVALS (False: the approval failed)
    # on a real node: workload -> [(old container id, new container id)] its restarts replaced
    replaced: dict[str, list[tuple[str, str]]] = field(default_factory=dict)

    @property
    def phase(self) -> str:
        return str(((self.incident or {}).get("status") or {}).get("phase") or "-")

    @property
    def ok(self) -> bool:
        return self.phase == EXPECTED[self.alert]

    @property
    def told(self) -> bool:
        """Every change its policy announces has been told (or given up on)?"""
        status = (self.incident or {}).get("status") or {}
        return all(a.get("done") for a in status.get("announcements") or ())

    def messages(self) -> tuple[int, int]:
        """(sent, failed): its notifications (announcements and escalation pages)."""
        steps = ((self.incident or {}).get("status") or {}).get("steps") or []
        told = [s.get("state") for s in steps if s.get("stage") in ("Announce", "Escalate")]
        return told.count("Succeeded"), told.count("Failed")


def play(
    faults: Iterable[str],
    inject: Callable[[str], None],
    incidents: Callable[[], list[dict[str, Any]]],
    timeout: float = 240.0,
    ignore: Iterable[str] = (),
    on_change: Callable[[Outcome, str], None] | None = None,
    poll: float = 1.0,
    approve: Approve | None = None,
) -> dict[str, Outcome]:
    """Inject ``faults`` and follow their alerts' new Incidents until each settles (or ``timeout``).

    ``ignore``: names of Incidents that existed before; ``on_change(outcome, phase)`` sees
    every phase an Incident is seen in. The first new Incident of an alert is its scenario's.
    ``approve``: how on-call approves the steps of :data:`APPROVALS` (None: nobody does).
    """
    seen = set(ignore)
    outcomes: dict[str, Outcome] = {}
    for fault in faults:
        inject(fault)
        outcomes[ALERTS[fault]] = Outcome(fault, ALERTS[fault], time.monotonic())
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _observe(outcomes, incidents(), seen, on_change, approve)
        if all(o.settled_after is not None and o.told for o in outcomes.values()):
            break
        time.sleep(poll)
    return outcomes


def _observe(
    outcomes: Mapping[str, Outcome],
    items: list[dict[str, Any]],
    seen: set[str],
    on_change: Callable[[Outcome, str], None] | None,
    approve: Approve | None,
) -> None:
    for item in sorted(items, key=lambda i: i["metadata"].get("creationTimestamp", "")):
        name = item["metadata"]["name"]
        outcome = outcomes.get(item.get("spec", {}).get("alert", ""))
        if outcome is None or name in seen:
            continue
        if outcome.incident is not None and outcome.incident["metadata"]["name"] != name:
            continue  # a later Incident of the same alert (e.g. it fired twice): the first one is the scenario
        outcome.incident = item
        phase = (item.get("status") or {}).get("phase")
        if phase and (not outcome.phases or outcome.phases[-1] != phase):
            outcome.phases.append(phase)
            if on_change is not None:
                on_change(outcome, phase)
        step = APPROVALS.get(outcome.alert)
        if phase == "AwaitingApproval" and approve is not None and step is not None:
            if outcome.approved is None:
                outcome.approved = approve(name, step)
            if outcome.approved:
                continue  # it settles where the approved step leads
        if phase in SETTLED and outcome.settled_after is None:
            outcome.settled_after = time.monotonic() - outcome.injected


def restarted(outcome: Outcome, workloads: Iterable[str]) -> list[str]:
    """The workloads (of ``workloads``) a succeeded rollout restart of this scenario's Incident named."""
    steps = ((outcome.incident or {}).get("status") or {}).get("steps") or []
    said = [s.get("message", "") for s in steps if s.get("action") == "kubernetes.rolloutRestart"
            and s.get("state") == "Succeeded"]  # fmt: skip
    return sorted(w for w in workloads if any(f"/{w} " in message for message in said))


def replacements(before: Mapping[str, Mapping[str, str]], after: Mapping[str, Mapping[str, str]], workload: str
                 ) -> list[tuple[str, str]]:  # fmt: skip
    """Old → new container ids of a workload between two looks (pod -> container id), oldest pods first."""
    old = sorted(set(before.get(workload, {}).values()) - set(after.get(workload, {}).values()))
    new = sorted(set(after.get(workload, {}).values()) - set(before.get(workload, {}).values()))
    return list(zip(old, new, strict=False))


def replaced_table(outcomes: Iterable[Outcome]) -> str:
    """One line per scenario whose restarts replaced real containers: old → new ids (12 characters)."""

    def short(container: str) -> str:
        return container.rpartition("://")[2][:12]

    lines = []
    for o in outcomes:
        for workload, pairs in sorted(o.replaced.items()):
            ids = ", ".join(f"{short(a)} → {short(b)}" for a, b in pairs) or "none replaced"
            lines.append(f"  {o.alert:<22} {workload:<19} {ids}")
    return "\n".join(lines)


def table(outcomes: Iterable[Outcome]) -> str:
    """The summary: one row per scenario."""
    rows = [("ALERT", "INCIDENT", "PHASE", "EXPECTED", "REASON", "STEPS", "MESSAGES", "SETTLED IN")]
    for o in outcomes:
        status = (o.incident or {}).get("status") or {}
        steps = status.get("steps") or []
        ran = sum(1 for s in steps if s.get("state") in ("Succeeded", "Failed"))
        waiting = [s["name"] for s in steps if s.get("state") == "AwaitingApproval"]
        summary = f"{ran} ran" + (f", {waiting[0]} awaits approval" if waiting else "")
        summary += f", {APPROVALS[o.alert]} approved by on-call" if o.approved and not waiting else ""
        settled = f"{o.settled_after:.0f}s" if o.settled_after is not None else "not settled"
        name = (o.incident or {}).get("metadata", {}).get("name", "(no incident)")
        reason = _condition_reason(status) or "-"
        sent, failed = o.messages()
        messages = f"{sent} sent" + (f", {failed} failed" if failed else "")
        rows.append((o.alert, name, o.phase, EXPECTED[o.alert], reason, summary, messages, settled))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def _condition_reason(status: Mapping[str, Any]) -> str | None:
    wanted = {"Resolved": "Resolved", "Escalated": "Escalated"}.get(str(status.get("phase")))
    for condition in status.get("conditions") or ():
        if condition.get("type") == wanted and condition.get("status") == "True":
            return str(condition.get("reason"))
    return None
