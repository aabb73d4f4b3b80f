"""The operator's metrics move on transitions, once, whatever restarts happen."""

import socket
import time
import urllib.request
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from prometheus_client import CollectorRegistry, Counter

from runbook_lab.demo import DemoService
from runbook_operator.adapters import metrics
from runbook_operator.adapters.metrics import Metrics
from runbook_operator.domain.lifecycle import StepCall
from runbook_operator.domain.model import Stage, Step
from runbook_operator.domain.status import EscalationState, Status
from runbook_operator.engine.executor import Executor
from tests.unit.builders import REGISTRY, incident

STARTED = Status(phase="Remediating", severity="Critical", startedAt="2026-11-27T08:00:00Z")


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def test_a_resolution_counts_once_with_its_reason_and_time_to_resolve() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    resolved = replace(STARTED, phase="Resolved", resolvedAt="2026-11-27T08:12:00Z").with_condition(
        "Resolved", True, "Verified", "ok", datetime(2026, 11, 27, 8, 12, tzinfo=UTC)
    )
    metrics.transition(incident("RedisDown"), STARTED, resolved)
    metrics.transition(incident("RedisDown"), resolved, resolved)  # a later look, or a restart: no change
    labels = {"alert": "RedisDown", "phase": "Resolved", "reason": "Verified"}
    assert sample(registry, "runbook_incidents_finished_total", **labels) == 1
    assert sample(registry, "runbook_incident_time_to_resolve_seconds_sum", severity="Critical") == 720
    assert sample(registry, "runbook_incident_time_to_resolve_seconds_count", severity="Critical") == 1


def test_acknowledgement_and_escalation_levels() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    acked = replace(STARTED, acknowledgedAt="2026-11-27T08:05:00Z", escalation=EscalationState(fired=("on-call",)))
    metrics.transition(incident(), STARTED, acked)
    later = replace(acked, escalation=EscalationState(fired=("on-call", "team-lead")))
    metrics.transition(incident(), acked, later)
    assert sample(registry, "runbook_incident_time_to_acknowledge_seconds_sum", severity="Critical") == 300
    assert sample(registry, "runbook_escalations_total", level="on-call") == 1
    assert sample(registry, "runbook_escalations_total", level="team-lead") == 1


def test_phase_gauges_read_the_reconciler_at_scrape_time() -> None:
    registry = CollectorRegistry()
    phases: list[str | None] = ["Resolved", "AwaitingApproval", None, "AwaitingApproval"]
    Metrics(registry).watch(lambda: phases)
    assert sample(registry, "runbook_incidents", phase="AwaitingApproval") == 2
    assert sample(registry, "runbook_incidents", phase="Pending") == 1
    assert sample(registry, "runbook_approvals_waiting") == 2
    phases.clear()
    assert sample(registry, "runbook_approvals_waiting") == 0


def test_action_runs_by_outcome() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.action("http.check", True, 0.2)
    metrics.action("http.check", False, 3.0)
    assert sample(registry, "runbook_action_duration_seconds_count", action="http.check", outcome="success") == 1
    assert sample(registry, "runbook_action_duration_seconds_count", action="http.check", outcome="failure") == 1


async def test_notifications_are_counted_by_channel_and_result_other_steps_are_not() -> None:
    service = DemoService().start()
    try:
        registry = CollectorRegistry()
        executor = Executor(REGISTRY, metrics=Metrics(registry))
        hook = Step("tell", Stage.ANNOUNCE, "notify.webhook")
        for url, ok in ((f"{service.url}/hooks/x", True), (f"{service.url}/nowhere", False)):
            result = await executor.run(incident(), StepCall(hook, 1, {"url": url}))
            assert result.ok is ok, result.message
        await executor.run(incident(), StepCall(Step("h", Stage.DIAGNOSE, "http.check"), 1, {"url": service.url}))
    finally:
        service.stop()
    assert sample(registry, "runbook_notifications_total", channel="webhook", result="sent") == 1
    assert sample(registry, "runbook_notifications_total", channel="webhook", result="failed") == 1
    assert {
        s.labels["channel"] for m in registry.collect() if m.name == "runbook_notifications" for s in m.samples
    } == {"webhook"}


# -- the /metrics endpoint cannot be held open (issue 22: every input bounded) ------------------


def test_half_open_scrapes_are_closed_at_the_deadline_and_the_excess_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """prometheus_client's server gave every connection a thread that waited for a request line
    for ever: a flood of half-sent requests held threads and files until the client left."""
    monkeypatch.setattr(metrics, "SCRAPE_TIMEOUT", 0.5)
    registry = CollectorRegistry()
    Counter("probe_total", "a counter to scrape", registry=registry).inc()
    server = metrics.serve("127.0.0.1", 0, registry, limit=4)
    port = server.server_address[1]
    try:
        held = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(12)]
        for sock in held:
            sock.sendall(b"GET /metr")  # half a request line, and nothing more
        started = time.monotonic()
        closed = [sock.recv(1) == b"" for sock in held]  # b"": the server closed it
        waited = time.monotonic() - started
        assert all(closed) and waited < 3, waited  # 8 refused at once, 4 at the 0.5 s deadline
        for sock in held:
            sock.close()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            assert b"probe_total 1.0" in answer.read()  # a scrape after the flood is served
    finally:
        server.shutdown()
        server.server_close()
