"""The egress guard (actions/egress.py): which addresses no action connects to, and that every
action's HTTP goes through it (issue 22, findings 4 and 6)."""

from __future__ import annotations

import ast
import re
import socket
from pathlib import Path
from typing import Any

import pytest

from runbook_operator.actions import ActionContext, egress
from runbook_operator.adapters import hostaliases
from runbook_operator.domain.model import InvalidPolicy
from runbook_operator.domain.parsing import parse_policy
from runbook_operator.engine.executor import run_action
from tests.unit.builders import REGISTRY, policy_body

ACTIONS = Path(egress.__file__).parent
METADATA = "a link-local or cloud metadata address"
UNSPECIFIED = "an unspecified address, which reaches the operator's own host"
THROUGH = f"169.254.169.254 through {{}}, {METADATA}"


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("169.254.169.254", METADATA),
        ("169.254.0.1", METADATA),
        ("fe80::1%eth0", METADATA),
        ("::ffff:169.254.169.254", METADATA),  # IPv4-mapped: the same socket address
        ("fd00:ec2::254", METADATA),  # AWS metadata over IPv6
        ("fd00:ec2::23", METADATA),  # AWS's instance-services block, fd00:ec2::/32
        ("fd00:ec2::253", METADATA),
        ("fd00:ec2:1:2::3", METADATA),
        ("fd20:ce::254", METADATA),  # GCP metadata over IPv6
        ("168.63.129.16", METADATA),  # Azure wireserver
        ("100.100.100.200", METADATA),  # Alibaba Cloud metadata
        ("0.0.0.0", UNSPECIFIED),  # connects to this host
        ("0.1.2.3", UNSPECIFIED),
        ("::", UNSPECIFIED),
        ("::ffff:0.0.0.0", UNSPECIFIED),
        ("64:ff9b::169.254.169.254", THROUGH.format("NAT64")),
        ("64:ff9b::a9fe:a9fe", THROUGH.format("NAT64")),
        ("64:ff9b:1::a9fe:a9fe", THROUGH.format("NAT64")),  # local-use prefix, /96
        ("64:ff9b:1:0:a9:fea9:fe00:0", THROUGH.format("NAT64")),  # local-use, /64: bits 64-71 skipped
        ("64:ff9b:1:a9:fe:a9fe::", THROUGH.format("NAT64")),  # /56
        ("64:ff9b:1:a9fe:a9:fe00::", THROUGH.format("NAT64")),  # /48
        ("::169.254.169.254", THROUGH.format("IPv4-compatible")),
        ("::ffff:0:169.254.169.254", THROUGH.format("IPv4-translated")),
        ("2002:a9fe:a9fe::1", THROUGH.format("6to4")),
        ("2001:0:4136:e378:8000:63bf:5601:5601", THROUGH.format("Teredo")),  # client 169.254.169.254, obfuscated
        ("2001:0:a9fe:a9fe::", THROUGH.format("Teredo")),  # the Teredo server
        ("64:ff9b::168.63.129.16", f"168.63.129.16 through NAT64, {METADATA}"),
    ],
)
def test_every_form_of_a_refused_address_is_refused(address: str, why: str) -> None:
    assert egress.refused(address)
    assert egress.refusal(address) == why


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.0.10.5",  # the lab's host aliases
        "::1",  # loopback, though it looks IPv4-compatible
        "10.0.0.1",
        "192.168.1.10",
        "100.100.100.100",
        "8.8.8.8",
        "2001:db8::1",
        "fd20:ce::1",  # GCP VPC ULAs come from fd20::/20: only the metadata address is refused
        "fd00:ec3::254",
        "64:ff9b::a00:1",  # 10.0.0.1 through NAT64
        "64:ff9b::",  # 0.0.0.0 behind a gateway is not this host
        "64:ff9b:1::a00:1",  # local-use NAT64, read at every prefix length: none is a metadata address
        "2002:a00:1::1",  # 10.0.0.1 through 6to4
        "::a00:1",  # 10.0.0.1, IPv4-compatible
        "metadata.google.internal",  # a name: checked by the addresses it resolves to
    ],
)
def test_ordinary_addresses_pass(address: str) -> None:
    assert not egress.refused(address) and egress.refusal(address) is None


async def test_a_name_resolving_to_an_unspecified_address_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", socket.getaddrinfo)  # restored after the test
    hostaliases.install({"prometheus.monitoring.test": "0.0.0.0"})
    with pytest.raises(egress.EgressRefused) as refused:
        await egress.checked_address("prometheus.monitoring.test", 9090)
    assert str(refused.value) == (
        f"prometheus.monitoring.test resolves to 0.0.0.0, which is {UNSPECIFIED}: refused "
        "(start the operator with --allow-link-local to allow it)"
    )


# -- one guard for every outbound call -----------------------------------------------------------------

CLIENTS = {("httpx", "AsyncClient"), ("httpx", "Client"), ("httpx", "AsyncHTTPTransport"), ("httpx", "HTTPTransport")}
OTHER_HTTP = ("aiohttp", "requests", "urllib.request", "http.client", "urllib3")
# the two clients that do not go through egress.client, and why
EXEMPT = {
    "kubernetes.py": "talks only to the API server of the operator's kubeconfig (urllib3 for its exceptions)",
    "docker.py": "the Docker SDK's client: a tcp:// host is checked and pinned by egress.checked_address",
}


def _made_clients(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        call = node.func if isinstance(node, ast.Call) else None  # a client made, not named in a type
        if isinstance(call, ast.Attribute) and isinstance(call.value, ast.Name):
            if (call.value.id, call.attr) in CLIENTS:
                found.append(f"{call.value.id}.{call.attr}")
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [n for n in names if n.split(".")[0] in OTHER_HTTP or n in OTHER_HTTP]
    return found


def test_every_action_makes_its_http_client_through_egress() -> None:
    for path in sorted(ACTIONS.glob("*.py")):
        if path.name in ("egress.py", *EXEMPT):
            continue
        assert _made_clients(path) == [], f"{path.name} makes its own HTTP client: use egress.client()"


def test_the_guarded_client_cannot_be_routed_around() -> None:
    for option in ("transport", "mounts", "proxy", "verify", "trust_env"):
        with pytest.raises(TypeError, match="every connection is guarded"):
            egress.client(**{option: None})


async def test_a_proxy_in_the_environment_does_not_bypass_the_guard(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("ALL_PROXY", "http://127.0.0.1:9")
    async with egress.client() as client:
        with pytest.raises(egress.EgressRefused):
            await client.get("http://169.254.169.254/latest/meta-data/")


# -- a url the action adds its own path to takes no query or fragment -----------------------------------

NO_QUERY = "takes no query (?) or fragment (#): the API's path (/api/v1/query) is added to it"


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/node-role?x=",
        "http://prometheus:9090/?query=up",
        "http://prometheus:9090/#",
        "http://prometheus:9090/api#x",
    ],
)
@pytest.mark.parametrize("action", ["prometheus.query", "prometheus.queryRange"])
def test_a_prometheus_url_with_a_query_or_fragment_is_refused_on_apply(action: str, url: str) -> None:
    params: dict[str, Any] = {"url": url, "query": "up", "range": "5m", "step": "15s"}
    if action == "prometheus.query":
        del params["range"], params["step"]
    with pytest.raises(ValueError, match=f"^url: Value error, {re.escape(NO_QUERY)}"):
        REGISTRY.check(action, params)
    parsed = parse_policy(policy_body(diagnose=[{"name": "q", "action": action, "with": params}]), REGISTRY.check)
    assert isinstance(parsed, InvalidPolicy)
    assert parsed.error.startswith(f"spec.diagnose[0].with ({action}): url: Value error, {NO_QUERY}")


def test_a_templated_prometheus_url_is_checked_for_a_query_on_apply() -> None:
    params = {"url": "http://prometheus:9090/{{ incident.labels.tenant }}?x=", "query": "up"}
    with pytest.raises(ValueError, match=r"^\(params\): Value error, url takes no query"):
        REGISTRY.check("prometheus.query", params)
    # a value's ? would be percent-encoded: the policy's own text is what matters
    assert REGISTRY.check("prometheus.query", {"url": "http://prometheus:9090/{{ incident.labels.x }}", "query": "up"})


def test_a_prometheus_url_may_have_a_path() -> None:
    REGISTRY.check("prometheus.query", {"url": "http://gateway:8080/prometheus/", "query": "up"})


def test_an_http_url_keeps_its_query_since_nothing_is_added_to_it() -> None:
    """http.* sends the url as written: a query is part of what the policy asked for."""
    REGISTRY.check("http.check", {"url": "http://web:8080/health?verbose=1"})
    REGISTRY.check("http.request", {"url": "http://admin:8080/scale?replicas=2", "method": "POST"})


async def test_a_prometheus_step_to_a_metadata_address_is_refused_before_connecting() -> None:
    action = REGISTRY.get("prometheus.query")
    params = REGISTRY.parse("prometheus.query", {"url": "http://[64:ff9b::a9fe:a9fe]/", "query": "up"})
    result = await run_action(action, params, ActionContext("ns", "inc", timeout=2.0))
    assert not result.ok
    assert result.message == (
        f"Prometheus at http://[64:ff9b::a9fe:a9fe]/: 64:ff9b::a9fe:a9fe is {THROUGH.format('NAT64')}: refused "
        "(start the operator with --allow-link-local to allow it)"
    )
