"""The log endpoint of a kubelet, for pods on the kwok node.

kwok runs pods without containers and serves no logs (the API server answers "no
preferred addresses found"). :class:`LogServer` is the HTTPS endpoint the API server
proxies ``kubectl logs`` (``/containerLogs/<namespace>/<pod>/<container>``) to, once the
node's status names it (:meth:`LogServer.node_status`). ``source(namespace, pod, container)`` gives a
container's log text, or None for a container that has no log yet (404, as a kubelet says).
The API server does not verify kubelet certificates here, so its own serving pair will do.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from runbook_lab.served import QuietHandler, Served

Logs = Callable[[str, str, str], "str | None"]


class LogServer(Served):
    def __init__(self, cert: Path, key: Path, source: Logs, host: str = "127.0.0.1") -> None:
        self.source = source
        self.requests: list[tuple[str, dict[str, list[str]]]] = []
        server = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                url = urlparse(self.path)
                query = parse_qs(url.query)
                server.requests.append((url.path, query))
                parts = url.path.split("/")  # /containerLogs/<ns>/<pod>/<container>
                text = None
                if len(parts) == 5 and parts[1] == "containerLogs":
                    text = server.source(parts[2], parts[3], parts[4])
                if text is None:
                    self._send(404, "no log for this container yet")
                    return
                lines = text.splitlines(keepends=True)
                if "tailLines" in query:
                    lines = lines[-int(query["tailLines"][0]) :]
                self._send(200, "".join(lines))

            def _send(self, status: int, text: str) -> None:
                body = text.encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(cert), str(key))
        super().__init__(Handler, host, tls=context, name="lab-kubelet-logs")

    def node_status(self) -> dict[str, Any]:
        """The node status patch that sends the API server's log requests here."""
        return {
            "addresses": [{"type": "InternalIP", "address": self.host}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.port}},
        }
