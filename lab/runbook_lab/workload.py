"""One ISH Chat service as a real process, for a container: a thin front to the lab's world.

    python -m runbook_lab.workload SERVICE --world URL [--host H] [--port N] [--fault-port M] [--poll S]

The world (providers, traffic, counters: :class:`runbook_lab.ishchat.IshChat`) stays in the lab's
process; this process serves SERVICE's port (default its runbook port, ``ishchat.SERVICES``) and
forwards every request, whatever its method, path and body, to ``URL/world/SERVICE/PATH``
(``GET /metrics`` too), answering with the world's status, content type and body; a world that
does not answer within 2 s is a 503 with a JSON error.

What can break is the process itself. ``POST /fault/crash`` on the fault port (default PORT +
10000) makes the request loop "crash": it logs the error, closes the service's listener
(connections are refused from then on) and the process stays up, hung, until its container is
replaced (``kubectl rollout restart``). ``GET /fault`` tells ``{"crashed", "pid", "started",
"service"}``. At start and every ``--poll`` seconds (2) it asks ``URL/world/SERVICE/state`` what it feels:
a ``memory_ratio`` above 0.9 is logged as a leaking heap (once each time it goes above), as the
runbook's log scan expects. SIGTERM (or SIGINT) exits 0 at once, so rollouts are fast.

Standard library only (with :mod:`runbook_lab.ishchat`, also standard library only): the lab's
service image (``runbook_lab.images.lab_image``) has no compiled third-party packages.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import sys
import threading
import time
import urllib.parse
from typing import Any

from runbook_lab.ishchat import SERVICES, JsonHandler, Server

TIMEOUT = 2.0  # seconds for one call to the world
POLL = 2.0  # seconds between two looks at the world's state
FAULT_OFFSET = 10000  # the fault port's default: the service's + this
HIGH_MEMORY = 0.9
MAX_BODY = 1 << 20


def log(line: str) -> None:
    print(line, flush=True)


class World:
    """The lab's world, over HTTP (``http://host:port[/prefix]``), for one service."""

    def __init__(self, url: str, service: str) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"--world must be an http://host[:port] URL, not {url!r}")
        self.host, self.port = parts.hostname, parts.port or 80
        self.prefix = f"{parts.path.rstrip('/')}/world/{service}"

    def call(
        self, method: str, path: str, body: bytes | None = None, content_type: str | None = None
    ) -> tuple[int, str, bytes]:
        """(status, content type, body) of ``method prefix+path``; OSError (and HTTPException) when it fails."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=TIMEOUT)
        try:
            headers = {"Content-Type": content_type} if content_type else {}
            conn.request(method, self.prefix + path, body=body, headers=headers)
            answer = conn.getresponse()
            return answer.status, answer.getheader("Content-Type") or "application/json", answer.read()
        finally:
            conn.close()


class Workload:
    def __init__(self, service: str, world: World, host: str, port: int, fault_port: int, poll: float) -> None:
        self.service, self.world, self.poll = service, world, poll
        self.started = time.time()
        self.crashed = False
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._leaking = False
        self.server = Server((host, port), _service_handler(self))
        self.faults = Server((host, fault_port), _fault_handler(self))

    def run(self) -> None:
        for server, name in ((self.server, "listener"), (self.faults, "faults")):
            threading.Thread(target=server.serve_forever, args=(0.1,), name=name, daemon=True).start()
        threading.Thread(target=self._watch, name="state", daemon=True).start()
        log(f"INFO {self.service} ready")
        self.stopping.wait()
        log(f"INFO {self.service} shutting down")  # no draining: the process exits, the listeners with it

    def forward(self, handler: JsonHandler) -> None:
        try:
            length = min(int(handler.headers.get("Content-Length") or 0), MAX_BODY)
        except ValueError:
            handler.reply(400, {"error": "a bad Content-Length"})
            return
        body = handler.rfile.read(length) if length > 0 else None
        try:
            status, content_type, payload = self.world.call(
                handler.command, handler.path, body, handler.headers.get("Content-Type")
            )
        except (OSError, http.client.HTTPException) as e:
            handler.reply(
                503, {"error": f"the world does not answer: {str(e) or type(e).__name__}", "service": self.service}
            )
            return
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(payload)

    def crash(self) -> None:
        """The request loop dies: the listener closes, the process lives on (hung) until it is replaced."""
        with self._lock:
            if self.crashed:
                return
            self.crashed = True
            log(f"ERROR {self.service}: unhandled exception in the request loop")
            self.server.shutdown()
            self.server.server_close()
            log("ERROR listener closed")

    def fault_state(self) -> dict[str, Any]:
        return {"crashed": self.crashed, "pid": os.getpid(), "started": self.started, "service": self.service}

    def _watch(self) -> None:
        """Feel what the world says this process feels (its heap), logging each change for the worse once."""
        while True:
            try:
                status, _, raw = self.world.call("GET", "/state")
                state = json.loads(raw) if status == 200 else None
                ratio = float(state["memory_ratio"]) if isinstance(state, dict) else None
            except (OSError, http.client.HTTPException, ValueError, KeyError, TypeError):
                ratio = None
            if ratio is not None:
                leaking = ratio > HIGH_MEMORY
                if leaking and not self._leaking:
                    log(f"WARNING heap at {round(ratio * 100)}% of the limit")
                    log("ERROR MemoryError while caching provider responses")
                self._leaking = leaking
            if self.stopping.wait(self.poll):
                return


def _service_handler(workload: Workload) -> type[JsonHandler]:
    class Handler(JsonHandler):
        def do_GET(self) -> None:
            workload.forward(self)

        do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_GET

    return Handler


def _fault_handler(workload: Workload) -> type[JsonHandler]:
    class Handler(JsonHandler):
        def do_GET(self) -> None:
            if self.path == "/fault":
                self.reply(200, workload.fault_state())
            else:
                self.reply(404, {"error": f"no route GET {self.path}"})

        def do_POST(self) -> None:
            if self.path == "/fault/crash":
                workload.crash()
                self.reply(200, workload.fault_state())
            else:
                self.reply(404, {"error": f"no route POST {self.path}"})

    return Handler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m runbook_lab.workload", description="One ISH Chat service: a thin front to the lab's world."
    )
    parser.add_argument("service", choices=sorted(SERVICES))
    parser.add_argument("--world", required=True, help="the lab's control URL, e.g. http://10.0.0.1:8080")
    parser.add_argument("--host", default="0.0.0.0", help="the address both listeners bind (0.0.0.0)")
    parser.add_argument("--port", type=int, help="the service's port (its runbook port)")
    parser.add_argument("--fault-port", type=int, help=f"the fault port (the service's + {FAULT_OFFSET})")
    parser.add_argument("--poll", type=float, default=POLL, help=f"seconds between looks at the world ({POLL:g})")
    args = parser.parse_args(argv)
    port = args.port if args.port is not None else SERVICES[args.service]
    fault_port = args.fault_port if args.fault_port is not None else port + FAULT_OFFSET
    try:
        world = World(args.world, args.service)
    except ValueError as e:
        parser.error(str(e))
    log(f"INFO {args.service} started")
    try:
        workload = Workload(args.service, world, args.host, port, fault_port, args.poll)
    except OSError as e:
        log(f"ERROR {args.service}: cannot listen on {args.host}:{port} and :{fault_port}: {e}")
        return 1
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: workload.stopping.set())
    workload.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
