"""A simulated ISH Chat instance manager: the endpoint the examples remediate.

``GET /health`` answers 200 when healthy, 503 when down. ``POST /admin/restart``
(a JSON body naming the service) brings it back after ``restart_seconds``, unless
``fixable`` is false or ``ineffective_restarts`` are left; ``POST /admin/break``
takes it down. ``POST /admin/failover`` takes ``failover_seconds`` and fixes it
(a slow, destructive call). ``POST /hooks/NAME`` records a notification.
``POST /admin/echo`` answers with the request's headers (a careless API that echoes
credentials). ``GET /admin/stats`` counts all of it, so tests can check what happened.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class DemoService:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, healthy: bool = False, restart_seconds: float = 1.0):
        self.host = host
        self.healthy, self.fixable, self.restart_seconds = healthy, True, restart_seconds
        self.restarts = self.failovers = self.ineffective_restarts = 0
        self.failover_seconds = 0.0
        self.hooks: list[tuple[str, Any]] = []
        self.hook_failures = 0  # answer this many hook posts with 503 first
        self.headers: list[dict[str, str]] = []
        self.requests: list[tuple[str, str, Any]] = []
        self._healthy_at: float | None = None
        self._lock = threading.Lock()
        self._server = _QuietServer((host, port), _handler(self))
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self._server.server_port}"

    def is_healthy(self) -> bool:
        with self._lock:
            if self._healthy_at is not None and time.monotonic() >= self._healthy_at:
                self.healthy, self._healthy_at = True, None
            return self.healthy

    def restart(self) -> None:
        with self._lock:
            self.restarts += 1
            self.healthy = False
            works = self.fixable and self.ineffective_restarts <= 0
            self.ineffective_restarts -= 1
            self._healthy_at = time.monotonic() + self.restart_seconds if works else None

    def failover(self) -> None:
        with self._lock:
            self.failovers += 1
        time.sleep(self.failover_seconds)
        with self._lock:
            self.healthy, self._healthy_at = True, None

    def break_(self) -> None:
        with self._lock:
            self.healthy, self._healthy_at = False, None

    def start(self) -> DemoService:
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="demo-service", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class _QuietServer(ThreadingHTTPServer):
    request_queue_size = 128  # socketserver's default backlog of 5 refuses connections under a burst

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hung up (an operator killed mid-request) is not an error here."""


def _handler(service: DemoService) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # quiet by default
            pass

        def _reply(self, code: int, payload: dict[str, Any]) -> None:
            body = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _body(self) -> Any:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                return json.loads(raw) if raw else None
            except ValueError:
                return raw.decode(errors="replace")

        def do_GET(self) -> None:
            service.requests.append(("GET", self.path, None))
            if self.path == "/health":
                ok = service.is_healthy()
                self._reply(200 if ok else 503, {"status": "healthy" if ok else "down"})
            elif self.path == "/admin/stats":
                stats = {"restarts": service.restarts, "failovers": service.failovers, "hooks": len(service.hooks)}
                self._reply(200, stats | {"healthy": service.is_healthy()})
            else:
                self._reply(404, {"error": f"no route {self.path}"})

        def do_POST(self) -> None:
            body = self._body()
            service.requests.append(("POST", self.path, body))
            service.headers.append(dict(self.headers.items()))
            if self.path == "/admin/restart":
                service.restart()
                self._reply(
                    202,
                    {"restarting": True, "service": (body or {}).get("service") if isinstance(body, dict) else None},
                )
            elif self.path == "/admin/break":
                service.break_()
                self._reply(200, {"healthy": False})
            elif self.path == "/admin/failover":
                service.failover()
                self._reply(200, {"failedOver": True})
            elif self.path.startswith("/hooks/") and service.hook_failures > 0:
                service.hook_failures -= 1
                self._reply(503, {"error": "try again"})
            elif self.path.startswith("/hooks/"):
                service.hooks.append((self.path.removeprefix("/hooks/"), body))
                self._reply(200, {"ok": True})
            elif self.path == "/admin/echo":  # a careless admin API that echoes credentials back
                self._reply(200, {"headers": dict(self.headers.items())})
            else:
                self._reply(404, {"error": f"no route {self.path}"})

    return Handler


def serve_forever(host: str, port: int, healthy: bool = False) -> None:
    service = DemoService(host, port, healthy=healthy)
    print(f"demo instance manager on {service.url} ({'healthy' if healthy else 'down'}); Ctrl-C to stop", flush=True)
    try:
        service._server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        service._server.server_close()
