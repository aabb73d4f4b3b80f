"""The Alertmanager intake: a webhook receiver that turns alerts into Incidents.

``POST /api/v1/alerts/alertmanager`` takes Alertmanager's webhook payload (version "4").
A firing alert creates an Incident named from its alert name, fingerprint and start time
(re-sending it creates nothing new; firing again after it resolved is a new Incident); a
resolved alert sets ``spec.resolved: true`` on that Incident.

The pure part (:func:`parse_payload`, :func:`place`, :func:`incident_name`) validates the
whole payload before anything is written; :func:`build_app` and :func:`start` are the I/O
around it. Alert labels and annotations are untrusted: they only ever become spec data. The
Incident's name comes from the sanitized alert name and the hex fingerprint, nothing else.

Namespaces are walls: an alert's ``namespace`` label is only a wish. The Incident goes there
only if that namespace opted in (its label ``remediation.ishchat.io/intake: enabled``, or
``--intake-namespaces``) and the operator watches it; otherwise to ``--intake-namespace``,
annotated with why, logged and counted (``runbook_intake_redirected_total``).
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import json
import logging
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from runbook_operator.domain.resources import API_VERSION
from runbook_operator.domain.status import timestamp

PATH = "/api/v1/alerts/alertmanager"
READY_PATH = "/readyz"
MAX_BYTES = 1024 * 1024
MAX_ALERTS = 1000  # per request (--intake-max-alerts); Alertmanager's webhook_config max_alerts keeps below it
MAX_DEPTH = 32  # of nested JSON; Alertmanager's payload is 4 deep
MAX_NUMBER = 32  # characters of one JSON number; Alertmanager's payload has small counts only
TOKEN_ENV = "RUNBOOK_INTAKE_TOKEN"
OPT_IN_LABEL = "remediation.ishchat.io/intake"  # a Namespace with this label "enabled" takes alerts' Incidents
REDIRECTED = "remediation.ishchat.io/intake-redirected"  # annotation: why the Incident is not where the alert said
OPT_IN_TTL = 30.0  # seconds a Namespace's opt-in label is believed before it is read again
OPT_IN_CACHE = 4096  # namespaces remembered at most (their names come from alerts)
log = logging.getLogger(__name__)

# the CRD's limits (crds/remediation.ishchat.io_incidents.yaml)
ALERT_MAX, SUMMARY_MAX, DESCRIPTION_MAX = 253, 1024, 16384
LABELS_MAX, LABEL_VALUE_MAX, GENERATOR_URL_MAX = 64, 1024, 2048
NAME_PART_MAX = 40
SEVERITIES = {
    "critical": "Critical",
    "high": "High",
    "error": "High",
    "warning": "Medium",
    "medium": "Medium",
    "info": "Low",
    "low": "Low",
}
_FINGERPRINT = re.compile(r"[0-9a-fA-F]{8,64}")
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_TIME = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.\d+)?(Z|z|[+-]\d\d:\d\d)")


class PayloadError(ValueError):
    """The payload is not one the intake takes; the message names the field."""

    status = 400


class TooManyAlerts(PayloadError):
    """More alerts in one request than ``--intake-max-alerts``: refused whole."""

    status = 413


@dataclass(frozen=True)
class Options:
    """How alerts map to namespaces, and how many one request may carry."""

    namespace: str = "default"  # --intake-namespace: where an Incident goes when its alert's namespace may not have it
    opted_in: frozenset[str] = frozenset()  # --intake-namespaces: opted in without the Namespace label
    watched: frozenset[str] | None = None  # -n: the namespaces the operator watches; None: all
    max_alerts: int = MAX_ALERTS


@dataclass(frozen=True)
class Placement:
    """Where an alert's Incident goes; ``reason`` (a metric label) and ``why`` when not where the alert said."""

    namespace: str
    reason: str | None = None
    why: str = ""


@dataclass(frozen=True)
class AlertAction:
    """What one alert asks for: create (firing) or resolve an Incident."""

    firing: bool
    wanted: str | None  # the alert's `namespace` label (untrusted; see :func:`place`)
    name: str
    spec: Mapping[str, Any] = field(default_factory=dict)  # the Incident's, for firing alerts

    def manifest(self, placement: Placement) -> dict[str, Any]:
        """The Incident to create, in the namespace it was placed in."""
        metadata: dict[str, Any] = {
            "name": self.name,
            "namespace": placement.namespace,
            "labels": {"app.kubernetes.io/created-by": "runbook-operator-intake"},
        }
        if placement.reason:
            metadata["annotations"] = {REDIRECTED: placement.why}
        return {"apiVersion": API_VERSION, "kind": "Incident", "metadata": metadata, "spec": dict(self.spec)}


def incident_name(alertname: str, fingerprint: str, starts_at: str | None = None) -> str:
    """A valid DNS-1123 name, the same for every re-send of one firing of one alert.

    ``<alertname sanitized, ≤40>-<fingerprint[:10]>-<episode>``, where the episode is 6 hex
    digits of the alert's ``startsAt``: the fingerprint alone names the alert's label set, so
    the same alert firing again after it resolved is a new Incident, not a "duplicate" of the
    Resolved one. Without ``startsAt``: ``<alertname>-<fingerprint[:16]>``.
    """
    part = re.sub(r"[^a-z0-9-]", "-", alertname.lower())[:NAME_PART_MAX].strip("-") or "alert"
    if not starts_at:
        return f"{part}-{fingerprint.lower()[:16]}"
    episode = hashlib.sha256(starts_at.encode()).hexdigest()[:6]
    return f"{part}-{fingerprint.lower()[:10]}-{episode}"


def _stringify(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _time(value: Any, where: str) -> str | None:
    if value is None or value == "":
        return None
    match = _TIME.fullmatch(value) if isinstance(value, str) else None
    try:
        if match is None:
            raise ValueError
        zone = "+00:00" if match.group(2) in ("Z", "z") else match.group(2)
        parsed = datetime.fromisoformat(match.group(1) + zone)
    except ValueError:
        raise PayloadError(f"{where}: not an RFC 3339 time") from None
    return timestamp(parsed)


def _object(value: Any, where: str, required: bool = True) -> Mapping[str, Any]:
    if value is None and not required:
        return {}
    if value is None:
        raise PayloadError(f"{where}: required")
    if not isinstance(value, dict):
        raise PayloadError(f"{where}: must be an object")
    return value


NOT_A_NAMESPACE, NOT_WATCHED, NOT_OPTED_IN = "not_a_namespace", "not_watched", "not_opted_in"


def place(wanted: str | None, options: Options, labelled: bool = False) -> Placement:
    """Where the Incident of an alert whose ``namespace`` label is ``wanted`` goes.

    ``labelled``: the Namespace carries ``OPT_IN_LABEL: enabled`` (the caller read it). A
    placement with reason NOT_OPTED_IN is the only one that reading the label can change.
    """
    fallback = options.namespace
    if wanted is None or wanted == fallback:
        return Placement(fallback)
    if not _DNS_LABEL.fullmatch(wanted):
        return Placement(fallback, NOT_A_NAMESPACE, f"the alert's namespace label {wanted[:70]!r} is no namespace name")
    if options.watched is not None and wanted not in options.watched:
        return Placement(
            fallback, NOT_WATCHED, f"the alert names namespace {wanted}, which the operator does not watch"
        )
    if wanted in options.opted_in or labelled:
        return Placement(wanted)
    why = (
        f"the alert names namespace {wanted}, which has not opted in to the intake: "
        f"label it {OPT_IN_LABEL}=enabled (or add --intake-namespaces={wanted})"
    )
    return Placement(fallback, NOT_OPTED_IN, why)


def _alert(raw: Any, where: str) -> AlertAction:
    alert = _object(raw, where)
    status = alert.get("status")
    if status is None:
        raise PayloadError(f"{where}.status: required")
    if status not in ("firing", "resolved"):
        raise PayloadError(f"{where}.status: must be 'firing' or 'resolved'")
    labels = _object(alert.get("labels"), f"{where}.labels")
    annotations = _object(alert.get("annotations"), f"{where}.annotations", required=False)
    alertname = labels.get("alertname")
    if alertname is None or alertname == "":
        raise PayloadError(f"{where}.labels.alertname: required")
    if not isinstance(alertname, str):
        raise PayloadError(f"{where}.labels.alertname: must be a string")
    if len(alertname) > ALERT_MAX:
        raise PayloadError(f"{where}.labels.alertname: longer than {ALERT_MAX} characters")
    fingerprint = alert.get("fingerprint")
    if fingerprint is None or fingerprint == "":
        raise PayloadError(f"{where}.fingerprint: required")
    if not isinstance(fingerprint, str) or not _FINGERPRINT.fullmatch(fingerprint):
        raise PayloadError(f"{where}.fingerprint: must be 8 to 64 hex digits")
    fingerprint = fingerprint.lower()
    starts_at = _time(alert.get("startsAt"), f"{where}.startsAt")
    generator = alert.get("generatorURL")
    if generator is not None and not isinstance(generator, str):
        raise PayloadError(f"{where}.generatorURL: must be a string")
    wanted = labels.get("namespace")
    wanted = _stringify(wanted) if wanted is not None else None
    name = incident_name(alertname, fingerprint, starts_at)
    if status == "resolved":
        return AlertAction(False, wanted, name)

    spec: dict[str, Any] = {"alert": alertname}
    severity = SEVERITIES.get(str(labels.get("severity", "")).strip().lower())
    if severity:
        spec["severity"] = severity
    for key, limit in (("summary", SUMMARY_MAX), ("description", DESCRIPTION_MAX)):
        text = annotations.get(key)
        if text is not None and text != "":
            spec[key] = _stringify(text)[:limit]
    spec["labels"] = {str(k): _stringify(v)[:LABEL_VALUE_MAX] for k, v in sorted(labels.items())[:LABELS_MAX]}
    source: dict[str, Any] = {"kind": "Alertmanager", "fingerprint": fingerprint}
    if starts_at:
        source["startsAt"] = starts_at
    if generator:
        source["generatorURL"] = generator[:GENERATOR_URL_MAX]
    spec["source"] = source
    return AlertAction(True, wanted, name, spec)


def parse_payload(payload: Any, max_alerts: int = MAX_ALERTS) -> list[AlertAction]:
    """Every alert of a webhook payload as an action; PayloadError (naming the field) if any is bad."""
    body = _object(payload, "body")
    version = body.get("version")
    if version is None:
        raise PayloadError("version: required")
    if version != "4":
        raise PayloadError(f'version: must be "4", got {json.dumps(version)[:40]}')
    alerts = body.get("alerts")
    if alerts is None:
        raise PayloadError("alerts: required")
    if not isinstance(alerts, list):
        raise PayloadError("alerts: must be a list")
    if len(alerts) > max_alerts:
        raise TooManyAlerts(
            f"alerts: {len(alerts)} in one request, more than the {max_alerts} the intake takes "
            "(--intake-max-alerts); nothing was created. Set max_alerts in Alertmanager's webhook_config"
        )
    return [_alert(raw, f"alerts[{i}]") for i, raw in enumerate(alerts)]


def _number(text: str) -> str:
    if len(text) > MAX_NUMBER:
        raise PayloadError(f"body: a number of {len(text)} characters, more than {MAX_NUMBER}")
    return text


def _constant(name: str) -> Any:
    raise PayloadError(f"body: not valid JSON: {name} is not a JSON value")


def _deeper_than(value: Any, limit: int) -> bool:
    """Is ``value`` nested more than ``limit`` levels deep? Iterative: any depth is safe to ask about."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def parse_body(raw: bytes, max_alerts: int = MAX_ALERTS) -> list[AlertAction]:
    """The webhook body's actions. Refused before parsing it further: nesting deeper than MAX_DEPTH,
    numbers longer than MAX_NUMBER (a 5,000-digit integer is a ValueError of ``int``), NaN and Infinity."""
    deep = PayloadError(f"body: nested deeper than {MAX_DEPTH} levels")
    try:
        text = raw.decode("utf-8")
        payload = json.loads(
            text, parse_int=lambda s: int(_number(s)), parse_float=lambda s: float(_number(s)), parse_constant=_constant
        )
    except UnicodeDecodeError:
        raise PayloadError("body: not UTF-8") from None
    except json.JSONDecodeError as err:
        raise PayloadError(f"body: not valid JSON: {err}") from None
    except RecursionError:
        raise deep from None
    if _deeper_than(payload, MAX_DEPTH):
        raise deep
    return parse_payload(payload, max_alerts)


def load_token(path: str | None, environ: Mapping[str, str] = os.environ) -> str | None:
    """The bearer token from the file (surrounding whitespace stripped), else the env var; None: neither."""
    if path:
        token = Path(path).read_text(encoding="utf-8").strip()  # OSError is the caller's to report
        if not token:
            raise ValueError(f"{path} is empty")
        return token
    return environ.get(TOKEN_ENV, "").strip() or None


# -- I/O -----------------------------------------------------------------------------


class ApiError(Exception):
    """A Kubernetes API failure; ``permanent``: retrying the same request will not help."""

    def __init__(self, message: str, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


class Incidents(Protocol):
    async def create_incident(self, namespace: str, manifest: Mapping[str, Any]) -> bool:
        """True: created; False: it exists. ApiError otherwise."""

    async def resolve_incident(self, namespace: str, name: str) -> bool:
        """True: spec.resolved set; False: no such Incident. ApiError otherwise."""

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
    options: Options = Options()
    max_bytes: int = MAX_BYTES


def parse_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"invalid address {text!r}: expected HOST:PORT, e.g. 0.0.0.0:8082")
    return host or "127.0.0.1", int(port)


def _error(status: int, message: str) -> web.Response:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return web.json_response({"error": message}, status=status, headers=headers)


def _authorized(header: str, token: str | None) -> bool:
    if token is None:
        return True
    scheme, _, given = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


def build_app(
    settings: Settings,
    incidents: Incidents,
    counters: Counters | None = None,
    ready: Callable[[], bool] = lambda: True,
) -> web.Application:
    """The webhook, and ``GET /readyz`` for the Deployment's readiness probe: 200 once the
    operator watches and the intake serves, so a Service sends alerts only to replicas that
    take them (every replica takes them: creates are idempotent, leader or not)."""
    opt_ins = OptIns(incidents)

    def count(kind: str, value: str) -> None:
        if counters is not None:
            {"alert": counters.alert, "rejected": counters.rejected, "redirected": counters.redirected}[kind](value)

    async def placements(actions: list[AlertAction]) -> list[Placement]:
        """Each action's placement; a namespace's label is read only when the flags do not decide."""
        options = settings.options
        first = [place(action.wanted, options) for action in actions]
        asking = {a.wanted for a, p in zip(actions, first, strict=True) if p.reason == NOT_OPTED_IN and a.wanted}
        labelled = {namespace for namespace in sorted(asking) if await opt_ins.opted_in(namespace)}
        placed = [place(a.wanted, options, a.wanted in labelled) for a in actions]
        for placement in placed:
            if placement.reason:
                count("redirected", placement.reason)
        for why, n in collections.Counter(p.why for p in placed if p.reason).items():
            log.warning("intake: %d alert(s) went to namespace %s: %s", n, options.namespace, why)
        return placed

    async def receive(request: web.Request) -> web.Response:
        if not _authorized(request.headers.get("Authorization", ""), settings.token):
            count("rejected", "unauthorized")
            return _error(401, "missing or wrong bearer token")
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            count("rejected", "too_large")
            return _error(413, f"body: larger than {settings.max_bytes} bytes")
        try:
            actions = parse_body(raw, settings.options.max_alerts)
        except PayloadError as err:
            count("rejected", "too_many_alerts" if isinstance(err, TooManyAlerts) else "malformed")
            return _error(err.status, str(err))
        try:
            placed = await placements(actions)
        except ApiError as err:
            log.warning("intake: reading a Namespace's %s label: %s", OPT_IN_LABEL, err)
            message = f"reading a Namespace's {OPT_IN_LABEL} label: {err}; nothing was created"
            return _error(422 if err.permanent else 503, message)
        results = {"created": 0, "duplicate": 0, "resolved": 0, "unknown_resolved": 0}
        for action, placement in zip(actions, placed, strict=True):
            try:
                if action.firing:
                    done = await incidents.create_incident(placement.namespace, action.manifest(placement))
                    result = "created" if done else "duplicate"
                else:
                    done = await incidents.resolve_incident(placement.namespace, action.name)
                    result = "resolved" if done else "unknown_resolved"
            except ApiError as err:
                count("alert", "failed")
                where = f"incident {placement.namespace}/{action.name}"
                log.warning("intake: %s: %s", where, err)
                # 5xx makes Alertmanager retry the whole batch (idempotent); 4xx does not
                return _error(422 if err.permanent else 503, f"{where}: {err}")
            results[result] += 1
            count("alert", result)
        return web.json_response(results)

    async def readyz(request: web.Request) -> web.Response:
        if ready():
            return web.Response(text="ok\n")
        return web.Response(status=503, text="not ready: the operator is starting or stopping\n")

    app = web.Application(client_max_size=settings.max_bytes)
    app.router.add_post(PATH, receive)
    app.router.add_get(READY_PATH, readyz)
    return app


async def start(
    settings: Settings,
    incidents: Incidents,
    counters: Counters | None = None,
    ready: Callable[[], bool] = lambda: True,
) -> web.AppRunner:
    """Serve the intake on the running loop; ``await runner.cleanup()`` stops it."""
    runner = web.AppRunner(build_app(settings, incidents, counters, ready), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, settings.host, settings.port).start()
    except BaseException:
        await runner.cleanup()
        raise
    auth = "bearer token" if settings.token else "NO AUTHENTICATION (--intake-insecure)"
    log.info("Alertmanager intake on http://%s:%d%s (%s)", settings.host, settings.port, PATH, auth)
    return runner
