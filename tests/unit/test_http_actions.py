"""http.* against real HTTP servers on loopback: the demo service and a silent socket."""

import socket
from collections.abc import Iterator

import pytest

from runbook_lab.demo import DemoService
from runbook_operator.actions import ActionContext
from runbook_operator.actions.registry import Registry
from runbook_operator.domain.results import StepResult
from runbook_operator.engine.executor import run_action
from tests.unit.builders import REGISTRY

CTX = ActionContext("ns", "inc", timeout=5.0)


@pytest.fixture
def service() -> Iterator[DemoService]:
    svc = DemoService(restart_seconds=0).start()
    yield svc
    svc.stop()


async def run(
    name: str, params: dict[str, object], registry: Registry = REGISTRY, ctx: ActionContext = CTX
) -> StepResult:
    return await run_action(registry.get(name), registry.parse(name, params), ctx)


async def test_check_passes_on_the_expected_status(service: DemoService) -> None:
    service.healthy = True
    result = await run("http.check", {"url": f"{service.url}/health"})
    assert result.ok, result.message
    assert result.output["status"] == 200


async def test_check_fails_with_the_status_it_saw(service: DemoService) -> None:
    result = await run("http.check", {"url": f"{service.url}/health"})
    assert not result.ok
    assert "status 503, expected 200" in result.message


async def test_check_can_expect_another_status(service: DemoService) -> None:
    assert (await run("http.check", {"url": f"{service.url}/health", "expectStatus": 503})).ok


async def test_check_body_match(service: DemoService) -> None:
    service.healthy = True
    assert (await run("http.check", {"url": f"{service.url}/health", "bodyContains": "healthy"})).ok
    missing = await run("http.check", {"url": f"{service.url}/health", "bodyContains": "degraded"})
    assert not missing.ok and "does not contain 'degraded'" in missing.message


async def test_check_latency_bound(silent_port: int) -> None:
    result = await run("http.check", {"url": f"http://127.0.0.1:{silent_port}/health", "timeout": "300ms"})
    assert not result.ok
    assert "no answer within 0.3s" in result.message


async def test_check_reports_a_refused_connection() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: nothing listens
    result = await run("http.check", {"url": f"http://127.0.0.1:{port}/health"})
    assert not result.ok and "ConnectError" in result.message


async def test_request_sends_the_json_body_and_has_the_effect(service: DemoService) -> None:
    result = await run(
        "http.request",
        {"url": f"{service.url}/admin/restart", "json": {"service": "instance-manager"}, "expectStatus": 202},
    )
    assert result.ok, result.message
    assert service.restarts == 1
    assert ("POST", "/admin/restart", {"service": "instance-manager"}) in service.requests
    assert service.is_healthy()


async def test_request_fails_on_an_unexpected_status(service: DemoService) -> None:
    result = await run("http.request", {"url": f"{service.url}/admin/nothing"})
    assert not result.ok and "status 404, expected 200" in result.message
    assert "no route" in result.output["body"]


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("http.check", {}, "url: Field required"),
        ("http.check", {"url": "not a url"}, "url: Input should be a valid URL"),
        ("http.check", {"url": "http://x", "timeout": "forever"}, "invalid duration 'forever'"),
        (
            "http.check",
            {"url": "http://x", "maxLatencySeconds": -1},
            "maxLatencySeconds: Input should be greater than 0",
        ),
        ("http.request", {"url": "http://x", "headers": {"X": 1}}, "headers.X: Input should be a valid string"),
        ("http.request", {"url": "http://x", "method": "TRACE"}, "method: Input should be"),
    ],
)
def test_parameters_are_validated_with_precise_messages(name: str, params: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        REGISTRY.parse(name, params)


async def test_request_times_out_on_a_server_that_never_answers(silent_port: int) -> None:
    result = await run("http.request", {"url": f"http://127.0.0.1:{silent_port}/admin/restart", "timeout": "300ms"})
    assert (
        not result.ok and result.message == f"POST http://127.0.0.1:{silent_port}/admin/restart: no answer within 0.3s"
    )


async def test_request_to_a_server_that_is_down(closed_port: int) -> None:
    result = await run("http.request", {"url": f"http://127.0.0.1:{closed_port}/admin/restart"})
    assert not result.ok and "ConnectError" in result.message
