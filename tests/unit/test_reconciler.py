"""The engine loop with an in-memory cluster: write batching, Events, retries after API errors."""

import asyncio
from collections.abc import Mapping
from typing import Any

from runbook_lab.demo import DemoService
from runbook_operator.actions.catalog import default_registry
from runbook_operator.domain.lifecycle import holds_target
from runbook_operator.domain.status import Status
from runbook_operator.engine.executor import Executor
from runbook_operator.engine.reconciler import Reconciler
from tests.unit.builders import demo_policy, incident_body, policy


class MemoryCluster:
    def __init__(self, fail_writes: int = 0) -> None:
        self.deleted: list[str] = []
        self.timeline: list[tuple[str, bool]] = []
        self.writes: list[dict[str, Any]] = []
        self.events: list[tuple[str, str]] = []
        self.fail_writes = fail_writes

    async def patch_status(
        self, plural: str, namespace: str, name: str, status: Mapping[str, Any], resource_version: str | None = None
    ) -> None:
        if self.fail_writes:
            self.fail_writes -= 1
            raise RuntimeError("apiserver unavailable")
        self.writes.append(dict(status))
        self.timeline.append((name, holds_target(Status.from_dict(status))))

    async def post_event(self, body: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        self.events.append((type_, reason))

    async def delete(self, plural: str, namespace: str, name: str) -> None:
        self.deleted.append(f"{namespace}/{name}")


async def wait_until(predicate: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


async def test_one_status_write_per_finished_step_with_phase_changes_batched(service: DemoService) -> None:
    cluster = MemoryCluster()
    reconciler = Reconciler(cluster, Executor(default_registry()), lambda ns: [demo_policy(service.url)])
    reconciler.observe(incident_body("i", "u1"))
    await wait_until(lambda: cluster.writes and cluster.writes[-1]["phase"] == "Resolved")
    # start (+ first step Running), then one write per finished step (each also carries the next Running mark)
    assert len(cluster.writes) == 1 + 3
    assert [w["phase"] for w in cluster.writes] == ["Diagnosing", "Remediating", "Verifying", "Resolved"]
    # Events trail their status write (engine.events): the last one may still be on its way
    await wait_until(lambda: ("Normal", "Verified") in cluster.events)
    assert ("Warning", "StepFailed") in cluster.events
    assert service.restarts == 1
    await wait_until(lambda: reconciler.active == 0)
    await reconciler.stop()


async def test_a_failed_status_write_is_retried_without_rerunning_the_step(
    service: DemoService, monkeypatch: Any
) -> None:
    monkeypatch.setattr("runbook_operator.engine.reconciler.RETRY_DELAY", 0.05)
    cluster = MemoryCluster(fail_writes=2)
    reconciler = Reconciler(cluster, Executor(default_registry()), lambda ns: [demo_policy(service.url)])
    reconciler.observe(incident_body("i", "u1"))
    await wait_until(lambda: cluster.writes and cluster.writes[-1]["phase"] == "Resolved")
    assert service.restarts == 1
    await reconciler.stop()


async def test_forget_cancels_the_incident_task(service: DemoService) -> None:
    cluster = MemoryCluster()
    slow = policy(
        "p", verify=[{"name": "v", "action": "http.check", "with": {"url": f"{service.url}/health"}, "retries": 50}]
    )
    reconciler = Reconciler(cluster, Executor(default_registry()), lambda ns: [slow])
    reconciler.observe(incident_body("i", "u1"))
    await wait_until(lambda: bool(cluster.writes))
    reconciler.forget("u1")
    assert reconciler.active == 0
    await reconciler.stop()


async def test_resolved_incidents_are_deleted_after_the_ttl(service: DemoService) -> None:
    cluster = MemoryCluster()
    reconciler = Reconciler(
        cluster, Executor(default_registry()), lambda ns: [demo_policy(service.url)], resolved_ttl=1.5
    )
    reconciler.observe(incident_body("i", "u1"))
    await wait_until(lambda: cluster.writes and cluster.writes[-1]["phase"] == "Resolved")
    assert cluster.deleted == []
    await wait_until(lambda: cluster.deleted == ["ns/i"], timeout=5)
    await wait_until(lambda: reconciler.active == 0)


async def test_an_incident_resolved_before_a_restart_is_still_expired(service: DemoService) -> None:
    cluster = MemoryCluster()
    old = incident_body("i", "u1") | {
        "status": {"phase": "Resolved", "resolvedAt": "2020-01-01T00:00:00Z", "observedGeneration": 1}
    }
    reconciler = Reconciler(cluster, Executor(default_registry()), lambda ns: [], resolved_ttl=3600)
    reconciler.observe(old)
    await wait_until(lambda: cluster.deleted == ["ns/i"])
    assert cluster.writes == []  # nothing to say about a finished incident


async def test_two_incidents_on_one_target_never_remediate_at_once(service: DemoService) -> None:
    service.restart_seconds = 0.3
    cluster = MemoryCluster()
    slow = policy(
        "p",
        remediate=[
            {
                "name": "restart",
                "action": "http.request",
                "with": {"url": f"{service.url}/admin/restart", "expectStatus": 202},
            }
        ],
        verify=[
            {
                "name": "again",
                "action": "http.check",
                "with": {"url": f"{service.url}/health"},
                "retries": 20,
                "backoff": "100ms",
            }
        ],
    )
    reconciler = Reconciler(cluster, Executor(default_registry()), lambda ns: [slow])
    target = {"kind": "Deployment", "name": "web"}
    for uid, alert in (("a", "A"), ("b", "B")):
        b = incident_body("i", uid)
        b["metadata"]["name"] = uid
        b["spec"] = {"alert": alert, "target": target}
        reconciler.observe(b)
    await wait_until(lambda: sum(w["phase"] == "Resolved" for w in cluster.writes) == 2, timeout=10)
    assert ("Normal", "TargetLocked") in cluster.events
    holding: set[str] = set()
    for name, holds in cluster.timeline:  # the remediate-verify windows of the two never overlap
        if holds:
            holding.add(name)
        else:
            holding.discard(name)
        assert len(holding) <= 1, cluster.timeline
    assert service.restarts == 2
    await reconciler.stop()


async def test_a_lagging_watch_event_never_restarts_a_resolved_incident(service: DemoService) -> None:
    """The watch delivers the operator's own earlier writes after it resolved the incident:
    such an older version (a step still Running) must not start the incident again."""
    cluster = MemoryCluster()
    reconciler = Reconciler(cluster, Executor(default_registry()), lambda ns: [demo_policy(service.url)])
    reconciler.observe(incident_body("i", "u1"))
    await wait_until(lambda: cluster.writes and cluster.writes[-1]["phase"] == "Resolved")
    await wait_until(lambda: reconciler.active == 0)
    running = next(w for w in cluster.writes if w["currentStep"] == "restart")
    reconciler.observe(incident_body("i", "u1") | {"status": running})
    await asyncio.sleep(0.3)
    assert reconciler.active == 0 and service.restarts == 1
    reconciler.forget("u1")  # deleted: a new incident with the same uid could start (it cannot, but state is clean)
    await reconciler.stop()
