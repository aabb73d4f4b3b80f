"""The Alertmanager intake: a webhook receiver that turns alerts into Incidents.

``POST /api/v1/alerts/alertmanager`` takes Alertmanager's webhook payload (version "4").
A firing alert creates an Incident named from its alert name, fingerprint and start time
(re-sending it creates nothing new; firing again after it resolved is a new Incident); a
resolved alert sets ``spec.resolved: true`` on that Incident.

The pure part (``domain.alerts``: :func:`parse_body`, :func:`place`, :func:`incident_name`)
validates the whole payload before anything is written; :func:`build_app` and :func:`start`
here are the I/O around it.

Namespaces are walls: an alert's ``namespace`` label is only a wish. The Incident goes there
only if that namespace opted in (its label ``remediation.ishchat.io/intake: enabled``, or
``--intake-namespaces``) and the operator watches it; otherwise to ``--intake-namespace``,
annotated with why, logged and counted (``runbook_intake_redirected_total``). One request
names at most ``MAX_NAMESPACES`` namespaces; their labels are read at most once each, a few at
a time, and what was redirected is said in one log line per request.

A resolved alert resolves only an Incident the intake created for that alert: one with the
intake's label (``CREATED_BY``) and the alert's fingerprint in ``spec.source``. An Incident a
person created under the same name is left alone, logged and counted (``not_ours``).

The server cannot be held open (:func:`start`): a connection whose request head has not
arrived within ``--intake-header-timeout`` is closed, a body has ``--intake-body-timeout``,
and at most ``--intake-max-connections`` (never more than a quarter of the process's file
descriptors) are open at once; the next is answered 503 and closed at once. The intake's
Kubernetes calls have threads and connections of their own (see ``handlers.startup``).
"""

from __future__ import annotations

import asyncio
import collections
import hmac
import logging
import os
import resource
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from aiohttp import HttpVersion11, web
from aiohttp.http_exceptions import HttpProcessingError

from runbook_operator.adapters import gate
from runbook_operator.adapters.kube import ApiError
from runbook_operator.domain.alerts import (
    CREATED_BY,
    CREATED_BY_LABEL,
    NOT_OPTED_IN,
    OPT_IN_LABEL,
    AlertAction,
    Options,
    PayloadError,
    Placement,
    TooManyAlerts,
    TooManyNamespaces,
    created_for,
    parse_body,
    place,
    summary,
)

PATH = "/api/v1/alerts/alertmanager"
READY_PATH = "/readyz"
MAX_BYTES = 1024 * 1024
TOKEN_ENV = "RUNBOOK_INTAKE_TOKEN"
OPT_IN_TTL = 30.0  # seconds a Namespace's opt-in label is believed before it is read again
OPT_IN_CACHE = 4096  # namespaces remembered at most (their names come from alerts)
OPT_IN_READS = 8  # Namespace reads in flight at once for one request
HEADER_TIMEOUT = 10.0  # seconds for a request's head (line and headers) to arrive (--intake-header-timeout)
BODY_TIMEOUT = 30.0  # seconds for its body (--intake-body-timeout)
MAX_CONNECTIONS = 256  # open at once (--intake-max-connections); never more than a quarter of RLIMIT_NOFILE
RESOLVE_TRIES = 3  # reads and fenced patches of one Incident another writer keeps moving
log = logging.getLogger(__name__)


def load_token(path: str | None, environ: Mapping[str, str] = os.environ) -> str | None:
    """The bearer token from the file (surrounding whitespace stripped), else the env var; None: neither."""
    if path:
        token = Path(path).read_text(encoding="utf-8").strip()  # OSError is the caller's to report
        if not token:
            raise ValueError(f"{path} is empty")
        return token
    return environ.get(TOKEN_ENV, "").strip() or None


# -- I/O -----------------------------------------------------------------------------


class Incidents(Protocol):
    async def create_incident(self, namespace: str, manifest: Mapping[str, Any]) -> bool:
        """True: created; False: it exists. ApiError otherwise."""

    async def read_incident(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        """The Incident as the API server has it; None: no such Incident. ApiError otherwise."""

    async def resolve_incident(self, namespace: str, name: str, resource_version: str) -> bool:
        """Set spec.resolved on the Incident if it is still ``resource_version``: True: done;
        False: it changed or went away since (409, 404). ApiError otherwise."""

    async def namespace_labels(self, name: str) -> Mapping[str, str] | None:
        """The Namespace's labels; None: no such Namespace. ApiError otherwise."""


class Counters(Protocol):
    def alert(self, result: str) -> None: ...

    def rejected(self, reason: str) -> None: ...

    def redirected(self, reason: str) -> None: ...


class OptIns:
    """Which namespaces carry ``OPT_IN_LABEL: enabled``: one GET per namespace per OPT_IN_TTL,
    so an alert storm reads each Namespace once, and a label set or removed counts within OPT_IN_TTL."""

    def __init__(self, incidents: Incidents, clock: Any = time.monotonic) -> None:
        self._incidents, self._clock = incidents, clock
        self._known: dict[str, tuple[bool, float]] = {}  # namespace -> (opted in, read at)

    async def opted_in(self, namespace: str) -> bool:
        now = self._clock()
        known = self._known.get(namespace)
        if known is not None and now - known[1] < OPT_IN_TTL:
            return known[0]
        labels = await self._incidents.namespace_labels(namespace)  # ApiError: the caller's to answer
        if len(self._known) >= OPT_IN_CACHE:
            self._known.clear()
        opted = labels is not None and labels.get(OPT_IN_LABEL) == "enabled"
        self._known[namespace] = (opted, now)
        return opted


@dataclass
class Settings:
    host: str
    port: int
    token: str | None  # None only with --intake-insecure
    options: Options = field(default_factory=Options)
    max_bytes: int = MAX_BYTES
    header_timeout: float = HEADER_TIMEOUT  # --intake-header-timeout
    body_timeout: float = BODY_TIMEOUT  # --intake-body-timeout
    max_connections: int = MAX_CONNECTIONS  # --intake-max-connections


def parse_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"invalid address {text!r}: expected HOST:PORT, e.g. 0.0.0.0:8082")
    return host or "127.0.0.1", int(port)


def _error(status: int, message: str) -> web.Response:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return web.json_response({"error": message}, status=status, headers=headers)


def _authorized(header: str, token: str | None) -> bool:
    """Constant-time, on bytes: a header's non-UTF-8 bytes arrive as surrogates and go back as
    the same bytes (``Bearer \\xff`` was a UnicodeEncodeError, a 500, before the comparison)."""
    if token is None:
        return True
    scheme, _, given = header.partition(" ")
    try:
        presented = given.strip().encode("utf-8", "surrogateescape")
    except UnicodeError:  # a surrogate no decoder makes
        return False
    return scheme.lower() == "bearer" and hmac.compare_digest(presented, token.encode())


def build_app(
    settings: Settings,
    incidents: Incidents,
    counters: Counters | None = None,
    ready: Callable[[], bool] = lambda: True,
    middlewares: tuple[Any, ...] = (),
) -> web.Application:
    """The webhook, and ``GET /readyz`` for the Deployment's readiness probe: 200 once the
    operator watches and the intake serves, so a Service sends alerts only to replicas that
    take them (every replica takes them: creates are idempotent, leader or not)."""
    opt_ins = OptIns(incidents)

    def count(kind: str, value: str) -> None:
        if counters is not None:
            {"alert": counters.alert, "rejected": counters.rejected, "redirected": counters.redirected}[kind](value)

    async def placements(actions: list[AlertAction], notes: list[str]) -> list[Placement]:
        """Each action's placement; a namespace's label is read only when the flags do not
        decide, once per request, OPT_IN_READS at a time."""
        options = settings.options
        first = [place(action.wanted, options) for action in actions]
        asking = sorted(
            {a.wanted for a, p in zip(actions, first, strict=True) if p.reason == NOT_OPTED_IN and a.wanted}
        )
        reads = asyncio.Semaphore(OPT_IN_READS)

        async def read(namespace: str) -> bool:
            async with reads:
                return await opt_ins.opted_in(namespace)

        answers = await asyncio.gather(*(read(namespace) for namespace in asking))
        labelled = {namespace for namespace, yes in zip(asking, answers, strict=True) if yes}
        placed = [place(a.wanted, options, a.wanted in labelled) for a in actions]
        whys: collections.Counter[str] = collections.Counter()
        for placement in placed:
            if placement.reason:
                count("redirected", placement.reason)
                whys[placement.why] += 1
        if whys:
            notes.append(f"{sum(whys.values())} alert(s) went to namespace {options.namespace}: {summary(whys)}")
        return placed

    async def resolve(namespace: str, action: AlertAction) -> str:
        """Resolve the Incident the intake created for this alert; the result to count."""
        for _ in range(RESOLVE_TRIES):
            body = await incidents.read_incident(namespace, action.name)
            if body is None:
                return "unknown_resolved"
            if not created_for(body, action.fingerprint):
                return "not_ours"
            spec = body.get("spec")
            if isinstance(spec, dict) and spec.get("resolved") is True:
                return "resolved"
            version = str((body.get("metadata") or {}).get("resourceVersion") or "")
            if version and await incidents.resolve_incident(namespace, action.name, version):
                return "resolved"
        raise ApiError(f"changed by another writer while being resolved, {RESOLVE_TRIES} times", permanent=False)

    async def act(actions: list[AlertAction], placed: list[Placement], notes: list[str]) -> web.Response:
        results = {"created": 0, "duplicate": 0, "resolved": 0, "unknown_resolved": 0, "not_ours": 0}
        left_alone: list[str] = []
        try:
            for action, placement in zip(actions, placed, strict=True):
                try:
                    if action.firing:
                        done = await incidents.create_incident(placement.namespace, action.manifest(placement))
                        result = "created" if done else "duplicate"
                    else:
                        result = await resolve(placement.namespace, action)
                except ApiError as err:
                    count("alert", "failed")
                    where = f"incident {placement.namespace}/{action.name}"
                    notes.append(f"{where}: {err}")
                    # 5xx makes Alertmanager retry the whole batch (idempotent); 4xx does not
                    return _error(422 if err.permanent else 503, f"{where}: {err}")
                if result == "not_ours":
                    left_alone.append(f"{placement.namespace}/{action.name}")
                results[result] += 1
                count("alert", result)
        finally:
            if left_alone:
                shown = ", ".join(left_alone[:5]) + (f" and {len(left_alone) - 5} more" if len(left_alone) > 5 else "")
                notes.append(
                    f"{len(left_alone)} resolved alert(s) left alone: incident {shown} was not created by the intake "
                    f"for that alert (no label {CREATED_BY_LABEL}={CREATED_BY} with its fingerprint)"
                )
        return web.json_response(results)

    async def receive(request: web.Request) -> web.Response:
        if not _authorized(request.headers.get("Authorization", ""), settings.token):
            count("rejected", "unauthorized")
            return _error(401, "missing or wrong bearer token")
        try:
            async with asyncio.timeout(settings.body_timeout):
                raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            count("rejected", "too_large")
            return _error(413, f"body: larger than {settings.max_bytes} bytes")
        except TimeoutError:
            count("rejected", "body_timeout")
            response = _error(408, f"body: not received within {settings.body_timeout:g} s")
            response.force_close()
            return response
        except (HttpProcessingError, web.RequestPayloadError, ConnectionError) as err:
            # a body that does not decode (Content-Encoding, chunks) or a client that went away
            count("rejected", "malformed")
            response = _error(400, f"body: cannot be read: {str(err)[:200]}")
            response.force_close()
            return response
        try:
            actions = parse_body(raw, settings.options.max_alerts, settings.options.max_namespaces)
        except PayloadError as err:
            reason = {TooManyAlerts: "too_many_alerts", TooManyNamespaces: "too_many_namespaces"}.get(type(err))
            count("rejected", reason or "malformed")
            return _error(err.status, str(err))
        notes: list[str] = []  # what this request did that people should hear of: one log line
        try:
            try:
                placed = await placements(actions, notes)
            except ApiError as err:
                notes.append(f"reading a Namespace's {OPT_IN_LABEL} label: {err}")
                message = f"reading a Namespace's {OPT_IN_LABEL} label: {err}; nothing was created"
                return _error(422 if err.permanent else 503, message)
            return await act(actions, placed, notes)
        finally:
            if notes:
                log.warning("intake: %s", "; ".join(notes))

    async def readyz(request: web.Request) -> web.Response:
        if ready():
            return web.Response(text="ok\n")
        return web.Response(status=503, text="not ready: the operator is starting or stopping\n")

    app = web.Application(client_max_size=settings.max_bytes, middlewares=middlewares)
    app.router.add_post(PATH, receive, expect_handler=_expect)
    app.router.add_get(READY_PATH, readyz, expect_handler=_expect)
    return app


async def _expect(request: web.Request) -> None:
    """``Expect: 100-continue`` as aiohttp's own handler; any other value a 417 that does not echo
    it (aiohttp's put it in the answer, and one that is not UTF-8 was a 500)."""
    if request.version != HttpVersion11:
        return
    if request.headers.get("Expect", "").lower() == "100-continue":
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0
        return
    raise web.HTTPExpectationFailed(text="unknown Expect: only 100-continue is understood")


SERVER_LOG = log.getChild("http")  # aiohttp's lines about the intake's connections


async def start(
    settings: Settings,
    incidents: Incidents,
    counters: Counters | None = None,
    ready: Callable[[], bool] = lambda: True,
) -> gate.Listener:
    """Serve the intake on the running loop, through a :class:`gate.Gate` (header deadline,
    connection limit; the body's deadline is the handler's); ``await listener.cleanup()`` stops it."""
    limit = gate.open_files_budget(settings.max_connections)
    guard = gate.Gate("the intake", limit, settings.header_timeout, counters.rejected if counters else None)
    app = build_app(settings, incidents, counters, ready, middlewares=(guard.middleware,))
    listener = await gate.serve(app, settings.host, settings.port, guard, SERVER_LOG)
    auth = "bearer token" if settings.token else "NO AUTHENTICATION (--intake-insecure)"
    log.info(
        "Alertmanager intake on http://%s:%d%s (%s; at most %d connections, %g s for a request's head, %g s for "
        "its body)", settings.host, settings.port, PATH, auth, limit, settings.header_timeout, settings.body_timeout,
    )  # fmt: skip
    if limit < settings.max_connections:
        log.warning(
            "intake: at most %d connections, not %d: a quarter of the %d files this process may open",
            limit, settings.max_connections, resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        )  # fmt: skip
    return listener
