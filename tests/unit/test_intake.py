"""The Alertmanager intake: payload → Incident manifests, names, errors (domain.alerts), and the
HTTP handler with fakes (adapters.intake)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from runbook_operator.adapters import intake
from runbook_operator.adapters.kube import ApiError
from runbook_operator.adapters.metrics import Metrics
from runbook_operator.domain import alerts
from runbook_operator.domain.alerts import (
    Options,
    PayloadError,
    Placement,
    TooManyAlerts,
    incident_name,
    parse_body,
    parse_payload,
    place,
)

FP = "0123456789abcdef"
EPISODE = hashlib.sha256(b"2026-11-27T09:00:00Z").hexdigest()[:6]  # alert()'s startsAt, to the second
REDIS = f"redisdown-{FP[:10]}-{EPISODE}"
DNS1123 = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def alert(status: str = "firing", fingerprint: str = FP, **labels: Any) -> dict[str, Any]:
    return {
        "status": status,
        "labels": {"alertname": "RedisDown", **labels},
        "annotations": {"summary": "Redis is down", "description": "No PING reply for 2m"},
        "startsAt": "2026-11-27T09:00:00.123456789Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus:9090/graph?g0.expr=up",
        "fingerprint": fingerprint,
    }


def payload(*alerts: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"version": "4", "groupKey": "{}:{}", "status": "firing", "receiver": "runbook",
            "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {}, "externalURL": "http://am",
            "alerts": list(alerts)} | extra  # fmt: skip


@pytest.mark.parametrize(
    ("alertname", "fingerprint", "name"),
    [
        ("RedisDown", FP, "redisdown-0123456789abcdef"),
        ("High_Error.Rate", "ABCDEF0123456789FF", "high-error-rate-abcdef0123456789"),
        ("x" * 60, FP, "x" * 40 + "-" + FP),
        ("--Weird--", FP, "weird-" + FP),
        ("ÄÖÜ", FP, "alert-" + FP),  # nothing left of the name: still valid
        ("a" * 39 + "_b", FP, "a" * 39 + "-" + FP),  # trimmed to 40 leaves a trailing '-', which goes
        ("../../etc/passwd", FP, "etc-passwd-" + FP),
    ],
)
def test_incident_names_are_valid_and_deterministic(alertname: str, fingerprint: str, name: str) -> None:
    assert incident_name(alertname, fingerprint) == name
    assert DNS1123.fullmatch(name) and len(name) <= 63
    with_episode = incident_name(alertname, fingerprint, "2026-11-27T09:00:00Z")
    assert with_episode == name[: -len(FP)] + fingerprint.lower()[:10] + "-" + EPISODE
    assert DNS1123.fullmatch(with_episode) and len(with_episode) <= 63


def test_the_same_alert_firing_again_is_a_new_incident_and_a_resend_is_not() -> None:
    first = parse_payload(payload(alert()))[0].name
    resent = parse_payload(payload(alert() | {"startsAt": "2026-11-27T09:00:00.9Z"}))[0].name
    again = parse_payload(payload(alert() | {"startsAt": "2026-11-27T11:15:00Z"}))[0].name
    resolved = parse_payload(payload(alert("resolved") | {"endsAt": "2026-11-27T09:05:00Z"}))[0].name
    assert first == resent == resolved == REDIS
    assert again != first and again.startswith(f"redisdown-{FP[:10]}-")


def test_a_firing_alert_becomes_an_incident_manifest() -> None:
    (action,) = parse_payload(payload(alert(severity="critical", service="redis")))
    assert (action.firing, action.wanted, action.name) == (True, None, REDIS)
    assert action.manifest(place(action.wanted, Options())) == {
        "apiVersion": "remediation.ishchat.io/v1alpha1",
        "kind": "Incident",
        "metadata": {"name": REDIS, "namespace": "default",
                     "labels": {"app.kubernetes.io/created-by": "runbook-operator-intake"}},
        "spec": {
            "alert": "RedisDown",
            "severity": "Critical",
            "summary": "Redis is down",
            "description": "No PING reply for 2m",
            "labels": {"alertname": "RedisDown", "service": "redis", "severity": "critical"},
            "source": {"kind": "Alertmanager", "fingerprint": FP, "startsAt": "2026-11-27T09:00:00Z",
                       "generatorURL": "http://prometheus:9090/graph?g0.expr=up"},
        },
    }  # fmt: skip


@pytest.mark.parametrize(
    ("label", "severity"),
    [("critical", "Critical"), ("CRITICAL", "Critical"), ("high", "High"), ("error", "High"),
     ("warning", "Medium"), ("medium", "Medium"), ("info", "Low"), ("low", "Low"),
     ("page", None), ("", None), (None, None)],
)  # fmt: skip
def test_severities_map_to_the_crd_enum(label: str | None, severity: str | None) -> None:
    labels = {} if label is None else {"severity": label}
    (action,) = parse_payload(payload(alert(**labels)))
    assert action.spec.get("severity") == severity


def test_text_is_truncated_to_the_crd_limits() -> None:
    raw = alert(**{f"l{i:03}": "v" * 2000 for i in range(100)})
    raw["annotations"] = {"summary": "s" * 5000, "description": "d" * 20000}
    raw["generatorURL"] = "http://x/" + "g" * 5000
    spec = parse_payload(payload(raw))[0].spec
    assert len(spec["summary"]) == 1024 and len(spec["description"]) == 16384
    assert len(spec["labels"]) == 64 and all(len(v) <= 1024 for v in spec["labels"].values())
    assert len(spec["source"]["generatorURL"]) == 2048


def test_label_values_are_stringified() -> None:
    spec = parse_payload(payload(alert(port=5432, up=False, extra={"a": 1})))[0].spec
    assert spec["labels"]["port"] == "5432" and spec["labels"]["up"] == "false"
    assert spec["labels"]["extra"] == '{"a": 1}'


NOT_OPTED_IN = (
    "the alert names namespace shop, which has not opted in to the intake: "
    "label it remediation.ishchat.io/intake=enabled (or add --intake-namespaces=shop)"
)


@pytest.mark.parametrize(
    ("wanted", "options", "labelled", "placement"),
    [
        (None, Options(), False, Placement("default")),
        (None, Options(namespace="alerts"), False, Placement("alerts")),
        ("alerts", Options(namespace="alerts"), False, Placement("alerts")),  # the fallback takes any alert
        # an alert naming a namespace is only a wish: the namespace must have opted in
        ("shop", Options(), False, Placement("default", "not_opted_in", NOT_OPTED_IN)),
        ("kube-system", Options(namespace="alerts"), False, Placement("alerts", "not_opted_in", NOT_OPTED_IN.replace("shop", "kube-system"))),
        ("shop", Options(), True, Placement("shop")),  # by the Namespace's label
        ("shop", Options(opted_in=frozenset({"shop"})), False, Placement("shop")),  # by --intake-namespaces
        ("shop", Options(watched=frozenset({"shop"})), True, Placement("shop")),
        (
            "shop",
            Options(namespace="alerts", opted_in=frozenset({"shop"}), watched=frozenset({"other"})),
            True,
            Placement("alerts", "not_watched", "the alert names namespace shop, which the operator does not watch"),
        ),
        ("Not_A_Namespace", Options(), True, Placement("default", "not_a_namespace", "the alert's namespace label 'Not_A_Namespace' is no namespace name")),
        ("a" * 64, Options(), True, Placement("default", "not_a_namespace", f"the alert's namespace label {'a' * 64!r} is no namespace name")),
    ],
)  # fmt: skip
def test_namespaces_take_alerts_only_when_they_opted_in(
    wanted: str | None, options: Options, labelled: bool, placement: Placement
) -> None:
    labels = {} if wanted is None else {"namespace": wanted}
    (action,) = parse_payload(payload(alert(**labels)))
    assert place(action.wanted, options, labelled) == placement
    metadata = action.manifest(placement)["metadata"]
    assert metadata["namespace"] == placement.namespace
    assert metadata.get("annotations") == ({"remediation.ishchat.io/intake-redirected": placement.why}
                                           if placement.reason else None)  # fmt: skip


def test_a_resolved_alert_names_the_incident_to_resolve() -> None:
    (action,) = parse_payload(payload(alert("resolved", namespace="shop")))
    assert (action.firing, action.wanted, action.name, action.spec) == (False, "shop", REDIS, {})


def _without(key: str) -> dict[str, Any]:
    raw = alert()
    del raw[key]
    return raw


def _labels(**labels: Any) -> dict[str, Any]:
    return alert() | {"labels": labels}


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b'{"version": "4", "alerts": [', "body: not valid JSON: Expecting value: line 1 column 29 (char 28)"),
        (b"\xff\xfe", "body: not UTF-8"),
        (b"[]", "body: must be an object"),
        (b"null", "body: required"),
        (b'{"alerts": []}', "version: required"),
        (b'{"version": "3", "alerts": []}', 'version: must be "4", got "3"'),
        (b'{"version": 4, "alerts": []}', 'version: must be "4", got 4'),
        (b'{"version": "4"}', "alerts: required"),
        (b'{"version": "4", "alerts": {}}', "alerts: must be a list"),
        (json.dumps(payload(alert(), alert(), _labels(severity="x"))).encode(), "alerts[2].labels.alertname: required"),
        (json.dumps(payload(_labels(alertname=""))).encode(), "alerts[0].labels.alertname: required"),
        (json.dumps(payload(_labels(alertname=7))).encode(), "alerts[0].labels.alertname: must be a string"),
        (
            json.dumps(payload(_labels(alertname="A" * 254))).encode(),
            "alerts[0].labels.alertname: longer than 253 characters",
        ),
        (json.dumps(payload(_without("fingerprint"))).encode(), "alerts[0].fingerprint: required"),
        (
            json.dumps(payload(alert(fingerprint="../../x"))).encode(),
            "alerts[0].fingerprint: must be 8 to 64 hex digits",
        ),
        (
            json.dumps(payload(alert(fingerprint="0123abc"))).encode(),
            "alerts[0].fingerprint: must be 8 to 64 hex digits",
        ),
        (
            json.dumps(payload(alert(fingerprint="0123456789abcdefg"))).encode(),
            "alerts[0].fingerprint: must be 8 to 64 hex digits",
        ),
        (json.dumps(payload(_without("labels"))).encode(), "alerts[0].labels: required"),
        (json.dumps(payload(alert() | {"labels": ["a"]})).encode(), "alerts[0].labels: must be an object"),
        (json.dumps(payload(alert() | {"annotations": "x"})).encode(), "alerts[0].annotations: must be an object"),
        (json.dumps(payload(_without("status"))).encode(), "alerts[0].status: required"),
        (json.dumps(payload(alert("pending"))).encode(), "alerts[0].status: must be 'firing' or 'resolved'"),
        (json.dumps(payload(alert() | {"startsAt": "yesterday"})).encode(), "alerts[0].startsAt: not an RFC 3339 time"),
        (
            json.dumps(payload(alert() | {"startsAt": "2026-13-01T00:00:00Z"})).encode(),
            "alerts[0].startsAt: not an RFC 3339 time",
        ),
        (json.dumps(payload(alert() | {"generatorURL": 5})).encode(), "alerts[0].generatorURL: must be a string"),
        (json.dumps(payload("nope")).encode(), "alerts[0]: must be an object"),  # type: ignore[arg-type]
    ],
)
def test_bad_payloads_are_rejected_naming_the_field(body: bytes, error: str) -> None:
    with pytest.raises(PayloadError) as caught:
        parse_body(body)
    assert str(caught.value) == error


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"[" * 10_000 + b"]" * 10_000, "body: nested deeper than 32 levels"),  # RecursionError in json: a 500
        (b'{"version": "4", "alerts": [], "x": ' + b"[" * 32 + b"]" * 32 + b"}", "body: nested deeper than 32 levels"),
        (b'{"version": "4", "truncatedAlerts": ' + b"9" * 5000 + b', "alerts": []}',
         "body: a number of 5000 characters, more than 32"),  # int()'s digit limit is a ValueError: a 500
        (b'{"version": "4", "alerts": [], "x": 1.' + b"5" * 100 + b"}", "body: a number of 102 characters, more than 32"),
        (b'{"version": "4", "alerts": [], "x": NaN}', "body: not valid JSON: NaN is not a JSON value"),
        (b'{"version": "4", "alerts": [], "x": -Infinity}', "body: not valid JSON: -Infinity is not a JSON value"),
    ],
)  # fmt: skip
def test_bodies_that_used_to_be_500s_are_refused_naming_the_problem(body: bytes, error: str) -> None:
    with pytest.raises(PayloadError) as caught:
        parse_body(body)
    assert str(caught.value) == error and caught.value.status == 400


def test_the_nesting_alertmanager_sends_is_fine() -> None:
    nested = alert(extra={"a": [[{"b": [1, 2.5, -3e2]}]]})  # labels' values may be any JSON, stringified
    assert (
        parse_body(json.dumps(payload(nested)).encode())[0].spec["labels"]["extra"]
        == '{"a": [[{"b": [1, 2.5, -300.0]}]]}'
    )


def test_more_alerts_than_the_limit_are_refused_whole() -> None:
    alerts = [alert(fingerprint=f"{i:010x}aaaaaa") for i in range(1001)]
    assert len(parse_payload(payload(*alerts[:1000]))) == 1000
    with pytest.raises(TooManyAlerts) as caught:
        parse_payload(payload(*alerts))
    assert caught.value.status == 413
    assert str(caught.value) == (
        "alerts: 1001 in one request, more than the 1000 the intake takes (--intake-max-alerts); "
        "nothing was created. Set max_alerts in Alertmanager's webhook_config"
    )
    with pytest.raises(TooManyAlerts, match="more than the 2 the intake takes"):
        parse_body(json.dumps(payload(*alerts[:3])).encode(), max_alerts=2)


def test_hostile_label_values_stay_data() -> None:
    hostile = {"alertname": "Evil;rm -rf /", "namespace": "kube-system\nx", "metadata.name": "owned",
               "x": "{{ 7*7 }}", "y": "$(id)"}  # fmt: skip
    (action,) = parse_payload(payload(alert() | {"labels": hostile}))
    placement = place(action.wanted, Options(), labelled=True)
    assert action.name == f"evil-rm--rf-{FP[:10]}-{EPISODE}" and placement.namespace == "default"
    assert placement.why == "the alert's namespace label 'kube-system\\nx' is no namespace name"
    manifest = action.manifest(placement)
    assert manifest["metadata"]["name"] == action.name
    assert manifest["spec"]["labels"] == hostile and manifest["spec"]["alert"] == "Evil;rm -rf /"


def test_startsat_offsets_become_utc() -> None:
    raw = alert() | {"startsAt": "2026-11-27T10:30:00.5+01:30"}
    assert parse_payload(payload(raw))[0].spec["source"]["startsAt"] == "2026-11-27T09:00:00Z"


def test_an_empty_alert_list_is_fine() -> None:
    assert parse_payload(payload()) == []


def test_tokens(tmp_path: Path) -> None:
    file = tmp_path / "token"
    file.write_text("s3cret\n")
    assert intake.load_token(str(file), {}) == "s3cret"
    assert intake.load_token(None, {"RUNBOOK_INTAKE_TOKEN": "from-env"}) == "from-env"
    assert intake.load_token(None, {}) is None
    file.write_text("  \n")
    with pytest.raises(ValueError, match="is empty"):
        intake.load_token(str(file), {})
    with pytest.raises(OSError):
        intake.load_token(str(tmp_path / "missing"), {})


@pytest.mark.parametrize(("text", "address"), [("0.0.0.0:8082", ("0.0.0.0", 8082)), (":8082", ("127.0.0.1", 8082))])
def test_addresses(text: str, address: tuple[str, int]) -> None:
    assert intake.parse_address(text) == address


@pytest.mark.parametrize("text", ["8082", "host:", "host:http", "host:70000"])
def test_bad_addresses(text: str) -> None:
    with pytest.raises(ValueError, match="expected HOST:PORT"):
        intake.parse_address(text)


# -- the handler, with fake Incidents -----------------------------------------------------


class FakeIncidents:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.fail: ApiError | None = None
        self.writes = 0
        self.namespaces: dict[str, dict[str, str]] = {"default": {}, "shop": {}, "kube-system": {}}
        self.namespace_reads: list[str] = []
        self.namespace_fail: ApiError | None = None

    async def namespace_labels(self, name: str) -> Mapping[str, str] | None:
        self.namespace_reads.append(name)
        if self.namespace_fail:
            raise self.namespace_fail
        return self.namespaces.get(name)

    async def create_incident(self, namespace: str, manifest: Mapping[str, Any]) -> bool:
        if self.fail:
            raise self.fail
        self.writes += 1
        key = (namespace, manifest["metadata"]["name"])
        if key in self.objects:
            return False
        self.objects[key] = json.loads(json.dumps(manifest))
        self.objects[key]["metadata"]["resourceVersion"] = "1"
        return True

    async def read_incident(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        if self.fail:
            raise self.fail
        found = self.objects.get((namespace, name))
        return json.loads(json.dumps(found)) if found is not None else None

    async def resolve_incident(self, namespace: str, name: str, resource_version: str) -> bool:
        if self.fail:
            raise self.fail
        self.writes += 1
        found = self.objects.get((namespace, name))
        if found is None or found["metadata"].get("resourceVersion") != resource_version:
            return False  # gone (404) or changed since it was read (409)
        found["spec"]["resolved"] = True
        found["metadata"]["resourceVersion"] = str(int(resource_version) + 1)
        return True


@pytest.fixture
async def served() -> Any:
    fake, metrics = FakeIncidents(), Metrics(CollectorRegistry())
    settings = intake.Settings("127.0.0.1", 0, "tok", max_bytes=4096)
    client = TestClient(TestServer(intake.build_app(settings, fake, metrics.intake())))
    await client.start_server()
    yield client, fake, metrics
    await client.close()


@pytest.fixture
async def roomy() -> Any:
    """As ``served``, with the operator's default body limit (1 MiB): room for many alerts."""
    fake, metrics = FakeIncidents(), Metrics(CollectorRegistry())
    client = TestClient(TestServer(intake.build_app(intake.Settings("127.0.0.1", 0, "tok"), fake, metrics.intake())))
    await client.start_server()
    yield client, fake, metrics
    await client.close()


def _count(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


AUTH = {"Authorization": "Bearer tok"}


async def test_the_handler_creates_deduplicates_and_resolves(served: Any) -> None:
    client, fake, metrics = served
    resp = await client.post(intake.PATH, json=payload(alert()), headers=AUTH)
    assert resp.status == 200 and await resp.json() == {
        "created": 1,
        "duplicate": 0,
        "resolved": 0,
        "unknown_resolved": 0,
        "not_ours": 0,
    }
    resp = await client.post(intake.PATH, json=payload(alert()), headers=AUTH)
    assert (await resp.json())["duplicate"] == 1 and len(fake.objects) == 1
    resp = await client.post(
        intake.PATH, json=payload(alert("resolved"), alert("resolved", "ffffffffffffffff")), headers=AUTH
    )
    assert await resp.json() == {"created": 0, "duplicate": 0, "resolved": 1, "unknown_resolved": 1, "not_ours": 0}
    assert fake.objects["default", REDIS]["spec"]["resolved"] is True
    for result, n in {"created": 1, "duplicate": 1, "resolved": 1, "unknown_resolved": 1}.items():
        assert _count(metrics, "runbook_intake_alerts_total", result=result) == n


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic tok"}, {"Authorization": "tok"}]
)
async def test_the_handler_refuses_without_the_token(served: Any, headers: dict[str, str]) -> None:
    client, fake, metrics = served
    resp = await client.post(intake.PATH, json=payload(alert()), headers=headers)
    assert resp.status == 401 and await resp.json() == {"error": "missing or wrong bearer token"}
    assert resp.headers["WWW-Authenticate"] == "Bearer"
    assert fake.writes == 0 and _count(metrics, "runbook_intake_rejected_total", reason="unauthorized") == 1


async def test_the_handler_limits_the_body(served: Any) -> None:
    client, fake, metrics = served
    resp = await client.post(intake.PATH, data=b"x" * 5000, headers=AUTH | {"Content-Type": "application/json"})
    assert resp.status == 413 and await resp.json() == {"error": "body: larger than 4096 bytes"}
    assert fake.writes == 0 and _count(metrics, "runbook_intake_rejected_total", reason="too_large") == 1


async def test_one_bad_alert_writes_nothing(served: Any) -> None:
    client, fake, metrics = served
    resp = await client.post(intake.PATH, json=payload(alert(), alert(fingerprint="zz")), headers=AUTH)
    assert resp.status == 400 and await resp.json() == {"error": "alerts[1].fingerprint: must be 8 to 64 hex digits"}
    assert fake.writes == 0 and _count(metrics, "runbook_intake_rejected_total", reason="malformed") == 1


@pytest.mark.parametrize(("permanent", "status"), [(False, 503), (True, 422)])
async def test_api_failures(served: Any, permanent: bool, status: int) -> None:
    client, fake, metrics = served
    fake.fail = ApiError("Service Unavailable (503)", permanent)
    resp = await client.post(intake.PATH, json=payload(alert()), headers=AUTH)
    assert resp.status == status
    assert await resp.json() == {"error": f"incident default/{REDIS}: Service Unavailable (503)"}
    assert _count(metrics, "runbook_intake_alerts_total", result="failed") == 1


async def test_a_request_with_too_many_alerts_creates_nothing(served: Any) -> None:
    _, fake, metrics = served
    alerts = [alert(fingerprint=f"{i:010x}aaaaaa") for i in range(3)]
    app = intake.build_app(intake.Settings("127.0.0.1", 0, "tok", Options(max_alerts=2)), fake, metrics.intake())
    limited = TestClient(TestServer(app))
    await limited.start_server()
    try:
        resp = await limited.post(intake.PATH, json=payload(*alerts), headers=AUTH)
        assert resp.status == 413 and (await resp.json())["error"].startswith(
            "alerts: 3 in one request, more than the 2"
        )
        resp = await limited.post(intake.PATH, json=payload(*alerts[:2]), headers=AUTH)
        assert resp.status == 200 and (await resp.json())["created"] == 2
    finally:
        await limited.close()
    assert fake.writes == 2 and _count(metrics, "runbook_intake_rejected_total", reason="too_many_alerts") == 1


async def test_a_deeply_nested_body_is_a_400_not_a_500(served: Any) -> None:
    client, fake, metrics = served
    resp = await client.post(intake.PATH, data=b"[" * 2000 + b"]" * 2000, headers=AUTH)
    assert resp.status == 400 and await resp.json() == {"error": "body: nested deeper than 32 levels"}
    assert fake.writes == 0 and _count(metrics, "runbook_intake_rejected_total", reason="malformed") == 1


async def test_alerts_go_only_to_namespaces_that_opted_in(served: Any, caplog: pytest.LogCaptureFixture) -> None:
    client, fake, metrics = served
    fake.namespaces["shop"] = {alerts.OPT_IN_LABEL: "enabled"}
    shop, system = alert(namespace="shop"), alert(fingerprint="ffffffffffffffff", namespace="kube-system")
    resp = await client.post(intake.PATH, json=payload(shop, system), headers=AUTH)
    assert resp.status == 200 and (await resp.json())["created"] == 2
    name = f"redisdown-ffffffffff-{EPISODE}"
    assert set(fake.objects) == {("shop", REDIS), ("default", name)}
    assert "annotations" not in fake.objects["shop", REDIS]["metadata"]
    assert fake.objects["default", name]["metadata"]["annotations"] == {
        "remediation.ishchat.io/intake-redirected": NOT_OPTED_IN.replace("shop", "kube-system")
    }
    assert fake.objects["default", name]["spec"]["labels"]["namespace"] == "kube-system"  # what the alert said stays
    assert _count(metrics, "runbook_intake_redirected_total", reason="not_opted_in") == 1
    assert "intake: 1 alert(s) went to namespace default: the alert names namespace kube-system" in caplog.text
    # resolving finds each Incident where its firing alert put it
    resp = await client.post(intake.PATH, json=payload(alert("resolved", namespace="shop"),
                             alert("resolved", "ffffffffffffffff", namespace="kube-system")), headers=AUTH)  # fmt: skip
    assert (await resp.json())["resolved"] == 2
    assert sorted(fake.namespace_reads) == ["kube-system", "shop"]  # one read per namespace: the rest is cached


async def test_a_namespace_label_counts_within_the_cache_time() -> None:
    fake, now = FakeIncidents(), [0.0]
    opt_ins = intake.OptIns(fake, clock=lambda: now[0])
    assert await opt_ins.opted_in("shop") is False
    fake.namespaces["shop"] = {alerts.OPT_IN_LABEL: "enabled"}
    now[0] = intake.OPT_IN_TTL - 1
    assert await opt_ins.opted_in("shop") is False and fake.namespace_reads == ["shop"]
    now[0] = intake.OPT_IN_TTL
    assert await opt_ins.opted_in("shop") is True
    fake.namespaces["shop"] = {alerts.OPT_IN_LABEL: "yes"}  # only "enabled" opts in
    now[0] = 2 * intake.OPT_IN_TTL
    assert await opt_ins.opted_in("shop") is False
    assert await opt_ins.opted_in("gone") is False  # no such Namespace


async def test_an_unreadable_namespace_label_creates_nothing(served: Any) -> None:
    client, fake, _ = served
    fake.namespace_fail = ApiError("Forbidden (403)", permanent=False)
    resp = await client.post(intake.PATH, json=payload(alert(), alert("firing", "ffffffffffffffff", namespace="shop")),
                             headers=AUTH)  # fmt: skip
    assert resp.status == 503 and await resp.json() == {
        "error": "reading a Namespace's remediation.ishchat.io/intake label: Forbidden (403); nothing was created"
    }
    assert fake.writes == 0


async def test_no_token_means_no_auth_only_when_configured_so() -> None:
    fake = FakeIncidents()
    client = TestClient(TestServer(intake.build_app(intake.Settings("127.0.0.1", 0, None), fake)))
    await client.start_server()
    try:
        resp = await client.post(intake.PATH, json=payload(alert()))
        assert resp.status == 200 and len(fake.objects) == 1
    finally:
        await client.close()


async def test_readyz_answers_503_until_the_operator_is_ready_and_200_after() -> None:
    """The Deployment's readiness probe: a Service sends alerts only to replicas that take them."""
    ready = False
    app = intake.build_app(intake.Settings("127.0.0.1", 0, "tok"), FakeIncidents(), ready=lambda: ready)
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        assert (await client.get(intake.READY_PATH)).status == 503
        ready = True
        resp = await client.get(intake.READY_PATH)
        assert resp.status == 200 and await resp.text() == "ok\n"
    finally:
        await client.close()


def test_the_cli_refuses_an_intake_without_a_token(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from runbook_operator.entrypoints import cli

    monkeypatch.delenv("RUNBOOK_INTAKE_TOKEN", raising=False)
    assert cli.main(["run", "--intake-address=127.0.0.1:8082", "--metrics-address="]) == 2
    assert "the Alertmanager intake needs a bearer token" in capsys.readouterr().err


# -- issue 22: the intake acts only on what it created, never a 5xx, bounded work per request ---------


def _person_made(name: str, namespace: str = "default", **labels: str) -> dict[str, Any]:
    """An Incident a person created under a name of the intake's shape (kubectl apply)."""
    return {"apiVersion": "remediation.ishchat.io/v1alpha1", "kind": "Incident",
            "metadata": {"name": name, "namespace": namespace, "labels": labels, "resourceVersion": "7"},
            "spec": {"alert": "Payments", "source": {"kind": "Alertmanager", "fingerprint": FP}}}  # fmt: skip


@pytest.mark.parametrize(
    ("labels", "source", "ours"),
    [
        ({"app.kubernetes.io/created-by": "runbook-operator-intake"}, {"kind": "Alertmanager", "fingerprint": FP}, True),
        ({"app.kubernetes.io/created-by": "runbook-operator-intake"}, {"kind": "Alertmanager", "fingerprint": FP.upper()}, True),
        ({}, {"kind": "Alertmanager", "fingerprint": FP}, False),  # a person's, with the same name and source
        ({"app.kubernetes.io/created-by": "someone"}, {"kind": "Alertmanager", "fingerprint": FP}, False),
        ({"app.kubernetes.io/created-by": "runbook-operator-intake"}, {"kind": "Alertmanager", "fingerprint": "f" * 16}, False),
        ({"app.kubernetes.io/created-by": "runbook-operator-intake"}, {"kind": "Manual", "fingerprint": FP}, False),
        ({"app.kubernetes.io/created-by": "runbook-operator-intake"}, None, False),
        ({"app.kubernetes.io/created-by": "runbook-operator-intake"}, {"kind": "Alertmanager", "fingerprint": 7}, False),
    ],
)  # fmt: skip
def test_only_an_incident_with_the_intakes_label_and_the_alerts_fingerprint_is_the_intakes(
    labels: dict[str, str], source: dict[str, Any] | None, ours: bool
) -> None:
    body = {"metadata": {"name": "x", "labels": labels}, "spec": {"alert": "A", "source": source}}
    assert alerts.created_for(body, FP) is ours
    assert alerts.created_for({"metadata": None, "spec": "x"}, FP) is False


async def test_a_resolved_alert_leaves_alone_an_incident_a_person_created(
    served: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """`payments-0123456789abcdef`, created by a person, was ResolvedExternally by any resolved alert of that name."""
    client, fake, metrics = served
    name = incident_name("Payments", FP)
    assert name == "payments-0123456789abcdef"
    fake.objects["default", name] = _person_made(name)
    resolved = alert("resolved") | {"labels": {"alertname": "Payments"}, "startsAt": ""}
    resp = await client.post(intake.PATH, json=payload(resolved), headers=AUTH)
    assert resp.status == 200 and await resp.json() == {
        "created": 0, "duplicate": 0, "resolved": 0, "unknown_resolved": 0, "not_ours": 1,
    }  # fmt: skip
    assert "resolved" not in fake.objects["default", name]["spec"] and fake.writes == 0
    assert _count(metrics, "runbook_intake_alerts_total", result="not_ours") == 1
    lines = [r.getMessage() for r in caplog.records if r.name == "runbook_operator.adapters.intake"]
    assert lines == [
        "intake: 1 resolved alert(s) left alone: incident default/payments-0123456789abcdef was not created by "
        "the intake for that alert (no label app.kubernetes.io/created-by=runbook-operator-intake with its fingerprint)"
    ]
    # the one the intake created itself, for that alert, it still resolves
    firing = alert() | {"labels": {"alertname": "Payments"}, "startsAt": ""}
    del fake.objects["default", name]
    assert (await (await client.post(intake.PATH, json=payload(firing), headers=AUTH)).json())["created"] == 1
    assert (await (await client.post(intake.PATH, json=payload(resolved), headers=AUTH)).json())["resolved"] == 1
    assert fake.objects["default", name]["spec"]["resolved"] is True


async def test_a_resolve_is_fenced_by_the_version_it_read_and_read_again_when_it_moved(served: Any) -> None:
    client, fake, _ = served
    assert (await (await client.post(intake.PATH, json=payload(alert()), headers=AUTH)).json())["created"] == 1
    reads = 0
    original = fake.read_incident

    async def moving(namespace: str, name: str) -> Mapping[str, Any] | None:
        nonlocal reads
        reads += 1
        body: Mapping[str, Any] | None = await original(namespace, name)
        if reads == 1:  # someone writes between the intake's read and its patch
            fake.objects[namespace, name]["metadata"]["resourceVersion"] = "2"
        return body

    fake.read_incident = moving
    resp = await client.post(intake.PATH, json=payload(alert("resolved")), headers=AUTH)
    assert (await resp.json())["resolved"] == 1 and reads == 2
    assert fake.objects["default", REDIS]["spec"]["resolved"] is True
    # an Incident already resolved is not written again
    writes = fake.writes
    assert (await (await client.post(intake.PATH, json=payload(alert("resolved")), headers=AUTH)).json())[
        "resolved"
    ] == 1
    assert fake.writes == writes


async def _raw(port: int, request: bytes, timeout: float = 5.0) -> bytes:
    """Send ``request`` as it is, and read the answer until the server closes (or ``timeout``)."""
    chunks: list[bytes] = []
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        async with asyncio.timeout(timeout):
            while chunk := await reader.read(65536):
                chunks.append(chunk)
                if _complete(b"".join(chunks)):
                    break
    except (ConnectionError, TimeoutError):
        pass  # what came before the server closed or went quiet is the answer
    finally:
        writer.close()
    return b"".join(chunks)


def _complete(answer: bytes) -> bool:
    head, done, body = answer.partition(b"\r\n\r\n")
    if not done:
        return False
    match = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    return match is not None and len(body) >= int(match.group(1))


def _status(answer: bytes) -> int | None:
    match = re.match(rb"HTTP/1\.[01] (\d{3}) ", answer)
    return int(match.group(1)) if match else None


def _request(headers: bytes, body: bytes, path: bytes = intake.PATH.encode()) -> bytes:
    return (b"POST " + path + b" HTTP/1.1\r\nHost: intake\r\n" + headers
            + b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)  # fmt: skip


@pytest.fixture
async def serving() -> Any:
    """The intake as the operator serves it (intake.start: the gate and its deadlines), on a free port."""
    fake, metrics = FakeIncidents(), Metrics(CollectorRegistry())
    settings = intake.Settings("127.0.0.1", 0, "tok", max_bytes=4096, header_timeout=0.3, body_timeout=0.3,
                               max_connections=4)  # fmt: skip
    served = await intake.start(settings, fake, metrics.intake())
    yield served, fake, metrics
    await served.cleanup()


@pytest.mark.parametrize(
    ("value", "status", "reason"),
    [(b"Bearer \xff", 401, "unauthorized"), (b"Bearer \xff\xfe", 401, "unauthorized"), (b"\xff tok", 401, "unauthorized"),
     (b"Bearer tok\xff", 401, "unauthorized"), (b"Bearer \xc3\xa9", 401, "unauthorized"),
     (b"Bearer \x00", 400, "malformed")],  # a control character: aiohttp's parser refuses the request
)  # fmt: skip
async def test_a_bearer_token_that_is_not_ascii_is_a_4xx_not_a_500(
    serving: Any, caplog: pytest.LogCaptureFixture, value: bytes, status: int, reason: str
) -> None:
    served, fake, metrics = serving
    answer = await _raw(
        served.port, _request(b"Authorization: " + value + b"\r\n", json.dumps(payload(alert())).encode())
    )
    assert _status(answer) == status, answer[:200]
    assert fake.writes == 0 and _count(metrics, "runbook_intake_rejected_total", reason=reason) == 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # no traceback a client can write


@pytest.mark.parametrize("starts", ["9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+23:59"])
def test_a_start_time_outside_the_years_of_a_datetime_in_utc_is_a_400_naming_the_alert(starts: str) -> None:
    """It was an OverflowError: a 500, which Alertmanager retries for ever, and the valid alert with it lost."""
    body = json.dumps(payload(alert(), alert(fingerprint="ffffffffffffffff") | {"startsAt": starts})).encode()
    with pytest.raises(PayloadError) as caught:
        parse_body(body)
    assert str(caught.value) == "alerts[1].startsAt: not an RFC 3339 time" and caught.value.status == 400


def test_start_times_keep_four_digit_years() -> None:
    raw = alert() | {"startsAt": "0999-01-01T00:30:00+00:10"}
    assert parse_payload(payload(raw))[0].spec["source"]["startsAt"] == "0999-01-01T00:20:00Z"


async def test_one_bad_alert_in_a_batch_refuses_the_batch_with_a_400_and_writes_nothing(served: Any) -> None:
    """The choice (docs/intake.md): the whole batch is refused with a 4xx naming the bad
    alert; Alertmanager logs and counts the failed notification and does not retry it."""
    client, fake, metrics = served
    bad = alert(fingerprint="ffffffffffffffff") | {"startsAt": "9999-12-31T23:59:59-23:59"}
    resp = await client.post(intake.PATH, json=payload(alert(), bad), headers=AUTH)
    assert resp.status == 400 and await resp.json() == {"error": "alerts[1].startsAt: not an RFC 3339 time"}
    assert fake.writes == 0 and _count(metrics, "runbook_intake_rejected_total", reason="malformed") == 1


def _spread(n: int) -> list[dict[str, Any]]:
    return [alert(fingerprint=f"{i:010x}aaaaaa", namespace=f"team-{i}") for i in range(n)]


async def test_more_namespaces_in_one_request_than_the_limit_are_refused_whole_before_any_read(roomy: Any) -> None:
    """One request naming 1,000 namespaces made 1,000 sequential GETs and 1,000 warning lines."""
    client, fake, metrics = roomy
    resp = await client.post(intake.PATH, json=payload(*_spread(1000)), headers=AUTH)
    assert resp.status == 413 and await resp.json() == {"error": (
        "alerts: their namespace labels name 1000 namespaces, more than the 64 one request may name; "
        "nothing was created. Group alerts by namespace in Alertmanager's route")}  # fmt: skip
    assert fake.namespace_reads == [] and fake.writes == 0
    assert _count(metrics, "runbook_intake_rejected_total", reason="too_many_namespaces") == 1
    with pytest.raises(intake.TooManyNamespaces):
        parse_payload(payload(*_spread(3)), max_namespaces=2)
    assert len(parse_payload(payload(*_spread(64)))) == 64


async def test_namespace_labels_are_read_once_each_a_few_at_a_time_and_one_line_is_logged(
    roomy: Any, caplog: pytest.LogCaptureFixture
) -> None:
    client, fake, metrics = roomy
    in_flight, most = 0, 0
    original = fake.namespace_labels

    async def slow(name: str) -> Mapping[str, str] | None:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.02)
        in_flight -= 1
        labels: Mapping[str, str] | None = await original(name)
        return labels

    fake.namespace_labels = slow
    alerts = _spread(64) + _spread(64)[:10]  # ten namespaces named twice: still one read each
    alerts[64:] = [a | {"fingerprint": f"{i + 100:010x}bbbbbb"} for i, a in enumerate(alerts[64:])]
    resp = await client.post(intake.PATH, json=payload(*alerts), headers=AUTH)
    assert resp.status == 200 and (await resp.json())["created"] == 74
    assert sorted(fake.namespace_reads) == sorted(f"team-{i}" for i in range(64))
    assert most == intake.OPT_IN_READS  # concurrent, and bounded
    assert _count(metrics, "runbook_intake_redirected_total", reason="not_opted_in") == 74
    lines = [r.getMessage() for r in caplog.records if r.name == "runbook_operator.adapters.intake"]
    assert len(lines) == 1, lines
    assert lines[0].startswith("intake: 74 alert(s) went to namespace default: the alert names namespace team-")
    assert lines[0].endswith("and 59 more") and len(lines[0]) < 2000


# -- fuzzing: any bytes in headers or body, never a 5xx --------------------------------------------------

JSON_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3),
    max_leaves=8,
)
ALERT_FIELDS = st.fixed_dictionaries(
    {},
    optional={
        "status": st.sampled_from(["firing", "resolved"]) | JSON_VALUE,
        "labels": st.fixed_dictionaries({"alertname": st.text(max_size=30) | JSON_VALUE},
                                        optional={"namespace": st.text(max_size=70) | JSON_VALUE,
                                                  "severity": JSON_VALUE}) | JSON_VALUE,
        "annotations": st.dictionaries(st.text(max_size=10), JSON_VALUE, max_size=3) | JSON_VALUE,
        "fingerprint": st.text("0123456789abcdefABCDEF", min_size=6, max_size=66) | JSON_VALUE,
        "startsAt": st.datetimes().map(lambda d: d.isoformat() + "Z")
        | st.from_regex(r"\A\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)\Z") | JSON_VALUE,
        "generatorURL": st.text(max_size=30) | JSON_VALUE,
    },
)  # fmt: skip
BODIES = st.one_of(
    st.binary(max_size=300),
    st.builds(
        lambda alerts: json.dumps({"version": "4", "alerts": alerts}).encode(), st.lists(ALERT_FIELDS, max_size=4)
    ),
    st.builds(lambda doc: json.dumps(doc).encode(), JSON_VALUE),
)
HEADER_NAMES = st.sampled_from(
    [
        b"Authorization",
        b"Content-Type",
        b"Content-Encoding",
        b"Transfer-Encoding",
        b"Expect",
        b"Accept",
        b"X-A",
        b"Connection",
        b"Upgrade",
        b"Host",
        b"Cookie",
    ]
) | st.binary(min_size=1, max_size=20)
HEADER_VALUES = st.sampled_from(
    [
        b"Bearer tok",
        b"Bearer \xff",
        b"gzip",
        b"deflate",
        b"br",
        b"zstd",
        b"chunked",
        b"100-continue",
        b"application/json; charset=latin-1",
        b"upgrade",
        b"websocket",
    ]
) | st.binary(max_size=80)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    headers=st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=4),
    authorized=st.booleans(),
    body=BODIES,
)
def test_no_header_or_body_gets_a_5xx(headers: list[tuple[bytes, bytes]], authorized: bool, body: bytes) -> None:
    """Any bytes in headers and bodies, through the server the operator runs (intake.start), with a fake store
    that never fails: every answer is below 500 (or the connection is closed, for a request that cannot be framed)."""

    async def one() -> int | None:
        fake = FakeIncidents()
        settings = intake.Settings("127.0.0.1", 0, "tok", max_bytes=4096, header_timeout=1.0, body_timeout=1.0)
        served = await intake.start(settings, fake)
        try:
            lines = b"".join(name + b": " + value + b"\r\n" for name, value in headers)
            auth = b"Authorization: Bearer tok\r\n" if authorized else b""
            return _status(await _raw(served.port, _request(auth + lines, body), timeout=3.0))
        finally:
            await served.cleanup()

    status = asyncio.run(one())
    assert status is None or status < 500, (status, headers, body[:200])


# -- the server cannot be held open --------------------------------------------------------------------


async def test_a_half_sent_request_line_is_closed_after_the_header_timeout(serving: Any) -> None:
    """3,000 connections that sent part of a request line stayed open for ever (181 s and counting)."""
    served, _, metrics = serving
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    loop = asyncio.get_running_loop()
    started = loop.time()
    writer.write(b"POST /api/v1/alerts/alertma")
    assert await asyncio.wait_for(reader.read(), 5) == b""  # the server closed it
    assert 0.25 <= loop.time() - started < 1.5
    writer.close()
    assert _count(metrics, "runbook_intake_rejected_total", reason="header_timeout") == 1
    assert served.connections == 0


async def test_connections_over_the_limit_are_answered_503_and_closed_at_once(serving: Any) -> None:
    served, _, metrics = serving
    held = [await asyncio.open_connection("127.0.0.1", served.port) for _ in range(served.limit)]
    for _, writer in held:
        writer.write(b"GET /rea")
    await asyncio.sleep(0.05)
    assert served.connections == served.limit == 4
    loop = asyncio.get_running_loop()
    started = loop.time()
    answer = await _raw(served.port, b"", timeout=2)
    assert _status(answer) == 503 and b"too many connections" in answer and loop.time() - started < 0.2
    assert _count(metrics, "runbook_intake_rejected_total", reason="too_many_connections") == 1
    for reader, writer in held:  # and the held ones go at their deadline, which frees the places
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
    assert _status(await _raw(served.port, b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")) == 200


async def test_the_deadline_starts_again_after_each_answer_on_a_kept_alive_connection(serving: Any) -> None:
    served, _, _ = serving
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    for _ in range(3):  # each request well within the deadline, together beyond it
        writer.write(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
        assert head.startswith(b"HTTP/1.1 200 ")
        assert await reader.readexactly(3) == b"ok\n"
        await asyncio.sleep(0.15)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await asyncio.wait_for(reader.read(), 5) == b""  # idle: closed at the deadline
    assert loop.time() - started < 0.5
    writer.close()


async def test_a_body_that_does_not_arrive_in_time_is_a_408_and_the_connection_is_closed(serving: Any) -> None:
    served, fake, metrics = serving
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    writer.write(b"POST " + intake.PATH.encode() + b" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer tok\r\n"
                 b"Content-Length: 100\r\n\r\n{\"version\"")  # fmt: skip
    answer = await asyncio.wait_for(reader.read(), 5)
    assert _status(answer) == 408 and b"body: not received within 0.3 s" in answer
    writer.close()
    assert fake.writes == 0 and _count(metrics, "runbook_intake_rejected_total", reason="body_timeout") == 1


def test_the_cli_passes_the_intakes_deadlines_and_limit(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from runbook_operator.entrypoints import cli
    from runbook_operator.entrypoints.cli import run as run_command

    monkeypatch.setenv("RUNBOOK_INTAKE_TOKEN", "tok")
    args = cli.build_parser().parse_args(["run", "--intake-address=:8082", "--intake-header-timeout=500ms",
                                          "--intake-body-timeout=2s", "--intake-max-connections=9"])  # fmt: skip
    settings = run_command.intake_settings(args)
    assert (settings.header_timeout, settings.body_timeout, settings.max_connections) == (0.5, 2.0, 9)
    defaults = run_command.intake_settings(cli.build_parser().parse_args(["run", "--intake-address=:8082"]))
    assert (defaults.header_timeout, defaults.body_timeout, defaults.max_connections) == (10.0, 30.0, 256)
    for bad in ("--intake-header-timeout=0s", "--intake-max-connections=0"):
        assert (
            run_command.intake_settings(cli.build_parser().parse_args(["run", "--intake-address=:8082", bad])) is None
        )
    assert "--intake-header-timeout: must be more than 0" in capsys.readouterr().err
