"""Durations as Flux and Alertmanager write them: ``500ms``, ``30s``, ``5m``, ``1h30m``."""

import re

_PART = re.compile(r"(\d+)(ms|s|m|h)")
_WHOLE = re.compile(r"^(?:\d+(?:ms|s|m|h))+$")
_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Return seconds; raise ValueError with the offending text otherwise."""
    if not isinstance(text, str) or not _WHOLE.match(text):
        raise ValueError(f"invalid duration {text!r}: expected e.g. 500ms, 30s, 5m, 1h30m")
    return sum(int(n) * _SECONDS[unit] for n, unit in _PART.findall(text))


def format_duration(seconds: float) -> str:
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{hours}h" if hours else "", f"{minutes}m" if minutes else "", f"{secs}s" if secs else ""]
    return "".join(parts) or "0s"
