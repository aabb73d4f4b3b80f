"""The engine loop with an in-memory cluster: write batching, Events, retries after API errors."""

import asyncio
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from runbook_operator.actions import default_registry
from runbook_operator.engine.executor import Executor
from runbook_operator.engine.reconciler import Reconciler
from runbook_operator.lab.demo import DemoService
from tests.unit.builders import policy


class MemoryCluster:
    def __init__(self, fail_writes: int = 0) -> None:
        self.writes: list[dict[str, Any]] = []
        self.events: list[tuple[str, str]] = []
        self.fail_writes = fail_writes

    async def patch_status(self, plural: str, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        if self.fail_writes:
            self.fail_writes -= 1
            raise RuntimeError("apiserver unavailable")
        self.writes.append(dict(status))

    async def post_event(self, body: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        self.events.append((type_, reason))


@pytest.fixture
def service() -> Iterator[DemoService]:
    svc = DemoService(restart_seconds=0).start()
    yield svc
    svc.stop()


def body(uid: str = "u1") -> dict[str, Any]:
    meta = {"name": "i", "namespace": "ns", "uid": uid, "generation": 1}
    return {
        "apiVersion": "remediation.ishchat.io/v1alpha1",
        "kind": "Incident",
        "metadata": meta,
        "spec": {"alert": "A"},
    }


def demo_policy(url: str) -> Any:
    return policy(
        "p",
        diagnose=[{"name": "health", "action": "http.check", "with": {"url": f"{url}/health"}}],
        remediate=[
            {"name": "restart", "action": "http.request", "with": {"url": f"{url}/admin/restart", "expectStatus": 202}}
        ],
        verify=[{"name": "again", "action": "http.check", "with": {"url": f"{url}/health"}}],
    )


async def wait_until(predicate: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


async def test_one_status_write_per_finished_step_with_phase_changes_batched(service: DemoService) -> None:
    cluster = MemoryCluster()
    reconciler = Reconciler(cluster, Executor(default_registry()), lambda ns: [demo_policy(service.url)])
    reconciler.observe(body())
    await wait_until(lambda: cluster.writes and cluster.writes[-1]["phase"] == "Resolved")
    # start (+ first step Running), then one write per finished step (each also carries the next Running mark)
    assert len(cluster.writes) == 1 + 3
    assert [w["phase"] for w in cluster.writes] == ["Diagnosing", "Remediating", "Verifying", "Resolved"]
    assert ("Normal", "Verified") in cluster.events and ("Warning", "StepFailed") in cluster.events
    assert service.restarts == 1
    await wait_until(lambda: reconciler.active == 0)
    await reconciler.stop()


async def test_a_failed_status_write_is_retried_without_rerunning_the_step(
    service: DemoService, monkeypatch: Any
) -> None:
    monkeypatch.setattr("runbook_operator.engine.reconciler.RETRY_DELAY", 0.05)
    cluster = MemoryCluster(fail_writes=2)
    reconciler = Reconciler(cluster, Executor(default_registry()), lambda ns: [demo_policy(service.url)])
    reconciler.observe(body())
    await wait_until(lambda: cluster.writes and cluster.writes[-1]["phase"] == "Resolved")
    assert service.restarts == 1
    await reconciler.stop()


async def test_forget_cancels_the_incident_task(service: DemoService) -> None:
    cluster = MemoryCluster()
    slow = policy(
        "p", verify=[{"name": "v", "action": "http.check", "with": {"url": f"{service.url}/health"}, "retries": 50}]
    )
    reconciler = Reconciler(cluster, Executor(default_registry()), lambda ns: [slow])
    reconciler.observe(body())
    await wait_until(lambda: bool(cluster.writes))
    reconciler.forget("u1")
    assert reconciler.active == 0
    await reconciler.stop()
