"""HTTP listeners that cannot be held open: the intake's and the liveness probe's.

aiohttp has no timeout for a request's head: a client that sends half a request line holds
its connection, and a file descriptor, for as long as it likes. 3,000 such connections to
the intake once took all of a container's 1,024 files, and with them the operator's status
writes and its liveness probe (issue 22). So each listener here serves its aiohttp app
through a :class:`Gate`:

- a connection whose request head has not arrived within ``header_timeout`` is closed (the
  clock starts again after each answer on a kept-alive connection);
- at most ``limit`` connections are open at once; the next is answered 503 and closed at once;
- requests aiohttp cannot parse are counted (``malformed``), not logged with a traceback each.

A body's deadline is the handler's (the intake's ``--intake-body-timeout``). The process's
file budget: :func:`raise_open_files_limit` at start, :func:`open_files_budget` per listener.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

Count = Callable[[str], None]  # a reason a connection or request was refused: header_timeout, too_many_connections, …


def open_files_budget(wanted: int, nofile: int | None = None) -> int:
    """How many connections a listener may hold: ``wanted``, but at most a quarter of the soft
    RLIMIT_NOFILE (``nofile``; None: this process's), so the Kubernetes client, Kopf's watches
    and the other listeners keep the rest whatever one of them is sent."""
    if nofile is None:
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if nofile == resource.RLIM_INFINITY or nofile < 0:
        return max(1, wanted)
    return max(1, min(wanted, nofile // 4))


def raise_open_files_limit() -> tuple[int, int]:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit (a container's soft limit is
    often 1,024 under a far higher hard one); (soft before, soft now). Process-wide: called
    once when the operator starts. A hard limit the kernel will not grant leaves it as it was."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == soft:
        return soft, soft
    want = hard
    if hard == resource.RLIM_INFINITY:  # the kernel grants at most fs.nr_open
        try:
            want = int(Path("/proc/sys/fs/nr_open").read_text())
        except (OSError, ValueError):
            want = 1 << 20
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    except (ValueError, OSError):
        return soft, soft
    return soft, resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class _Connection(asyncio.Protocol):
    """One connection: aiohttp's protocol inside, the gate's deadline around it.

    The deadline runs from the moment the connection opens, or the previous request was
    answered, until the next request's head is parsed (the gate's middleware says so); then
    the connection is closed. A connection over the gate's limit is answered 503 and closed."""

    def __init__(self, gate: Gate) -> None:
        self._gate = gate
        self._inner: asyncio.Protocol | None = None
        self._transport: asyncio.Transport | None = None
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        gate = self._gate
        if len(gate.open) >= gate.limit:
            gate.count("too_many_connections")
            transport.write(gate.busy)
            transport.close()
            return
        assert gate.factory is not None
        gate.open[transport] = self
        self._inner = gate.factory()
        self.wait_for_head()
        self._inner.connection_made(transport)

    def wait_for_head(self) -> None:
        self.head_arrived()
        transport = self._transport
        if transport is not None and not transport.is_closing():
            loop = asyncio.get_running_loop()
            self._deadline = loop.call_later(self._gate.header_timeout, self._late)

    def head_arrived(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _late(self) -> None:
        self._deadline = None
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        self._gate.count("header_timeout")
        if transport.get_write_buffer_size():  # an answer the client does not read
            transport.abort()
        else:
            transport.close()

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.head_arrived()
        if self._inner is not None:
            if self._transport is not None:
                self._gate.open.pop(self._transport, None)
            self._inner.connection_lost(exc)
            self._inner = None


def _busy(what: str) -> bytes:
    body = b'{"error": "' + what.encode() + b' has too many connections open; try again"}'
    return (
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
        b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )


class Gate:
    """A listener's connections: the protocol factory for its listening socket, and the
    middleware that tells a connection its request's head has arrived, then been answered.
    Its ``middleware`` must be the app's first."""

    def __init__(self, what: str, limit: int, header_timeout: float, count: Count | None = None) -> None:
        self.limit, self.header_timeout, self._count = limit, header_timeout, count
        self.busy = _busy(what)
        self.factory: Callable[[], asyncio.Protocol] | None = None  # aiohttp's, once its runner is set up
        self.open: dict[asyncio.BaseTransport, _Connection] = {}

    def __call__(self) -> _Connection:
        return _Connection(self)

    def count(self, reason: str) -> None:
        if self._count is not None:
            self._count(reason)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        connection = self.open.get(request.transport) if request.transport is not None else None
        if connection is not None:
            connection.head_arrived()
        try:
            response: web.StreamResponse = await handler(request)
            return response
        finally:
            if connection is not None:
                connection.wait_for_head()  # the next request on this connection (keep-alive)


class _UnparsableRequests(logging.Filter):
    """aiohttp logs every request it cannot parse (a control character in a header, a bad
    request line) as an ERROR with a traceback: a line in the operator's log for each line a
    client sends. Those are counted as ``malformed`` and not logged; its other lines stay."""

    def __init__(self, count: Count | None) -> None:
        super().__init__()
        self._count = count

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], HttpProcessingError):
            if self._count is not None:
                self._count("malformed")
            return False
        return True


class Listener:
    """A gated app while it serves; ``await listener.cleanup()`` stops it."""

    def __init__(self, runner: web.AppRunner, server: asyncio.Server, gate: Gate, logger: logging.Logger) -> None:
        self._runner, self._server, self._gate, self._logger = runner, server, gate, logger
        self._quiet = _UnparsableRequests(gate._count)
        logger.addFilter(self._quiet)

    @property
    def port(self) -> int:
        """The port it listens on (port 0 asked: the one the kernel chose)."""
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def connections(self) -> int:
        """Connections open now (those refused at once never count)."""
        return len(self._gate.open)

    @property
    def limit(self) -> int:
        return self._gate.limit

    async def cleanup(self) -> None:
        self._server.close()  # take no more connections, then close the open ones
        await self._runner.cleanup()
        self._logger.removeFilter(self._quiet)


async def serve(app: web.Application, host: str, port: int, gate: Gate, logger: logging.Logger) -> Listener:
    """Serve ``app`` (built with ``gate.middleware`` first) through ``gate`` on the running loop.

    Not through aiohttp's TCPSite: its listening socket takes aiohttp's protocol as it is, and
    that one waits for a request's head for ever."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False, logger=logger)
    await runner.setup()
    try:
        gate.factory = runner.server
        server = await asyncio.get_running_loop().create_server(gate, host, port, backlog=128)
    except BaseException:
        await runner.cleanup()
        raise
    return Listener(runner, server, gate, logger)


HEALTH_TIMEOUT = 10.0  # seconds for a probe's request head
HEALTH_CONNECTIONS = 16  # the kubelet probes over one connection at a time


async def serve_health(host: str, port: int, path: str, logger: logging.Logger) -> Listener:
    """The liveness endpoint: ``GET path`` answers 200 from the operator's event loop, so it
    says the loop runs (as Kopf's own endpoint did, which has no header deadline)."""

    async def alive(request: web.Request) -> web.Response:
        return web.json_response({})

    gate = Gate("the liveness endpoint", HEALTH_CONNECTIONS, HEALTH_TIMEOUT)
    app = web.Application(middlewares=(gate.middleware,))
    app.router.add_get(path, alive)
    return await serve(app, host, port, gate, logger)
