"""A small HTTP server on a free port, answered by a daemon thread: the lab's and the tests'
fake receivers, exporters and gates, and the lab kubelet's log endpoint.

A subclass builds its request handler and calls ``super().__init__(handler)``; ``start()``
returns the server itself, so ``Receiver().start()`` reads as one step, and ``stop()`` shuts
it down, closes the socket and joins the thread.
"""

from __future__ import annotations

import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self


class QuietHandler(BaseHTTPRequestHandler):
    """A request handler that does not print a line per request."""

    def log_message(self, *args: Any) -> None:
        pass


class Served:
    def __init__(
        self,
        handler: type[BaseHTTPRequestHandler],
        host: str = "127.0.0.1",
        *,
        poll: float = 0.5,
        backlog: int = 16,
        tls: ssl.SSLContext | None = None,
        name: str | None = None,
    ) -> None:
        """``poll``: how often ``serve_forever`` looks for a shutdown (a test server stops faster at 0.05);
        ``backlog``: connections the kernel queues before the server accepts them."""
        self.server = ThreadingHTTPServer((host, 0), handler, bind_and_activate=False)
        self.server.request_queue_size = backlog  # read by server_activate's listen()
        self.server.daemon_threads = True
        try:
            self.server.server_bind()
            self.server.server_activate()
        except BaseException:
            self.server.server_close()
            raise
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.host, self.port = host, int(self.server.server_address[1])
        self._scheme = "https" if tls is not None else "http"
        self._thread = threading.Thread(target=self.server.serve_forever, args=(poll,), name=name, daemon=True)

    @property
    def url(self) -> str:
        return f"{self._scheme}://{self.host}:{self.port}"

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join()
