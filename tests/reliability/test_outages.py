"""Dependencies down (a closed port) or hanging (a port that accepts and never answers), through the real operator.

One incident per (dependency, failure) pair, all at once, plus a healthy incident alongside:
each failing step fails within its timeout with a message that says what happened, is
retried as configured, the incident escalates and its on-call webhook is called once;
the healthy incident resolves as if nothing else were going on; the operator's liveness
endpoint answers throughout; the Secret values the steps read appear nowhere.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from runbook_lab.demo import DemoService
from runbook_operator.actions.api import CONSENT_ANNOTATION
from tests.fixtures.cluster import ROOT, Kubectl
from tests.fixtures.common import silent, wait_for
from tests.fixtures.operator import OperatorProcess
from tests.reliability.conftest import GateServer, conditions, incident, log_errors, policy, record, statuses, step

TIMEOUT, RETRIES, BACKOFF = 2.0, 1, 0.2
PG_PASSWORD, REDIS_PASSWORD, HOOK_TOKEN = "pg-outage-5e1f0c", "rd-outage-77a2b9", "hook-outage-c0ffee42"
REFUSED = re.compile(r"refused|connect", re.IGNORECASE)
TIMED_OUT = re.compile(r"timed out|no answer", re.IGNORECASE)  # the executor's words, or the action's own


@pytest.fixture
def silent_unix_socket() -> Iterator[str]:
    """A Docker engine socket that accepts connections and never answers."""
    workdir = Path(tempfile.mkdtemp(prefix="rel-sock-"))
    path = workdir / "docker.sock"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    with silent(sock):
        yield f"unix://{path}"
    path.unlink()
    workdir.rmdir()


def _secret(name: str, namespace: str, **data: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "namespace": namespace, "annotations": {CONSENT_ANNOTATION: "*"}},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}  # fmt: skip


def _seconds(record: dict[str, Any]) -> float:
    start, end = (datetime.fromisoformat(record[k].replace("Z", "+00:00")) for k in ("startedAt", "finishedAt"))
    return (end - start).total_seconds()


def test_every_dependency_down_or_hanging_fails_in_time_and_escalates_while_others_resolve(
    kubectl: Kubectl,
    operator: OperatorProcess,
    namespace: str,
    gates: GateServer,
    demo: DemoService,
    silent_port: int,
    closed_port: int,
    silent_unix_socket: str,
) -> None:
    kubectl("apply", "-n", namespace, "-k", str(ROOT / "manifests/namespace-access"))  # lets the steps read Secrets
    kubectl.apply(
        _secret("pg", namespace, password=PG_PASSWORD),
        _secret("redis", namespace, password=REDIS_PASSWORD),
        _secret("hook", namespace, url=f"http://127.0.0.1:{silent_port}/hooks/{HOOK_TOKEN}"),
        _secret("hook-down", namespace, url=f"http://127.0.0.1:{closed_port}/hooks/{HOOK_TOKEN}"),
    )
    pg = {"dbname": "app", "user": "runbook", "passwordSecretRef": {"name": "pg", "key": "password"}}
    rd = {"passwordSecretRef": {"name": "redis", "key": "password"}}
    loopback = "127.0.0.1"
    cases: dict[str, tuple[str, dict[str, Any], re.Pattern[str]]] = {
        "pg-down": ("postgres.ping", {"host": loopback, "port": closed_port, **pg}, REFUSED),
        "pg-hang": ("postgres.ping", {"host": loopback, "port": silent_port, **pg}, TIMED_OUT),
        "redis-down": ("redis.ping", {"host": loopback, "port": closed_port, **rd}, REFUSED),
        "redis-hang": ("redis.ping", {"host": loopback, "port": silent_port, **rd}, TIMED_OUT),
        "prom-down": ("prometheus.query", {"url": f"http://{loopback}:{closed_port}", "query": "up"}, REFUSED),
        "prom-hang": ("prometheus.query", {"url": f"http://{loopback}:{silent_port}", "query": "up"}, TIMED_OUT),
        "docker-down": ("docker.status", {"host": f"tcp://{loopback}:{closed_port}", "container": "redis"}, REFUSED),
        "docker-hang": ("docker.status", {"host": silent_unix_socket, "container": "redis"}, TIMED_OUT),
        "hook-down": ("notify.webhook", {"urlSecretRef": {"name": "hook-down", "key": "url"}}, REFUSED),
        "hook-hang": ("notify.webhook", {"urlSecretRef": {"name": "hook", "key": "url"}}, TIMED_OUT),
    }
    bounds = {"timeout": f"{int(TIMEOUT * 1000)}ms", "retries": RETRIES, "backoff": f"{int(BACKOFF * 1000)}ms"}
    on_call = {"levels": [{"name": "on-call", "notify": [
        step("page", "notify.webhook", **{"with": {"url": f"{gates.url}/gate/NAME", "format": "json"}})]}]}  # fmt: skip
    docs = []
    for name, (action, params, _) in cases.items():
        escalate = json.loads(json.dumps(on_call).replace("NAME", name))
        docs.append(policy(name, namespace, remediate=[step("fix", action, **bounds, **{"with": params})],
                           limits={"maxAttempts": 1}, escalate=escalate))  # fmt: skip
    healthy = policy("healthy", namespace,
        remediate=[step("restart", "http.request", **{"with": {"url": f"{demo.url}/admin/restart", "expectStatus": 202}})],
        verify=[step("healthy-again", "http.check", retries=10, backoff="300ms", **{"with": {"url": f"{demo.url}/health"}})])  # fmt: skip
    kubectl.apply(*docs, healthy)

    liveness: list[bool] = []
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.is_set():
            liveness.append(operator.alive())
            time.sleep(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    log_start = operator.log.stat().st_size
    started = time.monotonic()
    kubectl.apply(*(incident(name, namespace, name) for name in [*cases, "healthy"]))
    try:
        wait_for(
            lambda: statuses(kubectl, namespace).get("healthy", {}).get("phase") == "Resolved", 60, "the healthy one"
        )
        healthy_after = time.monotonic() - started
        wait_for(
            lambda: (
                all(statuses(kubectl, namespace).get(n, {}).get("phase") == "Escalated" for n in cases)
                and all(gates.calls[f"/gate/{n}"] == 1 for n in cases)
            ),
            60,
            "every outage incident to escalate and page on-call",
        )
        all_after = time.monotonic() - started
    finally:
        sampling.set()
        sampler.join()

    now = statuses(kubectl, namespace)
    limit = TIMEOUT * (RETRIES + 1) + BACKOFF * RETRIES
    for name, (_, _, expected) in cases.items():
        fix = record(now[name], "fix")
        assert fix["state"] == "Failed", (name, fix)
        assert expected.search(fix["message"]), (name, fix["message"])
        assert f"(after {RETRIES + 1} tries)" in fix["message"], (name, fix["message"])
        assert _seconds(fix) <= limit + 2, (name, _seconds(fix), fix)  # status times are to the second
        assert conditions(now[name])["Escalated"] == ("True", "RemediationExhausted"), name
        reasons = [e["reason"] for e in kubectl.events(name, namespace)]
        assert "StepFailed" in reasons and reasons.count("EscalationLevelReached") == 1, (name, reasons)
    assert conditions(now["healthy"])["Resolved"] == ("True", "Verified") and demo.restarts == 1
    assert healthy_after < 15, f"the healthy incident took {healthy_after:.1f}s next to ten outages"
    assert all(liveness) and len(liveness) >= 4, liveness
    assert operator.alive()

    log = operator.log.read_bytes()[log_start:].decode(errors="replace")
    places = {"status": json.dumps(now), "events": json.dumps([kubectl.events(n, namespace) for n in cases]),
              "notifications": json.dumps(gates.bodies), "operator log": log}  # fmt: skip
    for place, text in places.items():
        for secret in (PG_PASSWORD, REDIS_PASSWORD, HOOK_TOKEN):
            assert secret not in text, f"{secret} leaked into {place}"
    assert log_errors(log) == []
    print(f"healthy resolved after {healthy_after:.1f}s; all ten outages escalated after {all_after:.1f}s")
    for name in cases:
        print(f"  {name}: {record(now[name], 'fix')['message']}")


async def test_a_webhook_receiver_that_is_down_is_reported_as_down_within_the_step_timeout(closed_port: int) -> None:
    """Found by the test above: the default 3 tries 1s apart outlived a 2s step, and the step said only
    "timed out". The action now stops before a try that would start after the step's timeout."""
    from runbook_operator.actions import ActionContext
    from tests.unit.builders import REGISTRY

    params = REGISTRY.parse("notify.webhook", {"url": f"http://127.0.0.1:{closed_port}/hooks/x"})
    started = time.monotonic()
    result = await asyncio.wait_for(  # as the executor bounds every step
        REGISTRY.get("notify.webhook").run(params, ActionContext("ns", "inc", timeout=TIMEOUT)), TIMEOUT
    )
    assert time.monotonic() - started < TIMEOUT
    assert not result.ok
    assert result.message == "webhook at 127.0.0.1: ConnectError (2 of 3 tries before the step's timeout)"
