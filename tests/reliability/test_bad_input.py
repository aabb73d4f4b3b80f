"""Bad input: generated Incidents and RemediationPolicies, hostile incident text, fuzzed Alertmanager webhooks.

* Documents are built with a known verdict (each field valid, or broken in a way that names
  its field) and sent through the API server's dry run (the CRD schema and its CEL rules)
  and through ``runbook-operator validate``: every invalid one is rejected naming the field,
  no valid one is rejected; for policies the schema accepts but the operator cannot use,
  validate rejects and the running operator marks them Ready=False.
* Hostile text in incident fields reaches actions as data: what the receiving server got is
  exactly the text, at exactly the URL the policy wrote (found: a ``..`` label in a URL
  path moved the request to another endpoint; now the step fails instead).
* Fuzzed webhooks get a 4xx, never a 5xx, and create nothing.

Hypothesis runs derandomized without an example database, so CI sees the same examples.
"""

from __future__ import annotations

import contextlib
import io
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runbook_lab.controlplane import ADMIN_USER
from runbook_operator.domain import expressions
from runbook_operator.domain.substitution import Language
from runbook_operator.entrypoints import cli
from tests.fixtures.cluster import Kubectl
from tests.fixtures.common import wait_for
from tests.fixtures.operator import OperatorProcess
from tests.reliability.conftest import (
    API,
    GateServer,
    conditions,
    incident,
    log_errors,
    policy,
    policy_ready,
    statuses,
    step,
)

GROUP, VERSION = API.split("/")
EXAMPLES = 60
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
HOSTILE = [
    "{{ 7 * 7 }}", "{% for i in range(3) %}x{% endfor %}", "{{ incident.__class__.__mro__ }}", "${HOME}",
    "'; DROP TABLE incidents; --", "\" OR 1=1 --", "$(rm -rf /)", "`id`", "a; kill -9 1 | cat /etc/passwd &",
    "..", ".", "../../admin/failover", "x?admin=1#frag", "@evil.example.com", "%2e%2e%2fadmin", "a\r\nX-Injected: 1",
    "ünïcødé ✓ 漢字 🔥", "\u202eevil\u202c", "\x00nul", "x" * 1024, "   ", "",
]  # fmt: skip
TEXT = st.text(st.characters(blacklist_categories=["Cs"]), max_size=30)
ANY_TEXT = st.one_of(TEXT, st.sampled_from(HOSTILE[:-3]))
DATA_TEXT = ANY_TEXT.map(lambda text: text.replace("{", "("))  # a policy's own text, never a template


SEVERITIES = ["Critical", "High", "Medium", "Low"]
KINDS = ["Deployment", "StatefulSet", "Container", "Service", "Database", "Cache"]
ABSENT = object()
# each field: (valid values, invalid values); a missing `alert` is invalid, any other field may be absent
INCIDENT_FIELDS: dict[str, tuple[st.SearchStrategy[Any], st.SearchStrategy[Any]]] = {
    "alert": (st.text(st.characters(blacklist_categories=["Cs"]), min_size=1, max_size=253),
              st.one_of(st.just(ABSENT), st.just(""), st.text(min_size=254, max_size=300), st.integers())),
    "severity": (st.sampled_from(SEVERITIES), ANY_TEXT.filter(lambda s: s not in SEVERITIES)),
    "summary": (st.one_of(ANY_TEXT, st.just("s" * 1024)), st.text(min_size=1025, max_size=1100)),
    "labels": (st.dictionaries(TEXT, ANY_TEXT, max_size=5),
               st.one_of(st.dictionaries(st.from_regex(r"k[0-9]{1,3}", fullmatch=True), TEXT, min_size=65, max_size=70),
                         st.fixed_dictionaries({"service": st.integers()}), st.just({"v": "v" * 1025}))),
    "target": (st.fixed_dictionaries({"kind": st.sampled_from(KINDS), "name": st.text(min_size=1, max_size=40)}),
               st.one_of(st.fixed_dictionaries({"kind": ANY_TEXT.filter(lambda s: s not in KINDS), "name": st.just("x")}),
                         st.fixed_dictionaries({"kind": st.sampled_from(KINDS)}))),
    "dryRun": (st.booleans(), st.sampled_from(["yes", "true", 1])),
    # the admission policy: whoever sets it must be the one named (these documents are sent as the admin)
    "acknowledgedBy": (st.sampled_from(["", ADMIN_USER]), st.text(min_size=254, max_size=260)),
    # on create, approvals must be empty (the admission policy; an entry the schema accepts is in
    # tests/e2e/test_consent.py, as the admission policy speaks only when the schema has nothing to say)
    "approvals": (st.just([]),
                  st.one_of(st.just([{"step": "a", "by": "x"}, {"step": "a", "by": "y"}]), st.just([{"step": "a"}]),
                            st.just([{"step": "a", "by": "x", "round": -1}]))),
}  # fmt: skip


@st.composite
def incident_specs(draw: st.DrawFn) -> tuple[dict[str, Any], list[str]]:
    """A spec and the field paths that must be reported: about half valid, the rest with one or two bad fields."""
    broken = draw(st.one_of(st.just([]), st.lists(st.sampled_from(sorted(INCIDENT_FIELDS)), min_size=1, max_size=2,
                                                  unique=True)))  # fmt: skip
    spec: dict[str, Any] = {}
    for name, (valid, invalid) in INCIDENT_FIELDS.items():
        if name in broken:
            value = draw(invalid)
        elif name == "alert" or draw(st.booleans()):
            value = draw(valid)
        else:
            continue
        if value is not ABSENT:
            spec[name] = value
    return spec, [f"spec.{name}" for name in broken]


class Judges:
    """The two places that judge a document: the API server's dry run, and ``runbook-operator validate``."""

    def __init__(self, kubectl: Kubectl, namespace: str, workdir: Path) -> None:
        client = kubernetes.config.new_client_from_config(config_file=str(kubectl.kubeconfig))  # type: ignore[no-untyped-call]
        self.api = kubernetes.client.CustomObjectsApi(client)
        self.namespace, self.workdir = namespace, workdir
        self.counts = {"valid": 0, "invalid": 0}
        self.seconds = {"api": 0.0, "validate": 0.0}

    def api_server(self, doc: dict[str, Any], plural: str) -> str | None:
        """None when the dry run accepts the document, else the API server's message."""
        started = time.monotonic()
        try:
            self.api.create_namespaced_custom_object(GROUP, VERSION, self.namespace, plural, doc, dry_run="All")
        except kubernetes.client.ApiException as err:
            assert err.status in (400, 422), (err.status, err.body)  # never a 5xx
            return str(json.loads(err.body or "{}").get("message"))
        finally:
            self.seconds["api"] += time.monotonic() - started
        return None

    def validate(self, doc: dict[str, Any]) -> tuple[int, str]:
        path = self.workdir / "doc.yaml"
        path.write_text(yaml.safe_dump(doc, allow_unicode=True))
        out = io.StringIO()
        started = time.monotonic()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            code = cli.main(["validate", str(path)])
        self.seconds["validate"] += time.monotonic() - started
        return code, out.getvalue()


@pytest.fixture
def judges(kubectl: Kubectl, namespace: str, tmp_path: Path) -> Judges:
    return Judges(kubectl, namespace, tmp_path)


def test_generated_incidents_are_judged_alike_by_the_api_server_and_validate(judges: Judges) -> None:
    @FUZZ
    @given(incident_specs())
    def judged(case: tuple[dict[str, Any], list[str]]) -> None:
        spec, errors = case
        doc = {"apiVersion": API, "kind": "Incident", "metadata": {"name": "fuzz", "namespace": judges.namespace},
               "spec": spec}  # fmt: skip
        refused = judges.api_server(doc, "incidents")
        code, said = judges.validate(doc)
        if errors:
            judges.counts["invalid"] += 1
            assert refused is not None, f"the API server took an invalid incident ({errors}): {spec!r}"
            assert code == 1, f"validate took an invalid incident ({errors}): {said}"
            for error in errors:
                assert error in refused and error in said, (error, refused, said)
        else:
            judges.counts["valid"] += 1
            assert refused is None, f"the API server refused a valid incident: {refused}"
            assert code == 0, f"validate refused a valid incident: {said}"

    judged()
    assert judges.counts["valid"] >= 10 and judges.counts["invalid"] >= 10, judges.counts
    print(f"incidents: {judges.counts}; seconds: {judges.seconds}")


STEP_NAME = st.from_regex(r"[a-z0-9]([-a-z0-9_]{0,12}[a-z0-9])?", fullmatch=True)
DURATION = st.builds(lambda n, unit: f"{n}{unit}", st.integers(0, 999), st.sampled_from(["ms", "s", "m", "h"]))
URL = "http://127.0.0.1:1"
URL_LANGUAGE = {"url": Language.URL}


@st.composite
def policy_cases(draw: st.DrawFn) -> tuple[dict[str, Any], list[str], list[str]]:
    """A policy, the errors the schema must report, and those only the operator finds."""
    schema: list[str] = []
    operator: list[str] = []
    where = "spec.remediate[0]"
    fix: dict[str, Any] = {"name": f"r-{draw(STEP_NAME)}", "action": "http.request",
                           "with": {"url": f"{URL}/admin/restart", "json": {"service": draw(DATA_TEXT)}}}  # fmt: skip
    verify: dict[str, Any] = {"name": f"v-{draw(STEP_NAME)}", "action": "http.check", "with": {"url": f"{URL}/health"}}
    spec: dict[str, Any] = {"match": {"alerts": [draw(st.text(max_size=20))]}, "remediate": [fix], "verify": [verify]}
    broken = draw(st.sampled_from([
        "none",
        st.sampled_from(["name", "action-pattern", "timeout", "retries", "attempts", "severity", "duplicate", "selector"]),
        st.sampled_from(["action-unknown", "url-missing", "url-bad", "status-type", "when", "template", "template-root",
                         "url-host-template"]),
    ]))  # fmt: skip
    broken = broken if isinstance(broken, str) else draw(broken)  # type: ignore[arg-type]
    if draw(st.booleans()):
        fix["timeout"] = draw(DURATION)
    if draw(st.booleans()):
        fix["retries"] = draw(st.integers(0, 100))
    if draw(st.booleans()):
        spec["limits"] = {"maxAttempts": draw(st.integers(1, 10))}
    if draw(st.booleans()):
        spec["severity"] = draw(st.sampled_from(SEVERITIES))
    if draw(st.booleans()):
        fix["when"] = draw(st.sampled_from(["incident.severity == 'Critical'", "size(findings) > 0", "true"]))
    if broken == "name":
        fix["name"] = draw(st.sampled_from(["Restart", "-x", "a b", "x" * 64, "ünï"]))
        schema.append(f"{where}.name")
    elif broken == "action-pattern":
        fix["action"] = draw(st.sampled_from(["Http.Request", "http", "http..request", "http.request;rm"]))
        schema.append(f"{where}.action")
    elif broken == "timeout":
        fix["timeout"] = draw(st.sampled_from(["5", "5 seconds", "-1s", "1.5s", "{{ x }}"]))
        schema.append(f"{where}.timeout")
    elif broken == "retries":
        fix["retries"] = draw(st.sampled_from([-1, 101, 10**6]))
        schema.append(f"{where}.retries")
    elif broken == "attempts":
        spec["limits"] = {"maxAttempts": draw(st.sampled_from([0, 11, -3]))}
        schema.append("spec.limits.maxAttempts")
    elif broken == "severity":
        spec["severity"] = draw(ANY_TEXT.filter(lambda s: s not in SEVERITIES))
        schema.append("spec.severity")
    elif broken == "duplicate":
        verify["name"] = fix["name"]
        schema.append("step names must be unique across remediate and verify")
    elif broken == "selector":
        spec["match"]["labelSelector"] = {"matchExpressions": [{"key": "service", "operator": "In"}]}
        schema.append("values must be non-empty for In and NotIn")
    elif broken == "action-unknown":
        fix["action"] = draw(st.sampled_from(["http.nope", "kubernetes.deleteNamespace", "shell.exec"]))
        operator.append("unknown action")
    elif broken == "url-missing":
        del fix["with"]["url"]
        operator.append(f"{where}.with")
    elif broken == "url-bad":
        fix["with"]["url"] = draw(st.sampled_from(["ftp://x/y", "not a url", "file:///etc/passwd", ""]))
        operator.append(f"{where}.with")
    elif broken == "status-type":
        fix["with"]["expectStatus"] = draw(st.sampled_from(["abc", 99, 1000, [200]]))
        operator.append(f"{where}.with")
    elif broken == "when":
        fix["when"] = draw(st.sampled_from(["(((", "incident.", "1 +", "nosuchroot.x == 1"]))
        operator.append(f"{where}.when")
    elif broken == "template":
        fix["with"]["json"] = {"service": draw(st.sampled_from(["{{ incident.labels.x ", "{% if %}", "{{ }}"]))}
        operator.append(f"{where}.with")
    elif broken == "template-root":
        fix["with"]["json"] = {"service": "{{ os.environ }}"}
        operator.append(f"{where}.with")
    elif broken == "url-host-template":
        fix["with"]["url"] = "http://{{ incident.labels.host }}/admin/restart"
        operator.append(f"{where}.with")
    return spec, schema, operator


def test_generated_policies_are_judged_by_the_api_server_then_by_validate(judges: Judges) -> None:
    counts = {"valid": 0, "schema-invalid": 0, "operator-invalid": 0}

    @FUZZ
    @given(policy_cases())
    def judged(case: tuple[dict[str, Any], list[str], list[str]]) -> None:
        spec, schema, operator = case
        doc = {"apiVersion": API, "kind": "RemediationPolicy",
               "metadata": {"name": "fuzz", "namespace": judges.namespace}, "spec": spec}  # fmt: skip
        refused = judges.api_server(doc, "remediationpolicies")
        code, said = judges.validate(doc)
        if schema:
            counts["schema-invalid"] += 1
            assert refused is not None and all(e in refused for e in schema), (schema, refused, spec)
            assert code == 1 and all(e in said for e in schema), (schema, said)
        elif operator:
            counts["operator-invalid"] += 1
            assert refused is None, f"the schema alone cannot see this, yet refused: {refused}"
            assert code == 1 and any(e in said for e in operator), (operator, said)
        else:
            counts["valid"] += 1
            assert refused is None, f"the API server refused a valid policy: {refused}"
            assert code == 0, f"validate refused a valid policy: {said}"

    judged()
    assert min(counts.values()) >= EXAMPLES // 6, counts
    print(f"policies: {counts}; seconds: {judges.seconds}")


UNUSABLE = {
    "unknown-action": (step("fix", "shell.exec", **{"with": {"cmd": "id"}}), "spec.remediate[0].with (shell.exec): unknown action"),
    "no-url": (step("fix", "http.request", **{"with": {}}), "spec.remediate[0].with"),
    "bad-when": (step("fix", "http.request", when="(((", **{"with": {"url": f"{URL}/x"}}), "spec.remediate[0].when"),
    "bad-template": (step("fix", "http.request", **{"with": {"url": f"{URL}/x", "json": {"a": "{{ x"}}}),
                     "spec.remediate[0].with"),
    "host-template": (step("fix", "http.request", **{"with": {"url": "http://{{ incident.alert }}/x"}}),
                      "spec.remediate[0].with"),
}  # fmt: skip


def test_policies_the_schema_takes_but_the_operator_cannot_use_are_marked_not_ready(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    log_start = operator.log.stat().st_size
    kubectl.apply(*(policy(name, namespace, remediate=[s]) for name, (s, _) in UNUSABLE.items()))

    for name, (_, path) in UNUSABLE.items():
        condition = wait_for(lambda n=name: policy_ready(kubectl, n, namespace), 30, f"policy {name} judged")  # type: ignore[misc]
        assert (condition["status"], condition["reason"]) == ("False", "InvalidPolicy"), condition
        assert condition["message"].startswith(path), condition["message"]
    kubectl.apply(incident("uses-unusable", namespace, "bad-when"))
    wait_for(lambda: statuses(kubectl, namespace)["uses-unusable"].get("phase") == "Escalated", 30, "escalated")
    assert conditions(statuses(kubectl, namespace)["uses-unusable"])["Escalated"] == ("True", "InvalidPolicy")
    assert operator.alive() and log_errors(operator.log.read_bytes()[log_start:].decode(errors="replace")) == []


@FUZZ
@given(st.text(st.characters(blacklist_categories=["Cs"]), max_size=60))
def test_incident_text_fills_a_url_path_segment_or_the_step_refuses(value: str) -> None:
    """In process, with generated text: the request goes to the policy's path or nowhere."""
    import httpx

    params = {"url": "http://127.0.0.1:1/instances/{{ incident.labels.service }}/restart",
              "json": {"service": "{{ incident.labels.service }}", "summary": "{{ incident.summary }}"}}  # fmt: skip
    try:
        out = expressions.render(params, {"incident": {"labels": {"service": value}, "summary": value}}, URL_LANGUAGE)
    except ValueError as err:
        assert "segment of the URL path" in str(err), err
        assert value in (".", ".."), value  # "/" is encoded, so only a whole "." or ".." can make one
        return
    assert out["json"] == {"service": value, "summary": value}
    url = httpx.URL(out["url"])
    assert (url.host, url.port, url.query, url.fragment) == ("127.0.0.1", 1, b"", "")
    segments = url.raw_path.decode().split("/")
    assert segments[:2] == ["", "instances"] and segments[-1] == "restart" and len(segments) == 4, url
    assert urllib.parse.unquote(segments[2]) == value, (segments[2], value)  # the segment is exactly the text


def test_hostile_incident_text_reaches_the_action_as_data(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str, gates: GateServer
) -> None:
    g = gates.url
    body = {"service": "{{ incident.labels.service }}", "summary": "{{ incident.summary }}",
            "alert": "{{ incident.alert }}"}  # fmt: skip
    kubectl.apply(policy("echo", namespace,
        remediate=[step("fix", "http.request", **{"with": {"url": f"{g}/gate/seg/{{{{ incident.labels.service }}}}/x",
                                                            "json": body}})],
        verify=[step("ok", "http.check", **{"with": {"url": f"{g}/done/seg"}})], limits={"maxAttempts": 1}))  # fmt: skip
    names = {f"h{i}": text for i, text in enumerate(HOSTILE)}
    kubectl.apply(*(incident(name, namespace, "echo", alert=f"Alert {text}"[:253], summary=text,
                             labels={"service": text}) for name, text in names.items()))  # fmt: skip
    wait_for(lambda: all(s.get("phase") in ("Resolved", "Escalated") for s in statuses(kubectl, namespace).values())
             and len(statuses(kubectl, namespace)) == len(names), 60, "every hostile incident finished")  # fmt: skip
    now = statuses(kubectl, namespace)
    sent = [(path, b) for path, bodies in gates.bodies.items() if path.startswith("/gate/") for b in bodies]
    dot_segments = {name for name, text in names.items() if text in (".", "..")}
    # each incident's request carried its own text, untouched, and went where the policy said
    expected = sorted(json.dumps({"service": t, "summary": t, "alert": f"Alert {t}"[:253]}, sort_keys=True)
                      for n, t in names.items() if n not in dot_segments)  # fmt: skip
    assert sorted(json.dumps(b, sort_keys=True) for _, b in sent) == expected
    for path, b in sent:
        assert path.startswith("/gate/seg/") and path.endswith("/x") and path.count("/") == 4, path
        assert urllib.parse.unquote(path.split("/")[3]) == b["service"], (path, b["service"])
    assert not any(p.startswith(("/gate/admin", "/admin", "/x")) for p in gates.calls), dict(gates.calls)
    for name in dot_segments:  # a dot segment would have moved the request: the step refuses instead
        fix = next(s for s in now[name]["steps"] if s["name"] == "fix")
        assert fix["state"] == "Failed" and "segment of the URL path" in fix["message"], fix
    for name in set(names) - dot_segments:
        assert now[name]["phase"] == "Resolved", (name, now[name].get("timeline"))
    assert operator.alive()


def _valid_alert(namespace: str, i: int) -> dict[str, Any]:
    return {"status": "firing", "labels": {"alertname": "FuzzAlert", "namespace": namespace},
            "fingerprint": f"{i:016x}", "startsAt": "2026-11-27T09:00:00Z"}  # fmt: skip


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12,
)
BREAKS: dict[str, Any] = {
    "status": st.one_of(st.none(), JSON.filter(lambda v: v not in ("firing", "resolved"))),
    "labels": st.one_of(st.none(), JSON.filter(lambda v: not isinstance(v, dict))),
    "fingerprint": st.one_of(st.none(), TEXT.filter(lambda s: not (8 <= len(s) <= 64 and all(c in "0123456789abcdefABCDEF" for c in s))), st.integers()),
    "startsAt": TEXT.filter(lambda s: s != "" and "T" not in s),
    "generatorURL": st.one_of(st.integers(), st.lists(TEXT, max_size=2), st.booleans()),
    "alertname": st.one_of(st.none(), st.just(""), st.integers(), st.text(min_size=254, max_size=260)),
}  # fmt: skip


@st.composite
def broken_webhooks(draw: st.DrawFn, namespace: str) -> bytes:
    """A webhook that must be refused whole: garbage, a bad envelope, or one bad alert among good ones."""
    kind = draw(st.sampled_from(["bytes", "json", "version", "alerts", "alert", "alert", "alert"]))
    if kind == "bytes":
        return draw(st.binary(max_size=200).filter(lambda b: not _is_object_json(b)))
    if kind == "json":
        return json.dumps(draw(JSON.filter(lambda v: not isinstance(v, dict)))).encode()
    good = [_valid_alert(namespace, draw(st.integers(0, 2**40))) for _ in range(draw(st.integers(0, 3)))]
    payload: dict[str, Any] = {"version": "4", "status": "firing", "receiver": "runbook", "alerts": good}
    if kind == "version":
        payload["version"] = draw(st.one_of(st.none(), JSON.filter(lambda v: v != "4")))
        if payload["version"] is None:
            del payload["version"]
    elif kind == "alerts":
        payload["alerts"] = draw(st.one_of(st.none(), JSON.filter(lambda v: not isinstance(v, list))))
        if payload["alerts"] is None:
            del payload["alerts"]
    else:
        bad = _valid_alert(namespace, draw(st.integers(0, 2**40)))
        key = draw(st.sampled_from(sorted(BREAKS)))
        value = draw(BREAKS[key])
        target = bad["labels"] if key == "alertname" else bad
        if value is None:
            target.pop(key, None)
        else:
            target[key] = value
        payload["alerts"] = [*good, bad] if draw(st.booleans()) else [bad, *good]
    return json.dumps(payload).encode()


def _is_object_json(raw: bytes) -> bool:
    try:
        return isinstance(json.loads(raw), dict)
    except ValueError:
        return False


def test_fuzzed_webhooks_get_4xx_never_5xx_and_create_nothing(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    def intake_incidents() -> int:
        out = kubectl(
            "get", "incidents", "-A", "-l", "app.kubernetes.io/created-by=runbook-operator-intake", "-o", "name"
        )
        return len(out.stdout.split())

    before = intake_incidents()
    log_start = operator.log.stat().st_size
    seen: dict[int, int] = {}

    @FUZZ
    @given(broken_webhooks(namespace), st.sampled_from(["right", "right", "right", "right", "wrong", "none"]))
    def posted(raw: bytes, auth: str) -> None:
        token = {"right": operator.intake_token, "wrong": "not-the-token", "none": None}[auth]
        code, _ = operator.post_alerts(raw, token)
        seen[code] = seen.get(code, 0) + 1
        assert 400 <= code < 500, (code, raw[:300])
        if auth != "right":
            assert code == 401, code

    posted()
    assert intake_incidents() == before
    assert operator.alive() and log_errors(operator.log.read_bytes()[log_start:].decode(errors="replace")) == []
    # a good webhook still works afterwards: the refusals above were about the payloads
    good = {"version": "4", "status": "firing", "alerts": [_valid_alert(namespace, 7)]}
    assert operator.post_alerts(json.dumps(good).encode(), operator.intake_token)[0] == 200
    assert intake_incidents() == before + 1
    print(f"webhooks: {EXAMPLES} examples, answers {seen}")
