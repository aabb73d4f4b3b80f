"""Events leave the incident's path: posted in order per incident, a few at a time, flushed on stop."""

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import pytest

from runbook_lab.demo import DemoService
from runbook_operator.actions.catalog import default_registry
from runbook_operator.engine import events, reconciler
from runbook_operator.engine.executor import Executor
from runbook_operator.engine.reconciler import Reconciler
from tests.unit.builders import demo_policy, incident_body


class SlowEvents:
    """Status writes are instant; every Event takes a while, as under load."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.writes: list[tuple[str, str]] = []
        self.events: list[tuple[str, str]] = []
        self.in_flight = self.most_in_flight = 0

    async def patch_status(
        self, plural: str, namespace: str, name: str, status: Mapping[str, Any], resource_version: str | None = None
    ) -> None:
        self.writes.append((name, str(status["phase"])))

    async def post_event(self, body: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay)
            self.events.append((body["metadata"]["name"], reason))
        finally:
            self.in_flight -= 1

    async def delete(self, plural: str, namespace: str, name: str) -> None:
        pass


async def run(cluster: SlowEvents, url: str, names: list[str], per_incident: int = 0) -> None:
    reconciler = Reconciler(cluster, Executor(default_registry()), lambda ns: [demo_policy(url)])
    for name in names:
        reconciler.observe(incident_body(name))
    for _ in range(1000):
        if sum(phase == "Resolved" for _, phase in cluster.writes) == len(names):
            break
        await asyncio.sleep(0.01)
    assert sum(phase == "Resolved" for _, phase in cluster.writes) == len(names), cluster.writes
    assert len(cluster.events) < per_incident * len(names) or not per_incident  # resolved before all Events were posted
    await reconciler.stop()


async def test_events_trail_in_order_a_few_at_a_time_and_are_flushed_on_stop(
    service: DemoService, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=reconciler.__name__)
    cluster = SlowEvents(delay=0.05)
    names = [f"i{n}" for n in range(12)]
    await run(cluster, service.url, names, per_incident=4)
    assert cluster.most_in_flight <= events.EVENT_POSTS
    decided = [r.getMessage().split(": ")[:2] for r in caplog.records if r.getMessage().startswith("incident ns/")]
    for name in names:
        expected = [reason for who, reason in decided if who == f"incident ns/{name}"]
        assert "Verified" in expected and len(expected) >= 4, expected
        assert [reason for who, reason in cluster.events if who == name] == expected, name
