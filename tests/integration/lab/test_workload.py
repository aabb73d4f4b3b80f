"""runbook_lab.workload: an ISH Chat service as a real process in front of the lab's world.

Real processes on loopback: a world (IshChat without its service listeners, its
``world_request`` behind a small HTTP server as the lab's control server serves it) and
workload subprocesses started without site-packages, as in the lab's image (standard library only).
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import runbook_lab
from runbook_lab import ishchat, lab

LAB_SOURCES = Path(runbook_lab.__file__).resolve().parents[1]
TERM_GRACE = 5.0  # seconds a workload has to exit on SIGTERM


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _bindable(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _until(check: Callable[[], Any], what: str, timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def call(port: int, method: str, path: str, body: Any = None) -> tuple[int, str, Any]:
    """(status, content type, JSON or text) of one request to 127.0.0.1:port."""
    return call_at("127.0.0.1", port, method, path, body)


def call_at(host: str, port: int, method: str, path: str, body: Any = None) -> tuple[int, str, Any]:
    conn = http.client.HTTPConnection(host, port, timeout=5)
    try:
        data = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"} if data else {})
        answer = conn.getresponse()
        raw, content_type = answer.read().decode(), answer.getheader("Content-Type") or ""
        return answer.status, content_type, json.loads(raw) if content_type == "application/json" else raw
    finally:
        conn.close()


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


class World:
    """The simulated world and the ``/world/...`` route the lab's control server serves."""

    def __init__(self, sim: ishchat.IshChat) -> None:
        self.sim = sim
        self.state_calls = 0
        world = self

        class Handler(ishchat.JsonHandler):
            def do_GET(self) -> None:
                if self.path.endswith("/state"):
                    world.state_calls += 1
                self.reply(*ishchat.world_route(sim, "GET", self.path, None))

            def do_POST(self) -> None:
                self.reply(*ishchat.world_route(sim, "POST", self.path, self.body()))

        self.server = ishchat.Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def polls(self, more: int) -> None:
        """Wait until the workloads asked for their state ``more`` more times."""
        wanted = self.state_calls + more
        _until(lambda: self.state_calls >= wanted, f"{more} state polls")


@pytest.fixture(scope="module")
def world_host() -> str:
    """A loopback address whose exporter and service ports are all free."""
    ports = (*ishchat.EXPORTER_PORTS.values(), *ishchat.SERVICES.values())
    for x in range(200, 250):
        host = f"127.0.{x}.9"
        if all(_bindable(host, port) for port in ports):
            return host
    raise AssertionError("no loopback address with the exporter ports free")


@pytest.fixture(scope="module")
def module_world(world_host: str) -> Iterator[World]:
    addresses = dict.fromkeys(ishchat.SERVICES, world_host)  # never listened on: serve_services=False
    sim = ishchat.IshChat(addresses, world_host, serve_services=False).start()
    world = World(sim)
    yield world
    world.server.shutdown()
    world.server.server_close()
    sim.stop()


@pytest.fixture
def world(module_world: World) -> World:
    module_world.sim.clear()
    return module_world


class Workload:
    def __init__(self, service: str, world_url: str, port: int | None = None, poll: float = 0.05) -> None:
        self.service = service
        self.port, self.fault_port = port or _free_port(), _free_port()
        args = [sys.executable, "-S", "-m", "runbook_lab.workload", service, "--world", world_url]
        args += ["--host", "127.0.0.1", "--port", str(self.port), "--fault-port", str(self.fault_port)]
        args += ["--poll", str(poll)]
        env = {**os.environ, "PYTHONPATH": str(LAB_SOURCES)}  # -S: no site-packages, as in the image
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.wait_for(f"INFO {service} ready")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, line: str, count: int = 1) -> None:
        _until(lambda: self.lines.count(line) >= count or self.proc.poll() is not None, line)
        assert self.lines.count(line) >= count, f"exited {self.proc.returncode}: {self.lines}"

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, str, Any]:
        return call(self.port, method, path, body)

    def terminate(self) -> int:
        """SIGTERM: the exit code, within TERM_GRACE seconds (else TimeoutExpired): a fraction of the
        kubelet's 30 s grace, so a pod deleted or rolled goes without waiting for SIGKILL."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(TERM_GRACE)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture
def workloads() -> Iterator[Callable[..., Workload]]:
    started: list[Workload] = []

    def start(service: str, world_url: str, **options: Any) -> Workload:
        started.append(Workload(service, world_url, **options))
        return started[-1]

    yield start
    for each in started:
        each.kill()


def test_world_serves_the_exporters_but_not_the_services(world: World, world_host: str) -> None:
    conn = http.client.HTTPConnection(world_host, ishchat.EXPORTER_PORTS["node"], timeout=5)
    conn.request("GET", "/metrics")
    answer = conn.getresponse()
    assert answer.status == 200 and b"node_filesystem_avail_bytes" in answer.read()
    conn.close()
    for port in ishchat.SERVICES.values():
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((world_host, port), timeout=1).close()
    sim = world.sim
    assert sim.world_request("nope", "GET", "/health", None)[0] == 404
    assert sim.world_request("instance-manager", "GET", "/state", None) == (
        200,
        {"memory_ratio": 0.35},
        "application/json",
    )
    assert ishchat.world_route(sim, "GET", "/world/load-balancer/health", None) == (
        200,
        {"status": "healthy", "service": "load-balancer"},
        "application/json",
    )
    sim.inject("instance-manager-down")  # without listeners a crash and a restart only change the state
    sim.restarted("instance-manager")
    assert not sim.down and not sim.faults


def test_an_admin_call_reaches_the_world(world: World, workloads: Callable[..., Workload]) -> None:
    lb = workloads("load-balancer", world.url)
    assert lb.call("GET", "/health") == (200, "application/json", {"status": "healthy", "service": "load-balancer"})
    assert lb.call("POST", "/strategy/update", {"strategy": "performance_based"}) == (
        200,
        "application/json",
        {"strategy": "performance_based"},
    )
    assert world.sim.strategy == "performance_based"
    assert world.sim.calls[-1] == ("load-balancer", "POST", "/strategy/update", {"strategy": "performance_based"})
    # the world's errors come back as they are
    status, _, answer = lb.call("POST", "/failover/configure", {"unhealthy_provider": "openai"})
    assert status == 400 and "failover_to" in answer["error"]
    assert lb.call("GET", "/no/such/thing")[0] == 404
    assert lb.lines == ["INFO load-balancer started", "INFO load-balancer ready"]


def test_metrics_are_the_worlds(world: World, workloads: Callable[..., Workload]) -> None:
    router = workloads("intelligent-router", world.url)
    status, content_type, text = router.call("GET", "/metrics")
    assert (status, content_type) == (200, "text/plain; version=0.0.4")
    assert 'ish_chat_requests_total{provider_type="openai",model_name="gpt-4",status="success"}' in text
    assert "ish_chat_circuit_breaker_state" in text


def test_a_crash_closes_the_listener_until_the_process_is_replaced(
    world: World, workloads: Callable[..., Workload]
) -> None:
    old = workloads("instance-manager", world.url)
    status, _, fault = call(old.fault_port, "GET", "/fault")
    assert status == 200 and fault["crashed"] is False and fault["pid"] == old.proc.pid
    assert isinstance(fault["started"], float)

    status, _, fault = call(old.fault_port, "POST", "/fault/crash")
    assert status == 200 and fault["crashed"] is True
    assert refused(old.port)
    assert old.proc.poll() is None  # hung, not gone
    assert call(old.fault_port, "GET", "/fault")[2]["crashed"] is True
    old.wait_for("ERROR listener closed")
    assert old.lines[-2:] == [
        "ERROR instance-manager: unhandled exception in the request loop",
        "ERROR listener closed",
    ]
    call(old.fault_port, "POST", "/fault/crash")  # crashing twice changes nothing
    assert old.lines.count("ERROR listener closed") == 1

    # a rollout restart: a new process (container) on the same port serves again
    new = workloads("instance-manager", world.url, port=old.port)
    assert new.call("GET", "/instances")[:2] == (200, "application/json")
    status, _, fault = call(new.fault_port, "GET", "/fault")
    assert fault["crashed"] is False and fault["pid"] == new.proc.pid != old.proc.pid
    assert old.proc.poll() is None

    # and the hung one still goes at once when its pod is deleted
    assert old.terminate() == 0


def test_sigterm_exits_at_once(world: World, workloads: Callable[..., Workload]) -> None:
    lb = workloads("load-balancer", world.url)
    assert lb.call("GET", "/health")[0] == 200
    assert lb.terminate() == 0
    assert lb.lines[-1] == "INFO load-balancer shutting down"


def test_a_leaking_heap_is_logged_once_each_time(world: World, workloads: Callable[..., Workload]) -> None:
    warning, error = "WARNING heap at 95% of the limit", "ERROR MemoryError while caching provider responses"
    manager = workloads("instance-manager", world.url)
    router = workloads("intelligent-router", world.url)
    world.polls(4)
    assert warning not in manager.lines

    world.sim.inject("high-memory-usage")
    manager.wait_for(error)
    assert manager.lines[-2:] == [warning, error]
    world.polls(6)  # still leaking: nothing new
    assert manager.lines.count(warning) == 1

    world.sim.clear()  # the world heals, then leaks again: logged again
    world.polls(4)
    world.sim.inject("high-memory-usage")
    manager.wait_for(error, count=2)
    assert manager.lines.count(warning) == 2
    assert router.lines == ["INFO intelligent-router started", "INFO intelligent-router ready"]


def test_the_lab_control_server_serves_the_world(world: World, workloads: Callable[..., Workload]) -> None:
    """The route a workload uses in the lab: ``/world/...`` on the lab's control address."""
    host = next(f"127.0.{x}.8" for x in range(200, 250) if _bindable(f"127.0.{x}.8", lab.CONTROL_PORT))
    stand_in = SimpleNamespace(sim=world.sim, hooks=[], ip=lambda name: host)
    control = lab._serve_control(stand_in)
    try:
        router = workloads("intelligent-router", f"http://{host}:{lab.CONTROL_PORT}")
        assert router.call("POST", "/cache/clear") == (200, "application/json", {"ok": True})
        assert world.sim.calls[-1] == ("intelligent-router", "POST", "/cache/clear", None)
        status, content_type, text = router.call("GET", "/metrics")
        assert (status, content_type) == (200, "text/plain; version=0.0.4") and "ish_chat_tokens_used_total" in text
        assert call_at(host, lab.CONTROL_PORT, "GET", "/world/instance-manager/state") == (
            200,
            "application/json",
            {"memory_ratio": 0.35},
        )
        assert call_at(host, lab.CONTROL_PORT, "GET", "/world/nope/health")[0] == 404
        stand_in.sim = None
        assert router.call("GET", "/health")[0] == 503
    finally:
        control.shutdown()
        control.server_close()


def test_a_world_that_does_not_answer_is_a_503(workloads: Callable[..., Workload]) -> None:
    nowhere = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    lb = workloads("load-balancer", nowhere)
    for method, path in (("GET", "/health"), ("POST", "/strategy/update"), ("GET", "/metrics")):
        status, content_type, answer = lb.call(method, path, {} if method == "POST" else None)
        assert (status, content_type) == (503, "application/json")
        assert answer["service"] == "load-balancer" and "does not answer" in answer["error"]
    assert lb.proc.poll() is None


def test_the_command_line(world: World) -> None:
    bad = subprocess.run(
        [sys.executable, "-m", "runbook_lab.workload", "load-balancer", "--world", "ftp://x"],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert bad.returncode == 2 and "http://host" in bad.stderr
    unknown = subprocess.run(
        [sys.executable, "-m", "runbook_lab.workload", "nope", "--world", world.url],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert unknown.returncode == 2 and "invalid choice" in unknown.stderr
