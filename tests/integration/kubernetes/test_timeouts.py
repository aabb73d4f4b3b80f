"""A hung API server costs a step its timeout, no more, through the Executor as the engine runs it."""

import time
from typing import Any

import kubernetes
import pytest

from runbook_operator.adapters.kube import Kube
from runbook_operator.domain.lifecycle import StepCall
from runbook_operator.domain.model import Stage, Step
from runbook_operator.engine.executor import Executor
from tests.integration.kubernetes.conftest import REGISTRY, Hung
from tests.unit.builders import incident

NS = "team-a"
# each action, and the first call it makes (the one that hangs)
CASES = [
    ("kubernetes.workloadStatus", {"name": "web"}, "get deployments"),
    ("kubernetes.rolloutRestart", {"name": "web"}, "get deployments"),
    ("kubernetes.scale", {"kind": "StatefulSet", "name": "web", "replicas": 2, "max": 3}, "get statefulsets/scale"),
    ("kubernetes.podLogs", {"labelSelector": "app=web"}, "list pods"),
    ("kubernetes.deletePod", {"name": "web-0"}, "delete pods"),
]


async def execute(services: Any, action: str, params: dict[str, Any], timeout: float) -> tuple[Any, float]:
    step = Step("s", Stage.REMEDIATE, action, params, timeout=timeout)
    started = time.monotonic()
    result = await Executor(REGISTRY, services=services).run(incident(namespace=NS), StepCall(step, 1, params))
    return result, time.monotonic() - started


@pytest.mark.parametrize(("action", "params", "call"), CASES)
async def test_a_silent_api_server(silent: Kube, action: str, params: dict[str, Any], call: str) -> None:
    """Connections are accepted, nothing is ever answered (TLS handshake included)."""
    result, took = await execute(silent, action, params, 0.5)
    assert not result.ok
    assert result.message == f"{call} in namespace {NS}: no answer from the API server within the step's 0.5s"
    assert 0.4 < took < 1.0


@pytest.mark.parametrize(("action", "params", "call"), CASES)
async def test_a_thread_pool_that_never_answers(action: str, params: dict[str, Any], call: str) -> None:
    hung = Hung()
    result, took = await execute(hung, action, params, 0.3)
    assert not result.ok
    assert result.message == f"{call} in namespace {NS}: no answer from the API server within the step's 0.3s"
    assert took < 0.6 and hung.calls == 1


async def test_the_executor_still_bounds_a_step_without_a_deadline_of_its_own() -> None:
    """Retries do not stretch one attempt: each try gets the step's timeout again, and says so."""
    hung = Hung()
    step = Step("s", Stage.DIAGNOSE, "kubernetes.workloadStatus", {"name": "web"}, timeout=0.2, retries=1, backoff=0)
    started = time.monotonic()
    result = await Executor(REGISTRY, services=hung).run(incident(namespace=NS), StepCall(step, 1, step.params))
    assert time.monotonic() - started < 0.8 and hung.calls == 2
    assert result.message.endswith("within the step's 0.2s (after 2 tries)")


async def test_an_unreachable_api_server() -> None:
    config = kubernetes.client.Configuration()
    config.host = "https://127.0.0.1:1"  # nothing listens
    config.retries = False
    kube = Kube(kubernetes.client.ApiClient(config), workers=2)
    try:
        result, _ = await execute(kube, "kubernetes.workloadStatus", {"name": "web"}, 2.0)
    finally:
        kube.close()
    assert not result.ok
    assert result.message.startswith(f"get deployments in namespace {NS}: cannot reach the API server: ")


async def test_no_cluster_at_all() -> None:
    result, _ = await execute(None, "kubernetes.workloadStatus", {"name": "web"}, 1.0)
    assert (result.ok, result.message) == (False, "no cluster connection: kubernetes.* actions run inside the operator")
