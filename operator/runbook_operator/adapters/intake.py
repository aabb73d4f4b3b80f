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
import hashlib
import hmac
import json
import logging
import os
import re
import resource
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from aiohttp import HttpVersion11, web
from aiohttp.http_exceptions import HttpProcessingError

from runbook_operator.adapters import gate
from runbook_operator.domain.resources import API_VERSION

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
MAX_NAMESPACES = 64  # distinct namespaces one request may name; Alertmanager groups by namespace, so a few
OPT_IN_READS = 8  # Namespace reads in flight at once for one request
HEADER_TIMEOUT = 10.0  # seconds for a request's head (line and headers) to arrive (--intake-header-timeout)
BODY_TIMEOUT = 30.0  # seconds for its body (--intake-body-timeout)
MAX_CONNECTIONS = 256  # open at once (--intake-max-connections); never more than a quarter of RLIMIT_NOFILE
RESOLVE_TRIES = 3  # reads and fenced patches of one Incident another writer keeps moving
CREATED_BY_LABEL, CREATED_BY = "app.kubernetes.io/created-by", "runbook-operator-intake"  # on every Incident it creates
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


class TooManyNamespaces(PayloadError):
    """An alert's ``namespace`` label names more distinct namespaces than MAX_NAMESPACES: refused whole."""

    status = 413


@dataclass(frozen=True)
class Options:
    """How alerts map to namespaces, and how many one request may carry."""

    namespace: str = "default"  # --intake-namespace: where an Incident goes when its alert's namespace may not have it
    opted_in: frozenset[str] = frozenset()  # --intake-namespaces: opted in without the Namespace label
    watched: frozenset[str] | None = None  # -n: the namespaces the operator watches; None: all
    max_alerts: int = MAX_ALERTS
    max_namespaces: int = MAX_NAMESPACES  # distinct `namespace` labels in one request


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
    fingerprint: str = ""  # lowercase hex; a resolved alert resolves only the Incident created for it

    def manifest(self, placement: Placement) -> dict[str, Any]:
        """The Incident to create, in the namespace it was placed in."""
        metadata: dict[str, Any] = {
            "name": self.name,
            "namespace": placement.namespace,
            "labels": {CREATED_BY_LABEL: CREATED_BY},
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
    """``value`` in UTC, to the second, as ``YYYY-MM-DDTHH:MM:SSZ``. A time whose UTC falls
    outside the years 1 to 9999 (``9999-12-31T23:59:59-23:59``) is refused like any bad time:
    converting it is an OverflowError, which was a 500 and lost the whole batch."""
    if value is None or value == "":
        return None
    match = _TIME.fullmatch(value) if isinstance(value, str) else None
    try:
        if match is None:
            raise ValueError
        zone = "+00:00" if match.group(2) in ("Z", "z") else match.group(2)
        utc = datetime.fromisoformat(match.group(1) + zone).astimezone(UTC)
    except (ValueError, OverflowError):
        raise PayloadError(f"{where}: not an RFC 3339 time") from None
    return utc.replace(tzinfo=None).isoformat(timespec="seconds") + "Z"  # the year in 4 digits, as strftime is not


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
        return AlertAction(False, wanted, name, fingerprint=fingerprint)

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
    return AlertAction(True, wanted, name, spec, fingerprint)


def parse_payload(
    payload: Any, max_alerts: int = MAX_ALERTS, max_namespaces: int = MAX_NAMESPACES
) -> list[AlertAction]:
    """Every alert of a webhook payload as an action; PayloadError (naming the field) if any is
    bad: one bad alert refuses the whole batch, so a 4xx never leaves half of it written."""
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
    actions = [_alert(raw, f"alerts[{i}]") for i, raw in enumerate(alerts)]
    named = {action.wanted for action in actions if action.wanted is not None}
    if len(named) > max_namespaces:
        raise TooManyNamespaces(
            f"alerts: their namespace labels name {len(named)} namespaces, more than the {max_namespaces} "
            "one request may name; nothing was created. Group alerts by namespace in Alertmanager's route"
        )
    return actions


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


def parse_body(raw: bytes, max_alerts: int = MAX_ALERTS, max_namespaces: int = MAX_NAMESPACES) -> list[AlertAction]:
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
    return parse_payload(payload, max_alerts, max_namespaces)


def load_token(path: str | None, environ: Mapping[str, str] = os.environ) -> str | None:
    """The bearer token from the file (surrounding whitespace stripped), else the env var; None: neither."""
    if path:
        token = Path(path).read_text(encoding="utf-8").strip()  # OSError is the caller's to report
        if not token:
            raise ValueError(f"{path} is empty")
        return token
    return environ.get(TOKEN_ENV, "").strip() or None


def created_for(body: Mapping[str, Any], fingerprint: str) -> bool:
    """Did the intake create this Incident for the alert with ``fingerprint``? Its label
    ``CREATED_BY_LABEL: CREATED_BY`` and ``spec.source`` (kind Alertmanager, the fingerprint)
    say so. Only such an Incident may a resolved alert resolve: the name alone has a shape
    anyone can create (``payments-0123456789abcdef``)."""
    metadata, spec = body.get("metadata"), body.get("spec")
    labels = metadata.get("labels") if isinstance(metadata, dict) else None
    source = spec.get("source") if isinstance(spec, dict) else None
    return (
        isinstance(labels, dict)
        and labels.get(CREATED_BY_LABEL) == CREATED_BY
        and isinstance(source, dict)
        and source.get("kind") == "Alertmanager"
        and isinstance(source.get("fingerprint"), str)
        and source["fingerprint"].lower() == fingerprint
    )


def summary(counts: Mapping[str, int], shown: int = 5) -> str:
    """``counts`` (text → how often) as one line: the ``shown`` most frequent, then how many more."""
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    parts = [text if len(ranked) == 1 else f"{text} ({n}x)" for text, n in ranked[:shown]]
    if len(ranked) > shown:
        parts.append(f"and {len(ranked) - shown} more")
    return "; ".join(parts)


# -- I/O -----------------------------------------------------------------------------


class ApiError(Exception):
    """A Kubernetes API failure; ``permanent``: retrying the same request will not help."""

    def __init__(self, message: str, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


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
    options: Options = Options()
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
