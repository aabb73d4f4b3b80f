"""prometheus.* against a real Prometheus 2.42 scraping an exporter the test serves (conftest.py)."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator

import pytest

from runbook_operator.actions import ActionContext
from runbook_operator.actions import prometheus as prometheus_actions
from runbook_operator.actions.api import Language, languages
from runbook_operator.adapters import hostaliases
from runbook_operator.domain.expressions import render
from runbook_operator.domain.lifecycle import OUTPUT_LIMIT
from runbook_operator.engine.executor import run_action
from tests.fixtures.listeners import Listener
from tests.integration.observability.conftest import PrometheusServer, run, wait_for
from tests.unit.builders import REGISTRY

P95 = (
    'histogram_quantile(0.95, sum(rate(ish_chat_request_duration_seconds_bucket{provider_type="openai"}[10s])) by (le))'
)


# -- prometheus.query -------------------------------------------------------------------------------------


async def test_query_breach_lists_each_breaching_series(prometheus: PrometheusServer) -> None:
    result = await run(
        "prometheus.query", {"url": prometheus.url, "query": "ish_chat_instances_healthy", "op": "<", "value": 2}
    )
    assert not result.ok
    assert result.output["breaching"] == 1 and result.output["total"] == 2
    [series] = result.output["series"]
    assert series["value"] == 1.0
    assert series["labels"] == {
        "__name__": "ish_chat_instances_healthy",
        "instance": f"127.0.0.1:{prometheus.exporter.port}",
        "job": "ish-chat",
        "provider_type": "anthropic",
    }
    assert "1 of 2 series breach < 2" in result.message
    assert 'provider_type="anthropic"' in result.message and "= 1.0" in result.message


async def test_a_hostile_label_cannot_make_a_broken_service_look_healthy(prometheus: PrometheusServer) -> None:
    """The attack: a label that closes the matcher and adds `or vector(5)` turned a breach into "healthy"."""
    template = {"url": prometheus.url, "op": "<", "value": 2, "onEmpty": "fail",
                "query": 'ish_chat_instances_healthy{provider_type="{{ incident.labels.provider }}"}'}  # fmt: skip
    kinds = languages(REGISTRY.get("prometheus.query").params)

    async def verify(provider: str, kinds: dict[str, Language]) -> tuple[bool, int]:
        result = await run(
            "prometheus.query", render(template, {"incident": {"labels": {"provider": provider}}}, kinds)
        )
        assert "bad_data" not in result.message, result.message  # Prometheus parsed what it was sent
        return result.ok, result.output.get("total", 0)

    assert await verify("anthropic", kinds) == (False, 1)  # the broken provider breaches
    for hostile in ('anthropic"} * 0 + 5 or vector(5) #', 'anthropic"}) or vector(5) or (up{x="', "a\\b\n'\"\x00"):
        assert await verify(hostile, kinds) == (False, 0), hostile  # no series has that label value: as literal
    fooled = await verify('anthropic"} * 0 + 5 or vector(5) #', {"url": Language.URL})  # substituted raw
    assert fooled == (True, 2)  # what the attack did before: "no series breaches"


async def test_query_without_breach_is_healthy(prometheus: PrometheusServer) -> None:
    result = await run(
        "prometheus.query", {"url": prometheus.url, "query": "ish_chat_instances_healthy", "op": "<", "value": 1}
    )
    assert result.ok, result.message
    assert result.output == {"breaching": 0, "total": 2, "series": []}
    assert "no series breaches < 1 (2 series; values 1..3)" in result.message


async def test_the_runbook_p95_latency_query(prometheus: PrometheusServer) -> None:
    """High Response Times: p95 from the histogram buckets (1.75s with the exporter's mix)."""
    slow = await run("prometheus.query", {"url": prometheus.url, "query": P95, "op": ">", "value": 1})
    assert not slow.ok, slow.message
    assert slow.output["series"][0]["labels"] == {}
    assert slow.output["series"][0]["value"] == pytest.approx(1.75, abs=0.01)
    fast_enough = await run("prometheus.query", {"url": prometheus.url, "query": P95, "op": ">", "value": 2})
    assert fast_enough.ok, fast_enough.message


async def test_query_sees_an_error_rate_appear(prometheus: PrometheusServer) -> None:
    """High Error Rates: the runbook's rate() by provider, before and after errors start."""
    query = 'sum(rate(ish_chat_requests_total{status="500"}[5s])) by (provider_type)'
    params = {"url": prometheus.url, "query": query, "op": ">", "value": 5}
    calm = await run("prometheus.query", params)
    assert calm.ok, calm.message
    prometheus.exporter.flaky_errors_per_scrape = 50  # 50 errors a second from now on
    try:
        wait_for(lambda: prometheus.value(f"{query.replace(' by (provider_type)', '')} > 5"), 15, "the error rate")
        burning = await run("prometheus.query", params)
    finally:
        prometheus.exporter.flaky_errors_per_scrape = 0
    assert not burning.ok
    assert [s["labels"] for s in burning.output["series"]] == [{"provider_type": "flaky"}]
    assert burning.output["series"][0]["value"] > 5
    assert 'breach > 5: {provider_type="flaky"} = ' in burning.message


async def test_query_without_threshold_reports_the_values(prometheus: PrometheusServer) -> None:
    result = await run("prometheus.query", {"url": prometheus.url, "query": "sum(ish_chat_instances_healthy)"})
    assert result.ok, result.message
    assert result.output["series"] == [{"labels": {}, "value": 4.0}]
    assert result.message == "query 'sum(ish_chat_instances_healthy)': 1 series: {} = 4.0"


async def test_query_scalar_result(prometheus: PrometheusServer) -> None:
    result = await run(
        "prometheus.query",
        {"url": prometheus.url, "query": "scalar(sum(ish_chat_instances_healthy))", "op": ">=", "value": 4},
    )
    assert not result.ok and result.output["series"] == [{"labels": {}, "value": 4.0}]


async def test_query_empty_result_is_ok_by_default(prometheus: PrometheusServer) -> None:
    query = 'ish_chat_requests_total{provider_type="nobody"}'
    result = await run("prometheus.query", {"url": prometheus.url, "query": query, "op": ">", "value": 0})
    assert result.ok
    assert "no data" in result.message
    assert result.output == {"breaching": 0, "total": 0}


async def test_query_empty_result_can_fail(prometheus: PrometheusServer) -> None:
    query = 'ish_chat_requests_total{provider_type="nobody"}'
    result = await run("prometheus.query", {"url": prometheus.url, "query": query, "onEmpty": "fail"})
    assert not result.ok
    assert result.message == f"query {query!r}: no data (query returned no series)"


async def test_query_nan_is_reported_never_compared(prometheus: PrometheusServer) -> None:
    breach = await run(
        "prometheus.query", {"url": prometheus.url, "query": "ish_chat_error_ratio", "op": ">", "value": 0.01}
    )
    assert not breach.ok
    assert breach.output["breaching"] == 1 and breach.output["nan"] == 1
    assert [s["labels"]["provider_type"] for s in breach.output["series"]] == ["openai"]
    assert "1 NaN, not compared" in breach.message
    # even `!=`, which NaN satisfies in IEEE arithmetic, does not count it as a breach
    unequal = await run(
        "prometheus.query", {"url": prometheus.url, "query": "ish_chat_error_ratio", "op": "!=", "value": 0.02}
    )
    assert unequal.ok, unequal.message
    listed = await run(
        "prometheus.query", {"url": prometheus.url, "query": 'ish_chat_error_ratio{provider_type="idle"}'}
    )
    assert listed.ok
    assert listed.output["series"][0]["value"] == "NaN"
    assert "= NaN" in listed.message


async def test_query_bad_promql_reports_prometheus_error(prometheus: PrometheusServer) -> None:
    result = await run("prometheus.query", {"url": prometheus.url, "query": "sum(rate(ish_chat_requests_total[5m]"})
    assert not result.ok
    assert result.message.startswith(f"Prometheus at {prometheus.url}/ refused the query (HTTP 400, bad_data): ")
    assert "parse error" in result.message


async def test_query_returning_a_range_vector_is_refused_clearly(prometheus: PrometheusServer) -> None:
    result = await run("prometheus.query", {"url": prometheus.url, "query": "ish_chat_scrapes[1m]"})
    assert not result.ok
    assert "returns a range vector (matrix): use prometheus.queryRange" in result.message


async def test_query_against_something_that_is_not_prometheus(prometheus: PrometheusServer) -> None:
    exporter = f"http://127.0.0.1:{prometheus.exporter.port}"
    result = await run("prometheus.query", {"url": exporter, "query": "up"})
    assert not result.ok
    assert result.message == f"Prometheus at {exporter}/: not a Prometheus API answer (HTTP 501, text/html; not shown)"


async def test_query_server_down(closed_port: int) -> None:
    result = await run("prometheus.query", {"url": f"http://127.0.0.1:{closed_port}", "query": "up"})
    assert not result.ok
    assert result.message.startswith(f"Prometheus at http://127.0.0.1:{closed_port}/: ConnectError")


async def test_query_timeout(silent_port: int) -> None:
    result = await run(
        "prometheus.query", {"url": f"http://127.0.0.1:{silent_port}", "query": "up", "timeout": "300ms"}
    )
    assert not result.ok
    assert result.message == f"Prometheus at http://127.0.0.1:{silent_port}/: no answer within 0.3s"


async def test_query_step_timeout_bounds_the_request(silent_port: int) -> None:
    result = await run("prometheus.query", {"url": f"http://127.0.0.1:{silent_port}", "query": "up"}, timeout=0.4)
    assert not result.ok and "no answer within 0.4s" in result.message


async def test_query_answer_size_is_bounded(prometheus: PrometheusServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prometheus_actions, "MAX_BODY", 256)
    result = await run("prometheus.query", {"url": prometheus.url, "query": "ish_chat_requests_total"})
    assert not result.ok
    assert "answer larger than 256 bytes; narrow the query" in result.message


async def test_query_output_and_message_are_bounded(prometheus: PrometheusServer) -> None:
    """12 series (5 buckets, 3 counters, 2 gauges, 2 ratios of which one NaN): 11 breach, 5 named, fewer listed."""
    everything = '{__name__=~"ish_chat_(request_duration_seconds_bucket|requests_total|instances_healthy|error_ratio)"}'
    result = await run("prometheus.query", {"url": prometheus.url, "query": everything, "op": ">", "value": -1})
    assert not result.ok
    assert (result.output["total"], result.output["breaching"], result.output["nan"]) == (12, 11, 1)
    assert 5 <= len(result.output["series"]) <= prometheus_actions.MAX_REPORTED
    assert sum(len(k) + len(str(v)) for k, v in result.output.items()) <= OUTPUT_LIMIT  # fits in the status
    assert "11 of 12 series breach > -1" in result.message and "(+6 more)" in result.message


# -- prometheus.queryRange --------------------------------------------------------------------------------


async def test_query_range_reduces_each_series(prometheus: PrometheusServer) -> None:
    """ish_chat_scrapes counts scrapes: its min over the range is the first one, its max the latest."""
    base = {"url": prometheus.url, "query": "ish_chat_scrapes", "range": "5m", "step": "1s"}
    highest = await run("prometheus.queryRange", {**base, "reduce": "max", "op": ">=", "value": 3})
    assert not highest.ok, highest.message
    assert highest.output["series"][0]["value"] >= 3
    assert highest.output["points"] >= 3
    lowest = await run("prometheus.queryRange", {**base, "reduce": "min", "op": ">=", "value": 3})
    assert lowest.ok, lowest.message
    assert "no series breaches >= 3 (1 series; values 1..1)" in lowest.message
    average = await run("prometheus.queryRange", {**base, "reduce": "avg"})
    last = await run("prometheus.queryRange", base)
    assert 1 < average.output["series"][0]["value"] < last.output["series"][0]["value"]
    assert re.match(r"query 'ish_chat_scrapes' over 300s \(last\): 1 series: ish_chat_scrapes", last.message)


async def test_query_range_empty_and_bad_promql(prometheus: PrometheusServer) -> None:
    base = {"url": prometheus.url, "range": "1m", "step": "5s"}
    empty = await run("prometheus.queryRange", {**base, "query": "nothing_here", "onEmpty": "fail"})
    assert not empty.ok and "no data" in empty.message
    bad = await run("prometheus.queryRange", {**base, "query": "rate(ish_chat_scrapes)"})
    assert not bad.ok and "refused the query (HTTP 400, bad_data)" in bad.message


async def test_query_range_nan_points_are_skipped_by_max(prometheus: PrometheusServer) -> None:
    base = {"url": prometheus.url, "query": "ish_chat_error_ratio", "range": "1m", "step": "1s", "op": ">", "value": 0}
    result = await run("prometheus.queryRange", {**base, "reduce": "max"})
    assert not result.ok
    assert result.output["breaching"] == 1 and result.output["nan"] == 1


async def test_query_range_server_down(closed_port: int) -> None:
    params = {"url": f"http://127.0.0.1:{closed_port}", "query": "up", "range": "5m", "step": "15s"}
    result = await run("prometheus.queryRange", params)
    assert not result.ok and "ConnectError" in result.message


async def test_query_range_timeout(silent_port: int) -> None:
    params = {"url": f"http://127.0.0.1:{silent_port}", "query": "up", "range": "5m", "step": "15s", "timeout": "200ms"}
    result = await run("prometheus.queryRange", params)
    assert not result.ok and result.message.endswith("no answer within 0.2s")


# -- the egress guard, and what an answer that is not Prometheus' may show (issue 22, finding 4) -----------

SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY"
CREDENTIALS = json.dumps({"Code": "Success", "Type": "AWS-HMAC", "AccessKeyId": "ASIAEXAMPLEEXAMPLE",
                          "SecretAccessKey": SECRET_KEY, "Token": "IQoJb3JpZ2luX2VjEXAMPLE"}).encode()  # fmt: skip
ROLE = "/latest/meta-data/iam/security-credentials/node-role"
METADATA_NAME = "metadata.cloud.test"


@pytest.fixture
def metadata() -> Iterator[Listener]:
    """A stand-in metadata server on loopback: the node role's credentials, to every request."""
    server = Listener(answer=(200, "text/plain", CREDENTIALS)).start()
    yield server
    server.stop()


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("0.0.0.0", "an unspecified address, which reaches the operator's own host"),  # it does: the stand-in
        ("169.254.169.254", "a link-local or cloud metadata address"),
        ("64:ff9b::a9fe:a9fe", "169.254.169.254 through NAT64, a link-local or cloud metadata address"),
    ],
)
async def test_a_name_aliased_to_a_refused_address_reads_no_credentials(
    metadata: Listener, monkeypatch: pytest.MonkeyPatch, address: str, why: str
) -> None:
    """The attack: prometheus.* made its own client, without the guard http.* has; its url led
    to the metadata server and the step's message quoted the credentials it answered with."""
    monkeypatch.setattr(socket, "getaddrinfo", socket.getaddrinfo)  # restored after the test
    hostaliases.install({METADATA_NAME: address})
    url = f"http://{METADATA_NAME}:{metadata.url.rsplit(':', 1)[1]}{ROLE}"
    for action, extra in (("prometheus.query", {}), ("prometheus.queryRange", {"range": "5m", "step": "15s"})):
        result = await run(action, {"url": url, "query": "up", **extra}, timeout=2.0)
        assert not result.ok
        assert result.message == (
            f"Prometheus at {url}: {METADATA_NAME} resolves to {address}, which is {why}: refused "
            "(start the operator with --allow-link-local to allow it)"
        )
        assert SECRET_KEY not in str(result)
    assert metadata.requests == []  # refused before connecting


async def test_the_attack_url_with_a_query_is_refused_before_it_runs(metadata: Listener) -> None:
    url = f"{metadata.url}{ROLE}?x="  # ?x= would swallow /api/v1/query
    with pytest.raises(ValueError, match=r"^url: Value error, takes no query \(\?\) or fragment"):
        await run("prometheus.query", {"url": url, "query": "up"})
    assert metadata.requests == []


@pytest.mark.parametrize(
    ("status", "kind", "body", "shown"),
    [
        (503, "text/plain; charset=utf-8", b"upstream failed: SecretAccessKey=" + SECRET_KEY.encode(), "text/plain"),
        (403, "application/json", CREDENTIALS, "application/json"),  # JSON, but not the API's shape
        (200, "text/plain", CREDENTIALS, "text/plain"),
        (404, "text/html", b"<html><body>" + SECRET_KEY.encode() + b"</body></html>", "text/html"),
        (500, "text/plain X-Leak: " + SECRET_KEY, b"", "an unreadable content type"),  # the header is theirs too
    ],
)
async def test_an_answer_that_is_not_prometheus_is_never_quoted(
    status: int, kind: str, body: bytes, shown: str
) -> None:
    stand_in = Listener(answer=(status, kind, body)).start()
    try:
        result = await run("prometheus.query", {"url": stand_in.url, "query": "up"})
    finally:
        stand_in.stop()
    assert [(method, path) for method, path, _ in stand_in.requests] == [("POST", "/api/v1/query")]
    assert not result.ok
    assert (
        result.message
        == f"Prometheus at {stand_in.url}/: not a Prometheus API answer (HTTP {status}, {shown}; not shown)"
    )
    assert SECRET_KEY not in str(result) and "AccessKeyId" not in str(result)


async def test_prometheus_own_error_text_is_scrubbed_and_bounded() -> None:
    error = {"status": "error", "errorType": "bad_data", "error": "parse error near s3cr3t-t0ken " + "x" * 5000}
    stand_in = Listener(answer=(400, "application/json", json.dumps(error).encode())).start()
    ctx = ActionContext("ns", "inc", timeout=5.0, revealed={"s3cr3t-t0ken"})
    try:
        result = await run_action(
            REGISTRY.get("prometheus.query"),
            REGISTRY.parse("prometheus.query", {"url": stand_in.url, "query": "up"}),
            ctx,
        )
    finally:
        stand_in.stop()
    assert not result.ok
    assert result.message.startswith(
        f"Prometheus at {stand_in.url}/ refused the query (HTTP 400, bad_data): parse error near ***"
    )
    assert "s3cr3t" not in result.message and len(result.message) < 400


# -- parameters -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("prometheus.query", {"query": "up"}, "url: Field required"),
        ("prometheus.query", {"url": "ftp://prom:21", "query": "up"}, "url: URL scheme should be 'http' or 'https'"),
        ("prometheus.query", {"url": "http://prom:9090"}, "query: Field required"),
        ("prometheus.query", {"url": "http://prom:9090", "query": ""}, "query: String should have at least 1 character"),
        ("prometheus.query", {"url": "http://prom:9090", "query": "up", "op": "=>", "value": 1}, "op: Input should be '>', '>=', '<', '<=', '==' or '!='"),
        ("prometheus.query", {"url": "http://prom:9090", "query": "up", "op": ">"}, "(params): Value error, op and value go together: give both or neither"),
        ("prometheus.query", {"url": "http://prom:9090", "query": "up", "value": 1}, "(params): Value error, op and value go together"),
        ("prometheus.query", {"url": "http://prom:9090", "query": "up", "op": ">", "value": "nan"}, "value: Input should be a finite number"),
        ("prometheus.query", {"url": "http://prom:9090", "query": "up", "onEmpty": "skip"}, "onEmpty: Input should be 'ok' or 'fail'"),
        ("prometheus.query", {"url": "http://prom:9090", "query": "up", "timeout": "soon"}, "invalid duration 'soon'"),
        ("prometheus.query", {"url": "http://prom:9090", "query": "up", "treshold": 1}, "treshold: Extra inputs are not permitted"),
        ("prometheus.queryRange", {"url": "http://prom:9090", "query": "up", "step": "15s"}, "range: Field required"),
        ("prometheus.queryRange", {"url": "http://prom:9090", "query": "up", "range": "5m", "step": "10m"}, "(params): Value error, step (600s) is longer than range (300s)"),
        ("prometheus.queryRange", {"url": "http://prom:9090", "query": "up", "range": "24h", "step": "1s"}, "range/step gives 86401 points a series; at most 11000: use a larger step"),
        ("prometheus.queryRange", {"url": "http://prom:9090", "query": "up", "range": "5m", "step": "1s", "reduce": "median"}, "reduce: Input should be 'last', 'max', 'min' or 'avg'"),
        ("prometheus.queryRange", {"url": "http://prom:9090", "query": "up", "range": "5 minutes", "step": "1s"}, "range: Value error, invalid duration '5 minutes'"),
    ],
)  # fmt: skip
def test_parameters_are_validated_with_precise_messages(name: str, params: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        REGISTRY.check(name, params)


def test_templated_parameters_wait_until_the_step_runs() -> None:
    traits = REGISTRY.check("prometheus.query", {"url": "{{ incident.labels.prometheus }}", "query": "up"})
    assert traits.read_only and not traits.destructive
    assert REGISTRY.get("prometheus.queryRange").read_only
