"""The Alertmanager intake end to end: webhook → Incidents on a real kube-apiserver, as the operator's ServiceAccount.

Each test's namespace opts in (label remediation.ishchat.io/intake=enabled) unless the test is about one that does not.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import resource
import secrets
import selectors
import shutil
import socket
import statistics
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from runbook_lab.controlplane import free_port
from tests.e2e.conftest import SA, Kubectl, OperatorProcess, wait_for

ALERTMANAGER = "/usr/bin/prometheus-alertmanager"
OPT_IN = "remediation.ishchat.io/intake=enabled"
FALLBACK = "default"  # the session operator's --intake-namespace


@pytest.fixture
def opted_in(kubectl: Kubectl, namespace: str) -> None:
    """Label the test's namespace so the intake may create Incidents in it."""
    kubectl("label", "namespace", namespace, OPT_IN)


def alert(namespace: str, fingerprint: str, status: str = "firing", name: str = "ISHChat_RedisDown") -> dict[str, Any]:
    return {
        "status": status,
        "labels": {"alertname": name, "namespace": namespace, "severity": "critical", "service": "redis",
                   "hostile": "'; kubectl delete ns --all #"},
        "annotations": {"summary": "Redis is down", "description": "No PING reply for 2m"},
        "startsAt": "2026-11-27T09:00:00.123456789Z",
        "endsAt": "0001-01-01T00:00:00Z" if status == "firing" else "2026-11-27T09:30:00Z",
        "generatorURL": "http://prometheus:9090/graph?g0.expr=redis_up",
        "fingerprint": fingerprint,
    }  # fmt: skip


def webhook(*alerts: dict[str, Any]) -> dict[str, Any]:
    status = "firing" if any(a["status"] == "firing" for a in alerts) else "resolved"
    return {"version": "4", "groupKey": '{}:{alertname="ISHChat_RedisDown"}', "truncatedAlerts": 0, "status": status,
            "receiver": "runbook", "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {},
            "externalURL": "http://alertmanager:9093", "alerts": list(alerts)}  # fmt: skip


def post(operator: OperatorProcess, body: bytes | dict[str, Any], token: str | None = "") -> tuple[int, Any]:
    """Post to the intake with the operator's token (``token=""``), another one, or none (None)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return operator.post_alerts(data, operator.intake_token if token == "" else token)


def incidents(kubectl: Kubectl, namespace: str) -> list[dict[str, Any]]:
    return json.loads(kubectl("get", "incidents", "-n", namespace, "-o", "json").stdout)["items"]  # type: ignore[no-any-return]


def sample(text: str, series: str) -> float:
    match = re.search(rf"^{re.escape(series)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


@pytest.mark.usefixtures("opted_in")
def test_a_firing_alert_creates_one_incident_and_resolving_it_resolves_it(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    fingerprint = secrets.token_hex(8)
    episode = hashlib.sha256(b"2026-11-27T09:00:00Z").hexdigest()[:6]  # alert()'s startsAt, to the second
    name = f"ishchat-redisdown-{fingerprint[:10]}-{episode}"
    before = operator.scrape()

    assert post(operator, webhook(alert(namespace, fingerprint))) == (
        200, {"created": 1, "duplicate": 0, "resolved": 0, "unknown_resolved": 0, "not_ours": 0},
    )  # fmt: skip
    body = kubectl.get("incident", name, namespace)
    assert body["metadata"]["labels"] == {"app.kubernetes.io/created-by": "runbook-operator-intake"}
    assert body["spec"] == {
        "alert": "ISHChat_RedisDown",
        "severity": "Critical",
        "summary": "Redis is down",
        "description": "No PING reply for 2m",
        "labels": {"alertname": "ISHChat_RedisDown", "namespace": namespace, "severity": "critical",
                   "service": "redis", "hostile": "'; kubectl delete ns --all #"},
        "source": {"kind": "Alertmanager", "fingerprint": fingerprint, "startsAt": "2026-11-27T09:00:00Z",
                   "generatorURL": "http://prometheus:9090/graph?g0.expr=redis_up"},
        "approvals": [],  # the schema's default: the intake writes none
    }  # fmt: skip

    # Alertmanager re-sends firing alerts every repeat_interval: still one Incident
    assert post(operator, webhook(alert(namespace, fingerprint)))[1]["duplicate"] == 1
    assert [i["metadata"]["name"] for i in incidents(kubectl, namespace)] == [name]

    assert post(operator, webhook(alert(namespace, fingerprint, "resolved")))[1]["resolved"] == 1
    assert kubectl.get("incident", name, namespace)["spec"]["resolved"] is True

    def resolved() -> Any:
        status = kubectl.get("incident", name, namespace).get("status") or {}
        conds = {c["type"]: c["reason"] for c in status.get("conditions") or []}
        return status.get("phase") == "Resolved" and conds.get("Resolved") == "ResolvedExternally"

    wait_for(resolved, 60, f"incident {name} to be Resolved (ResolvedExternally)")

    # a resolved alert whose Incident is gone (or never was) changes nothing
    assert post(operator, webhook(alert(namespace, secrets.token_hex(8), "resolved")))[1]["unknown_resolved"] == 1
    after = operator.scrape()
    for result in ("created", "duplicate", "resolved", "unknown_resolved"):
        series = f'runbook_intake_alerts_total{{result="{result}"}}'
        assert sample(after, series) - sample(before, series) >= 1, series


@pytest.mark.parametrize("token", [None, "wrong-token", "\xff"])  # "Bearer \\xff" was a 500
@pytest.mark.usefixtures("opted_in")
def test_without_the_token_nothing_is_created(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str, token: str | None
) -> None:
    before = sample(operator.scrape(), 'runbook_intake_rejected_total{reason="unauthorized"}')
    assert post(operator, webhook(alert(namespace, secrets.token_hex(8))), token=token) == (
        401, {"error": "missing or wrong bearer token"},
    )  # fmt: skip
    assert incidents(kubectl, namespace) == []
    assert sample(operator.scrape(), 'runbook_intake_rejected_total{reason="unauthorized"}') == before + 1


@pytest.mark.usefixtures("opted_in")
def test_an_oversize_body_is_refused(kubectl: Kubectl, operator: OperatorProcess, namespace: str) -> None:
    before = sample(operator.scrape(), 'runbook_intake_rejected_total{reason="too_large"}')
    big = webhook(alert(namespace, secrets.token_hex(8)))
    big["commonAnnotations"] = {"padding": "x" * (1024 * 1024)}
    assert post(operator, big) == (413, {"error": "body: larger than 1048576 bytes"})
    assert incidents(kubectl, namespace) == []
    assert sample(operator.scrape(), 'runbook_intake_rejected_total{reason="too_large"}') == before + 1


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (
            b'{"version": "4", "alerts": [{"status": "firing", "labels"',
            "body: not valid JSON: Expecting ':' delimiter: line 1 column 58 (char 57)",
        ),
        ("partial", "alerts[1].labels.alertname: required"),
        ("bad-fingerprint", "alerts[1].fingerprint: must be 8 to 64 hex digits"),
        # an OverflowError (500) that lost the valid alert with it: now the batch is refused whole, with a 400
        ("far-future-start", "alerts[1].startsAt: not an RFC 3339 time"),
        (json.dumps({"version": "3", "alerts": []}).encode(), 'version: must be "4", got "3"'),
        # these two were 500s: a RecursionError in the JSON parser, and int()'s 4,300-digit limit
        (b"[" * 10_000 + b"]" * 10_000, "body: nested deeper than 32 levels"),
        (b'{"version": "4", "truncatedAlerts": ' + b"7" * 5000 + b', "alerts": []}',
         "body: a number of 5000 characters, more than 32"),
    ],
)  # fmt: skip
@pytest.mark.usefixtures("opted_in")
def test_malformed_payloads_are_refused_and_nothing_is_created(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str, body: bytes | str, error: str
) -> None:
    before = sample(operator.scrape(), 'runbook_intake_rejected_total{reason="malformed"}')
    if body == "partial":  # the first alert is fine, the second has no alertname: neither is created
        second = alert(namespace, secrets.token_hex(8))
        del second["labels"]["alertname"]
        body = json.dumps(webhook(alert(namespace, secrets.token_hex(8)), second)).encode()
    elif body == "bad-fingerprint":
        body = json.dumps(webhook(alert(namespace, secrets.token_hex(8)), alert(namespace, "../../etc"))).encode()
    elif body == "far-future-start":
        late = alert(namespace, secrets.token_hex(8)) | {"startsAt": "9999-12-31T23:59:59-23:59"}
        body = json.dumps(webhook(alert(namespace, secrets.token_hex(8)), late)).encode()
    assert isinstance(body, bytes)
    assert post(operator, body) == (400, {"error": error})
    assert incidents(kubectl, namespace) == []
    assert sample(operator.scrape(), 'runbook_intake_rejected_total{reason="malformed"}') == before + 1


@pytest.mark.usefixtures("opted_in")
def test_a_request_with_more_alerts_than_the_limit_creates_nothing(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    before = sample(operator.scrape(), 'runbook_intake_rejected_total{reason="too_many_alerts"}')
    body = json.dumps(webhook(*(alert(namespace, secrets.token_hex(8)) for _ in range(1001)))).encode()
    assert post(operator, body) == (413, {"error": (
        "alerts: 1001 in one request, more than the 1000 the intake takes (--intake-max-alerts); "
        "nothing was created. Set max_alerts in Alertmanager's webhook_config")})  # fmt: skip
    assert incidents(kubectl, namespace) == []
    assert sample(operator.scrape(), 'runbook_intake_rejected_total{reason="too_many_alerts"}') == before + 1


def test_an_alert_naming_kube_system_lands_in_the_intake_namespace(kubectl: Kubectl, operator: OperatorProcess) -> None:
    before = sample(operator.scrape(), 'runbook_intake_redirected_total{reason="not_opted_in"}')
    fingerprint = secrets.token_hex(8)
    assert post(operator, webhook(alert("kube-system", fingerprint)))[0] == 200
    assert [i for i in incidents(kubectl, "kube-system") if fingerprint[:10] in i["metadata"]["name"]] == []
    (body,) = [i for i in incidents(kubectl, FALLBACK) if fingerprint[:10] in i["metadata"]["name"]]
    assert body["metadata"]["annotations"]["remediation.ishchat.io/intake-redirected"] == (
        "the alert names namespace kube-system, which has not opted in to the intake: "
        "label it remediation.ishchat.io/intake=enabled (or add --intake-namespaces=kube-system)"
    )
    assert body["spec"]["labels"]["namespace"] == "kube-system"  # what the alert said is kept, as data
    assert sample(operator.scrape(), 'runbook_intake_redirected_total{reason="not_opted_in"}') == before + 1
    assert "went to namespace default: the alert names namespace kube-system" in operator.log.read_text()
    kubectl("delete", "incident", body["metadata"]["name"], "-n", FALLBACK)


def test_only_the_labelled_namespace_receives_its_incident(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str, other_namespace: str
) -> None:
    kubectl("label", "namespace", namespace, OPT_IN)
    mine, theirs = secrets.token_hex(8), secrets.token_hex(8)
    answer = post(operator, webhook(alert(namespace, mine), alert(other_namespace, theirs)))
    assert answer == (200, {"created": 2, "duplicate": 0, "resolved": 0, "unknown_resolved": 0, "not_ours": 0})
    assert [i["spec"]["source"]["fingerprint"] for i in incidents(kubectl, namespace)] == [mine]
    assert incidents(kubectl, other_namespace) == []
    (redirected,) = [i for i in incidents(kubectl, FALLBACK) if i["spec"]["source"]["fingerprint"] == theirs]
    # the resolved notification finds each Incident where its firing put it
    assert post(operator, webhook(alert(namespace, mine, "resolved"), alert(other_namespace, theirs, "resolved"))) == (
        200, {"created": 0, "duplicate": 0, "resolved": 2, "unknown_resolved": 0, "not_ours": 0},
    )  # fmt: skip
    kubectl("delete", "incident", redirected["metadata"]["name"], "-n", FALLBACK)


def test_the_intake_may_read_namespaces_but_not_list_them(kubectl: Kubectl) -> None:
    def can(verb: str) -> str:
        return kubectl("auth", "can-i", verb, "namespaces", "--as", SA, check=False).stdout.strip()

    assert (can("get"), can("list"), can("watch"), can("patch")) == ("yes", "no", "no", "no")


@pytest.mark.skipif(shutil.which(ALERTMANAGER) is None, reason="needs Debian's prometheus-alertmanager")
@pytest.mark.usefixtures("opted_in")
def test_a_real_alertmanager_fires_and_resolves_an_incident(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str, tmp_path: Path
) -> None:
    port = free_port()
    config = {
        "route": {"receiver": "runbook", "group_by": ["alertname", "namespace"],
                  "group_wait": "1s", "group_interval": "1s", "repeat_interval": "1h"},
        "receivers": [{"name": "runbook", "webhook_configs": [{
            "url": operator.intake_url, "send_resolved": True,
            "http_config": {"authorization": {"credentials": operator.intake_token}}}]}],
    }  # fmt: skip
    (tmp_path / "alertmanager.yml").write_text(yaml.safe_dump(config))
    log = (tmp_path / "alertmanager.log").open("wb")
    proc = subprocess.Popen(
        [ALERTMANAGER, f"--config.file={tmp_path / 'alertmanager.yml'}", f"--storage.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    api = f"http://127.0.0.1:{port}/api/v2"

    def push(**extra: str) -> bool:
        doc = [{"labels": {"alertname": "RealAlertmanagerTest", "namespace": namespace, "severity": "warning"},
                "annotations": {"summary": "pushed by the e2e test"}, "generatorURL": "http://prometheus/graph"} | extra]  # fmt: skip
        request = urllib.request.Request(
            f"{api}/alerts", data=json.dumps(doc).encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status == 200  # type: ignore[no-any-return]

    try:
        wait_for(push, 30, "alertmanager to take an alert", ignoring=(OSError,))
        (body,) = wait_for(lambda: incidents(kubectl, namespace), 30, "alertmanager's webhook to create the incident")
        fingerprint = body["spec"]["source"]["fingerprint"]
        episode = hashlib.sha256(body["spec"]["source"]["startsAt"].encode()).hexdigest()[:6]
        assert body["metadata"]["name"] == f"realalertmanagertest-{fingerprint[:10]}-{episode}"
        assert body["spec"]["alert"] == "RealAlertmanagerTest" and body["spec"]["severity"] == "Medium"
        assert body["spec"]["summary"] == "pushed by the e2e test"
        assert body["spec"]["source"]["generatorURL"] == "http://prometheus/graph"

        push(endsAt=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
        name = body["metadata"]["name"]
        wait_for(lambda: kubectl.get("incident", name, namespace)["spec"].get("resolved") is True, 30,
                 "the resolved notification to set spec.resolved")  # fmt: skip
        assert len(incidents(kubectl, namespace)) == 1
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


# -- issue 22: the intake acts only on what it created; it cannot be held open -----------------------


@pytest.mark.usefixtures("opted_in")
def test_a_resolved_alert_leaves_a_person_created_incident_of_the_same_name_alone(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    """`payments-0123456789abcdef`, created by a person, was ResolvedExternally (then deleted by the TTL)
    by any resolved alert whose name and fingerprint give that name."""
    fingerprint = secrets.token_hex(8)
    name = f"payments-{fingerprint}"  # the intake's name for alert Payments without startsAt
    kubectl.apply({"apiVersion": "remediation.ishchat.io/v1alpha1", "kind": "Incident",
                   "metadata": {"name": name, "namespace": namespace},
                   "spec": {"alert": "Payments", "source": {"kind": "Alertmanager", "fingerprint": fingerprint}}})  # fmt: skip
    phase = wait_for(lambda: (kubectl.get("incident", name, namespace).get("status") or {}).get("phase"), 60,
                     f"incident {name} to get a phase")  # fmt: skip
    before = sample(operator.scrape(), 'runbook_intake_alerts_total{result="not_ours"}')
    resolved = alert(namespace, fingerprint, "resolved", name="Payments")
    del resolved["startsAt"]
    assert post(operator, webhook(resolved)) == (
        200, {"created": 0, "duplicate": 0, "resolved": 0, "unknown_resolved": 0, "not_ours": 1},
    )  # fmt: skip
    assert sample(operator.scrape(), 'runbook_intake_alerts_total{result="not_ours"}') == before + 1
    assert f"left alone: incident {namespace}/{name} was not created by the intake" in operator.log.read_text()
    time.sleep(2)  # what the operator would have done with spec.resolved, it would have done by now
    body = kubectl.get("incident", name, namespace)
    assert "resolved" not in body["spec"]
    reasons = {c["type"]: c["reason"] for c in (body.get("status") or {}).get("conditions") or []}
    assert reasons.get("Resolved") != "ResolvedExternally" and body["status"]["phase"] == phase, body["status"]

    # the same alert, fired and resolved through the intake, resolves the Incident the intake made
    firing = alert(namespace, fingerprint, name="Payments")
    assert post(operator, webhook(firing))[1]["created"] == 1
    (made,) = [i for i in incidents(kubectl, namespace) if i["metadata"]["name"] != name]
    assert made["metadata"]["labels"] == {"app.kubernetes.io/created-by": "runbook-operator-intake"}
    assert post(operator, webhook(alert(namespace, fingerprint, "resolved", name="Payments")))[1]["resolved"] == 1
    assert kubectl.get("incident", made["metadata"]["name"], namespace)["spec"]["resolved"] is True


HALF_OPEN = 3000  # the red team's count
DEADLINE = 5.0  # --intake-header-timeout for the test (10 s by default)
HALF_A_REQUEST_LINE = b"POST /api/v1/alerts/alertmanager HT"


@pytest.fixture
def starved_operator(operator: OperatorProcess, operator_kubeconfig: Path, tmp_path: Path) -> Iterator[OperatorProcess]:
    """An operator under `prlimit --nofile=1024` (soft and hard, as a container's: raising the soft
    limit gains nothing) with a short header deadline. The session's operator is stopped meanwhile,
    so whatever the Incident below gets is this one's doing; it is started again after."""
    operator.stop()
    starved = OperatorProcess(
        operator_kubeconfig, tmp_path / "operator.log", f"--intake-header-timeout={DEADLINE:g}s",
        "--intake-body-timeout=5s", launcher=("prlimit", "--nofile=1024"),
    )  # fmt: skip
    try:
        starved.start()
        yield starved
    finally:
        starved.stop()
        operator.start()


class HalfOpen(threading.Thread):
    """``n`` connections to ``port``, one after the other, each sending part of a request line and
    then nothing; meanwhile, and after, notes when the server closes each (FIN or RST, with or
    without its 503 first), in seconds from its opening."""

    def __init__(self, port: int, n: int) -> None:
        super().__init__(daemon=True)
        self.port, self.n = port, n
        self.opened: dict[socket.socket, float] = {}
        self.closed_after: dict[socket.socket, float] = {}
        self.error: BaseException | None = None
        self._halt = threading.Event()
        self._selector = selectors.DefaultSelector()

    def run(self) -> None:
        try:
            for _ in range(self.n):
                if self._halt.is_set():
                    return
                sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
                self.opened[sock] = time.monotonic()
                with contextlib.suppress(OSError):  # one refused at once may be reset already
                    sock.sendall(HALF_A_REQUEST_LINE)
                sock.setblocking(False)
                self._selector.register(sock, selectors.EVENT_READ)
                self._harvest(0)
            while len(self.closed_after) < self.n and not self._halt.is_set():
                self._harvest(0.1)
        except BaseException as err:  # the test reports it
            self.error = err

    def _harvest(self, timeout: float) -> None:
        for key, _ in self._selector.select(timeout):
            conn = key.fileobj
            assert isinstance(conn, socket.socket)
            try:
                if conn.recv(4096):  # the 503 of a connection over the limit: its close follows
                    continue
            except BlockingIOError:
                continue
            except OSError:  # reset: closed as well
                pass
            self.closed_after[conn] = time.monotonic() - self.opened[conn]
            self._selector.unregister(conn)

    def close(self) -> None:
        self._halt.set()
        self.join()
        self._selector.close()
        for sock in self.opened:
            sock.close()


def _healthz(operator: OperatorProcess) -> float:
    """Seconds Kopf's liveness endpoint took to answer 200; inf when it did not within 1 s."""
    started = time.monotonic()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{operator.port}/healthz", timeout=1) as resp:
            return time.monotonic() - started if resp.status == 200 else float("inf")
    except OSError:
        return float("inf")


def test_3000_half_open_connections_neither_stay_open_nor_starve_the_operator(
    kubectl: Kubectl, starved_operator: OperatorProcess, namespace: str
) -> None:
    """3,000 connections that sent part of a request line stayed open (181 s and counting); with a
    container's 1,024 files the operator ran out: status writes failed, a new Incident never got a
    phase, /healthz stopped answering. Now the intake holds at most a quarter of the files, each for
    the header deadline, and refuses the rest at once; the operator goes on as if nothing happened."""
    op = starved_operator
    assert op.proc is not None
    limits = Path(f"/proc/{op.proc.pid}/limits").read_text()
    assert re.search(r"^Max open files\s+1024\s+1024\s", limits, re.MULTILINE), limits
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = HALF_OPEN + 500  # this test's own sockets
    if soft != resource.RLIM_INFINITY and soft < need:
        assert hard == resource.RLIM_INFINITY or hard >= need, f"this test needs {need} open files; hard limit {hard}"
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    before = op.scrape()
    flood = HalfOpen(op.intake_port, HALF_OPEN)
    latencies: list[float] = []
    files: list[int] = []
    phase_after: float | None = None

    def phase() -> str | None:
        status = kubectl.get("incident", "during-the-flood", namespace).get("status") or {}
        return status.get("phase")

    try:
        started = time.monotonic()
        flood.start()
        wait_for(lambda: len(flood.opened) >= 500 or flood.error, 30, "500 half-open connections")
        kubectl.apply({"apiVersion": "remediation.ishchat.io/v1alpha1", "kind": "Incident",
                       "metadata": {"name": "during-the-flood", "namespace": namespace},
                       "spec": {"alert": "DuringTheFlood"}})  # fmt: skip
        applied = time.monotonic()
        while flood.is_alive() and time.monotonic() - started < 90:  # the attack, from first to last close
            latencies.append(_healthz(op))
            files.append(len(os.listdir(f"/proc/{op.proc.pid}/fd")))
            if phase_after is None and phase():
                phase_after = time.monotonic() - applied
            time.sleep(0.1)
        lasted = time.monotonic() - started
        assert flood.error is None, flood.error
        closes = sorted(flood.closed_after.values())
        held = [t for t in closes if t >= DEADLINE - 0.3]  # the rest were refused at once (503)
        print(f"\n{HALF_OPEN} half-open connections, all closed by the server {lasted:.1f} s after the first: "
              f"{len(held)} held {min(held, default=0):.2f}-{max(held, default=0):.2f} s (deadline {DEADLINE:g} s), {len(closes) - len(held)} "
              f"refused at once; /healthz {len(latencies)} probes: median {statistics.median(latencies) * 1000:.1f} ms, "
              f"max {max(latencies) * 1000:.1f} ms; the operator's open files at most {max(files)} of 1024; "
              f"the new Incident's phase after {phase_after} s")  # fmt: skip
        assert len(closes) == HALF_OPEN  # every one of them, by the server
        assert held and closes[-1] <= DEADLINE + 3, closes[-3:]  # none outlives the deadline
        assert len(held) <= 256 * (1 + lasted / DEADLINE)  # 256 at a time, at most
        assert max(latencies) < 1.0, sorted(latencies)[-5:]
        assert max(files) < 1024 - 256, max(files)
        assert phase_after is not None and phase_after < 15, phase_after
    finally:
        flood.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    after = op.scrape()
    closed = {r: sample(after, f'runbook_intake_rejected_total{{reason="{r}"}}')
              - sample(before, f'runbook_intake_rejected_total{{reason="{r}"}}')
              for r in ("too_many_connections", "header_timeout")}  # fmt: skip
    assert sum(closed.values()) == HALF_OPEN, closed
    # and the intake takes alerts again once they are gone
    assert post(op, webhook(alert(namespace, secrets.token_hex(8))))[0] == 200
