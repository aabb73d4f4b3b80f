"""Load and churn: thousands of incidents created and deleted in waves against the running operator.

Each incident arrives with ``spec.resolved: true`` (the cheapest full path: the operator
starts a task, decides, writes status once, posts one Event, then holds the task for the
resolved-TTL until the incident is deleted). After every wave is deleted the operator must
know no more incidents than exist, run no more incident tasks than that, and its memory
(VmRSS, after a warm-up wave) must come back to within 20% of where it started.

RELIABILITY_INCIDENTS (default below) sets the total, RELIABILITY_WAVE the wave size;
``RELIABILITY_INCIDENTS=5000`` is the issue's figure (see docs/reliability.md for its time).
"""

from __future__ import annotations

import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kubernetes

from tests.fixtures.cluster import Kubectl
from tests.fixtures.common import wait_for
from tests.fixtures.operator import OperatorProcess
from tests.reliability.conftest import API, log_errors

TOTAL = int(os.environ.get("RELIABILITY_INCIDENTS", "5000"))
WAVE = int(os.environ.get("RELIABILITY_WAVE", "500"))
GROUP, VERSION = API.split("/")


def gauge(text: str, series: str) -> float:
    return sum(float(v) for v in re.findall(rf"^{re.escape(series)}(?:\{{[^}}]*\}})? (\S+)$", text, re.MULTILINE))


def _items(listed: Any) -> list[dict[str, Any]]:
    return list(listed["items"])


def test_waves_of_incidents_leave_no_tasks_no_memory_growth_and_no_errors(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    assert TOTAL % WAVE == 0 and TOTAL // WAVE >= 2, "a warm-up wave and at least one measured wave"
    api = kubernetes.client.CustomObjectsApi(
        kubernetes.config.new_client_from_config(config_file=str(kubectl.kubeconfig))  # type: ignore[no-untyped-call]
    )

    def existing() -> int:
        items = _items(api.list_cluster_custom_object(GROUP, VERSION, "incidents"))
        return len(items)

    def settled_to_cluster() -> tuple[float, float, int] | None:
        """The operator's incident gauge and task count equal the incidents that exist (all namespaces)."""
        metrics, count = operator.scrape(), existing()
        known, tasks = gauge(metrics, "runbook_incidents"), gauge(metrics, "runbook_incident_tasks")
        return (known, tasks, count) if known == tasks == count else None

    def create(i: int, wave: int) -> None:
        body: dict[str, Any] = {"apiVersion": API, "kind": "Incident",
                                "metadata": {"name": f"load-{wave}-{i}", "namespace": namespace},
                                "spec": {"alert": "LoadTest", "severity": "Low", "resolved": True,
                                         "labels": {"wave": str(wave), "i": str(i)}}}  # fmt: skip
        api.create_namespaced_custom_object(GROUP, VERSION, namespace, "incidents", body)

    def resolved() -> int:
        items = _items(api.list_namespaced_custom_object(GROUP, VERSION, namespace, "incidents"))
        return sum(1 for i in items if (i.get("status") or {}).get("phase") == "Resolved")

    def existing_here() -> int:
        return len(_items(api.list_namespaced_custom_object(GROUP, VERSION, namespace, "incidents")))

    log_start = operator.log.stat().st_size
    rss: list[int] = []
    before = operator.rss_kib()
    timings: list[tuple[float, float]] = []
    with ThreadPoolExecutor(8) as pool:
        for wave in range(TOTAL // WAVE):
            started = time.monotonic()
            list(pool.map(create, range(WAVE), [wave] * WAVE))
            wait_for(lambda: resolved() == WAVE, 120, f"wave {wave}: {WAVE} incidents resolved", every=0.5)
            done = time.monotonic()
            api.delete_collection_namespaced_custom_object(GROUP, VERSION, namespace, "incidents")
            wait_for(lambda: existing_here() == 0, 60, f"wave {wave} deleted", every=0.5)
            wait_for(settled_to_cluster, 60, f"wave {wave}: the operator lets go of every deleted incident", every=0.5)
            timings.append((done - started, time.monotonic() - done))
            rss.append(operator.rss_kib())

    errors = log_errors(operator.log.read_bytes()[log_start:].decode(errors="replace"))
    assert errors == [], errors[:5]
    warm, last = rss[0], rss[-1]
    assert last <= warm * 1.2, f"VmRSS after each wave (KiB): {rss}"
    assert operator.alive()
    print(f"{TOTAL} incidents in waves of {WAVE}; VmRSS before: {before} KiB, after each wave: {rss}")
    print("per wave (create+resolve s, delete+release s): " + ", ".join(f"({a:.1f}, {b:.1f})" for a, b in timings))
