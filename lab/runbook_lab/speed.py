"""Lab speed: the pack and its alert rules with machine time compressed, nothing else changed.

A runbook waits minutes (``settle: 2m``, ``backoff: 30s``, ``rate(...[5m])``, ``for: 5m``)
because production traffic is slow to show a change. The lab's simulated traffic is scraped
every second, so the lab divides those durations by ``factor`` (30 by default: 5m → 10s).
What people decide on stays as written: approval timeouts, escalation delays, update
intervals and step timeouts. Pure functions over parsed YAML; the inputs are not modified.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from runbook_operator.domain.durations import format_duration, parse_duration

FACTOR = 30.0
MIN_WINDOW = 5.0  # seconds: a range vector needs a few 1s scrapes
MIN_WAIT = 1.0
_RANGE = re.compile(r"\[(\d+(?:ms|s|m|h))(:[^\]]*)?\]")


def scale(text: str, factor: float, floor: float = MIN_WAIT) -> str:
    """``text`` (a duration) divided by ``factor``, never below ``floor`` (or the original, if shorter)."""
    seconds = parse_duration(text)
    return format_duration(max(min(seconds, floor), seconds / factor))


def promql(expr: str, factor: float = FACTOR) -> str:
    """Range windows (``[5m]``) of a PromQL expression divided by ``factor``."""
    return _RANGE.sub(lambda m: f"[{scale(m.group(1), factor, MIN_WINDOW)}{m.group(2) or ''}]", expr)


def policy(doc: dict[str, Any], factor: float = FACTOR) -> dict[str, Any]:
    """A RemediationPolicy at lab speed: settle, backoffs, cooldown and PromQL windows scaled."""
    out = copy.deepcopy(doc)
    spec = out.get("spec", {})
    if "settle" in spec:
        spec["settle"] = scale(spec["settle"], factor)
    limits = spec.get("limits") or {}
    if "cooldown" in limits:
        limits["cooldown"] = scale(limits["cooldown"], factor)
    for stage in ("diagnose", "remediate", "verify"):
        for step in spec.get(stage) or ():
            if "backoff" in step:
                step["backoff"] = scale(step["backoff"], factor)
            params = step.get("with") or {}
            if step.get("action", "").startswith("prometheus.") and isinstance(params.get("query"), str):
                params["query"] = promql(params["query"], factor)
    return out


def rules(groups: list[dict[str, Any]], factor: float = FACTOR) -> list[dict[str, Any]]:
    """Prometheus rule groups at lab speed: ``for`` and range windows scaled."""
    out = copy.deepcopy(groups)
    for group in out:
        if "interval" in group:
            group["interval"] = "1s"
        for rule in group.get("rules", ()):
            rule["expr"] = promql(str(rule["expr"]), factor)
            if "for" in rule:
                rule["for"] = scale(rule["for"], factor)
    return out


def alertmanager(config: dict[str, Any], url: str, credentials_file: str) -> dict[str, Any]:
    """The pack's Alertmanager configuration pointed at a local intake, grouping in seconds.

    ``group_interval`` (10s) is also how long a resolved notification waits after the firing
    one: long enough for the operator's own verification to finish first, as in production.
    """
    out = copy.deepcopy(config)
    for receiver in out.get("receivers", ()):
        for hook in receiver.get("webhook_configs", ()):
            hook["url"] = url
            hook.setdefault("http_config", {}).setdefault("authorization", {})["credentials_file"] = credentials_file
    route = out.setdefault("route", {})
    for node in _routes(route):
        for key, value in (("group_wait", "1s"), ("group_interval", "10s")):
            if key in node or node is route:
                node[key] = value
    return out


def _routes(route: dict[str, Any]) -> list[dict[str, Any]]:
    return [route, *(child for sub in route.get("routes", ()) for child in _routes(sub))]
