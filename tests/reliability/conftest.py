"""The reliability suite (issue 7): crashes, API-server restarts, dependency outages, bad input, load, security.

Everything runs against real processes: the session's control plane and operator
(tests/fixtures/operator.py), plus a GateServer this module serves, whose endpoints
can be held shut so that the test decides exactly when a step is mid-flight.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from runbook_lab.served import QuietHandler, Served
from tests.fixtures.cluster import Kubectl
from tests.fixtures.operator import OperatorProcess

API = "remediation.ishchat.io/v1alpha1"
TERMINAL = ("Resolved", "Escalated")


class GateServer(Served):
    """An HTTP endpoint that counts every call by path and answers as told.

    ``/gate/NAME[/...]``: 200, but while the gate NAME is shut the call blocks until it opens;
    ``/done/NAME``: 200 once a ``/gate/NAME`` call has finished (its effect happened), else 503;
    ``/fail/NAME``: 500. Any method; JSON bodies are kept per path.
    """

    def __init__(self, host: str = "127.0.0.1") -> None:
        """``host``: where it listens (the real node's pods reach the host at its bridge address)."""
        self.calls: Counter[str] = Counter()
        self.bodies: dict[str, list[Any]] = {}
        self.waiting: Counter[str] = Counter()
        self._shut: dict[str, threading.Event] = {}
        self._done: set[str] = set()
        self._lock = threading.Lock()
        super().__init__(self._handler(), host, poll=0.05, backlog=128)

    def shut(self, name: str) -> None:
        self._shut[name] = threading.Event()

    def open(self, name: str) -> None:
        self._shut.pop(name).set()

    def open_all(self) -> None:
        for name in list(self._shut):
            self.open(name)

    def _handle(self, method: str, path: str, body: Any) -> int:
        with self._lock:
            self.calls[path] += 1
            self.bodies.setdefault(path, []).append(body)
        kind, _, rest = path.strip("/").partition("/")
        name = rest.split("/")[0]  # /gate/NAME/more/path is gate NAME too
        if kind == "gate":
            gate = self._shut.get(name)
            if gate is not None:
                with self._lock:
                    self.waiting[name] += 1
                gate.wait(120)
                with self._lock:
                    self.waiting[name] -= 1
            with self._lock:
                self._done.add(name)
            return 200
        if kind == "done":
            return 200 if name in self._done else 503
        if kind == "fail":
            return 500
        return 404

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        gate = self

        class Handler(QuietHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = raw.decode(errors="replace")
                code = gate._handle(self.command, self.path.split("?")[0], body)
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"{}")
                except OSError:  # the caller was killed meanwhile
                    pass

            do_GET = do_POST = do_PUT = _serve

        return Handler

    def stop(self) -> None:
        self.open_all()
        super().stop()


@pytest.fixture
def gates() -> Iterator[GateServer]:
    server = GateServer().start()
    yield server
    server.stop()


def policy(name: str, namespace: str, **spec: Any) -> dict[str, Any]:
    body = {"match": {"alerts": [f"Alert-{name}"]}, "settle": "0s"} | spec
    return {"apiVersion": API, "kind": "RemediationPolicy", "metadata": {"name": name, "namespace": namespace},
            "spec": body}  # fmt: skip


def incident(name: str, namespace: str, policy_name: str | None = None, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"alert": f"Alert-{policy_name or name}"}
    if policy_name:
        body["policyRef"] = {"name": policy_name}
    return {"apiVersion": API, "kind": "Incident", "metadata": {"name": name, "namespace": namespace},
            "spec": body | spec}  # fmt: skip


def step(name: str, action: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "action": action, **fields}


def statuses(kubectl: Kubectl, namespace: str) -> dict[str, dict[str, Any]]:
    items = json.loads(kubectl("get", "incidents", "-n", namespace, "-o", "json").stdout)["items"]
    return {i["metadata"]["name"]: i.get("status") or {} for i in items}


def record(status: dict[str, Any], name: str, attempt: int = 1) -> dict[str, Any]:
    return next(s for s in status["steps"] if s["name"] == name and s["attempt"] == attempt)


def conditions(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status.get("conditions", [])}


def policy_ready(kubectl: Kubectl, name: str, namespace: str) -> dict[str, Any] | None:
    """A RemediationPolicy's Ready condition, once the operator has judged it."""
    found = kubectl.get("rpol", name, namespace).get("status", {}).get("conditions", [])
    return next((c for c in found if c["type"] == "Ready"), None)


def log_errors(text: str) -> list[str]:
    """Lines of a JSON operator log at ERROR or worse, or any traceback."""
    bad = []
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            if "Traceback" in line:
                bad.append(line)
            continue
        level = str(entry.get("severity") or entry.get("level") or "").lower()
        if level in ("error", "critical", "fatal") or "Traceback" in line:
            bad.append(line[:500])
    return bad


# -- replicas: operators as processes, for the HA and budget tests --------------------------------
LEASE = ("runbook-operator", "runbook-operator")  # namespace, name: the Deployment's
ELECT = ("--leader-elect", f"--leader-elect-namespace={LEASE[0]}")


class Replicas:
    """Operator processes under the operator's ServiceAccount, each named by POD_NAME."""

    def __init__(self, kubeconfig: Path, logs: Path, *args: str) -> None:
        self.kubeconfig, self.logs, self.args = kubeconfig, logs, args
        self.running: dict[str, OperatorProcess] = {}
        self._started = 0

    def start(self) -> OperatorProcess:
        self._started += 1
        name = f"replica-{self._started}"
        op = OperatorProcess(self.kubeconfig, self.logs / f"{name}.log", *self.args, env={"POD_NAME": name})
        op.start()
        self.running[name] = op
        return op

    def name_of(self, identity: str) -> str:
        return identity.rsplit("_", 1)[0]

    def stop_all(self) -> None:
        for op in self.running.values():
            op.stop()
        self.running.clear()


def holder(kubectl: Kubectl) -> str:
    done = kubectl("get", "lease", LEASE[1], "-n", LEASE[0], "-o", "json", check=False)
    if done.returncode != 0:
        return ""
    return str(json.loads(done.stdout)["spec"].get("holderIdentity") or "")


@pytest.fixture
def replicas(
    kubectl: Kubectl,
    operator: OperatorProcess,
    operator_kubeconfig: Path,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> Iterator[Replicas]:
    """Stop the session operator, start none yet (the test says how), and put things back after."""
    elect = getattr(request, "param", True)
    operator.stop()
    kubectl("delete", "lease", LEASE[1], "-n", LEASE[0], "--ignore-not-found")
    group = Replicas(operator_kubeconfig, tmp_path, *(ELECT if elect else ()))
    try:
        yield group
    finally:
        group.stop_all()
        operator.start()
