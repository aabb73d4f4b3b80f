"""Alertmanager's webhook payload, read as Incidents: the intake's pure part.

A firing alert becomes an Incident named from its alert name, fingerprint and start time
(:func:`incident_name`: re-sending it names the same Incident; firing again after it
resolved is a new one); a resolved alert asks to resolve that Incident. :func:`parse_body`
and :func:`parse_payload` validate the whole payload before anything is written, and say
which field is wrong. Alert labels and annotations are untrusted: they only ever become spec
data, and the name comes from the sanitized alert name and the hex fingerprint, nothing else.

An alert's ``namespace`` label is only a wish: :func:`place` says where its Incident goes,
and why when not there. The HTTP server around this is ``adapters.intake``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from runbook_operator.domain.resources import API_VERSION

MAX_ALERTS = 1000  # per request (--intake-max-alerts); Alertmanager's webhook_config max_alerts keeps below it
MAX_DEPTH = 32  # of nested JSON; Alertmanager's payload is 4 deep
MAX_NUMBER = 32  # characters of one JSON number; Alertmanager's payload has small counts only
OPT_IN_LABEL = "remediation.ishchat.io/intake"  # a Namespace with this label "enabled" takes alerts' Incidents
REDIRECTED = "remediation.ishchat.io/intake-redirected"  # annotation: why the Incident is not where the alert said
MAX_NAMESPACES = 64  # distinct namespaces one request may name; Alertmanager groups by namespace, so a few
CREATED_BY_LABEL, CREATED_BY = "app.kubernetes.io/created-by", "runbook-operator-intake"  # on every Incident it creates

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
