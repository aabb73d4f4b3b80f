"""http.* against real HTTP servers on loopback: the demo service and a silent socket."""

import socket
from collections.abc import Iterator

import pytest

from runbook_lab.demo import DemoService
from runbook_operator.actions import ActionContext, egress
from runbook_operator.actions.registry import Registry
from runbook_operator.adapters import hostaliases
from runbook_operator.domain.results import StepResult
from runbook_operator.engine.executor import run_action
from tests.fixtures.listeners import Listener
from tests.fixtures.secrets import Secrets
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


# -- trust boundaries: where a request may go, and what a redirect may carry ------------------

METADATA = "metadata.cloud.test"


@pytest.fixture
def listeners() -> Iterator[tuple[Listener, Listener]]:
    """``home`` redirects to ``elsewhere``, a listener on another port: another origin."""
    elsewhere = Listener().start()
    home = Listener(redirect_to=f"{elsewhere.url}/landing").start()
    yield home, elsewhere
    home.stop()
    elsewhere.stop()


@pytest.fixture
def resolver(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """A resolver override: METADATA resolves to 127.0.0.1 the first time, to 169.254.169.254
    after (a rebinding DNS server); the names looked up are recorded."""
    looked_up: list[str] = []
    real = socket.getaddrinfo

    def getaddrinfo(host: object, *args: object, **kwargs: object) -> object:
        looked_up.append(str(host))
        if host == METADATA:
            host = "127.0.0.1" if looked_up.count(METADATA) == 1 else "169.254.169.254"
        return real(host, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return looked_up


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254"),
        ("http://[fe80::1]/", "fe80::1"),
        ("http://[fd00:ec2::254]/", "fd00:ec2::254"),
        ("http://[::ffff:a9fe:a9fe]/", "::ffff:a9fe:a9fe"),  # 169.254.169.254, IPv4-mapped
        ("http://[fd20:ce::254]/", "fd20:ce::254"),  # GCP metadata over IPv6
        ("http://[fd00:ec2::23]/", "fd00:ec2::23"),  # AWS's instance-services block
        ("http://168.63.129.16/machine?comp=goalstate", "168.63.129.16"),  # Azure wireserver
    ],
)
async def test_link_local_and_metadata_addresses_are_refused(url: str, host: str) -> None:
    result = await run("http.check", {"url": url, "timeout": "2s"})
    assert not result.ok
    assert result.message == (
        f"GET {url}: {host} is a link-local or cloud metadata address: refused "
        "(start the operator with --allow-link-local to allow it)"
    )


async def test_a_name_is_checked_by_the_address_it_resolves_to(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", socket.getaddrinfo)  # restored after the test
    hostaliases.install({METADATA: "169.254.169.254"})
    result = await run("http.request", {"url": f"http://{METADATA}/latest/meta-data/iam/", "method": "GET"})
    assert not result.ok
    assert result.message == (
        f"GET http://{METADATA}/latest/meta-data/iam/: {METADATA} resolves to 169.254.169.254, which is a "
        "link-local or cloud metadata address: refused (start the operator with --allow-link-local to allow it)"
    )


@pytest.mark.parametrize(
    ("host", "why"),
    [
        ("[64:ff9b::a9fe:a9fe]", "169.254.169.254 through NAT64, a link-local or cloud metadata address"),
        ("[::a9fe:a9fe]", "169.254.169.254 through IPv4-compatible, a link-local or cloud metadata address"),
        ("[2002:a9fe:a9fe::1]", "169.254.169.254 through 6to4, a link-local or cloud metadata address"),
        ("[::]", "an unspecified address, which reaches the operator's own host"),
    ],
)
async def test_addresses_that_carry_a_refused_one_are_refused(host: str, why: str) -> None:
    result = await run("http.request", {"url": f"http://{host}/latest/meta-data/", "method": "GET"})
    address = host.strip("[]")
    assert not result.ok
    assert result.message == (
        f"GET http://{host}/latest/meta-data/: {address} is {why}: refused "
        "(start the operator with --allow-link-local to allow it)"
    )


async def test_the_unspecified_address_is_refused_though_it_reaches_this_host(
    listeners: tuple[Listener, Listener],
) -> None:
    _, elsewhere = listeners
    url = f"http://0.0.0.0:{elsewhere.url.rsplit(':', 1)[1]}/health"
    result = await run("http.check", {"url": url})
    assert not result.ok
    assert result.message == (
        f"GET {url}: 0.0.0.0 is an unspecified address, which reaches the operator's own host: refused "
        "(start the operator with --allow-link-local to allow it)"
    )
    assert elsewhere.requests == []  # before, it got there


async def test_an_error_page_that_is_not_json_is_not_quoted() -> None:
    """http.request shows a bounded, scrubbed excerpt of a 2xx or JSON answer; another kind of
    error page (a proxy's, or something the url leads to that is not the API) only by its type."""
    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY"
    server = Listener(answer=(500, "text/html; charset=utf-8", f"<html>{secret}</html>".encode())).start()
    try:
        result = await run("http.request", {"url": f"{server.url}/admin", "method": "GET"})
    finally:
        server.stop()
    assert not result.ok and result.message == f"GET {server.url}/admin: status 500, expected 200"
    assert result.output == {"status": 500, "contentType": "text/html"}


async def test_the_flag_lets_link_local_addresses_through() -> None:
    egress.allow_link_local(True)
    try:
        result = await run("http.check", {"url": "http://169.254.169.254/", "timeout": "300ms"})
    finally:
        egress.allow_link_local(False)
    assert not result.ok and "refused" not in result.message  # it tried: nothing answers there on this machine


async def test_the_checked_address_is_the_one_connected_to(
    resolver: list[str], listeners: tuple[Listener, Listener]
) -> None:
    """DNS rebinding: a second lookup would answer 169.254.169.254; there is none."""
    _, elsewhere = listeners
    port = elsewhere.url.rsplit(":", 1)[1]
    result = await run("http.check", {"url": f"http://{METADATA}:{port}/health"})
    assert result.ok, result.message
    assert resolver.count(METADATA) == 1
    assert elsewhere.requests[0][2]["Host"] == f"{METADATA}:{port}"  # the server still sees the name


async def test_a_redirect_to_another_origin_is_not_followed_with_headers_from_secrets(
    listeners: tuple[Listener, Listener],
) -> None:
    home, elsewhere = listeners
    ctx = ActionContext("ns", "inc", 5.0, services=Secrets({("ns", "api", "key"): "k3y-abc"}), policy="p")
    params: dict[str, object] = {"url": f"{home.url}/admin", "method": "GET",
              "headersFromSecrets": {"X-Api-Key": {"name": "api", "key": "key"}}}  # fmt: skip
    result = await run("http.request", params, ctx=ctx)
    assert not result.ok
    assert result.message == (
        f"GET {home.url}/admin: redirected to {elsewhere.url}, another origin: not followed, "
        "it would carry X-Api-Key from a Secret there"
    )
    assert home.requests[0][2]["X-Api-Key"] == "k3y-abc" and elsewhere.requests == []


async def test_a_redirect_without_credentials_is_followed(listeners: tuple[Listener, Listener]) -> None:
    home, elsewhere = listeners
    result = await run("http.request", {"url": f"{home.url}/admin", "method": "GET"})
    assert result.ok, result.message
    assert [path for _, path, _ in elsewhere.requests] == ["/landing"]
