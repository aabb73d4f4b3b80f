"""How status values are spelled in the API's JSON: timestamps, loading only known fields, and
text cut to a bound or made printable."""

from __future__ import annotations

import functools
import unicodedata
from collections.abc import Collection, Mapping
from dataclasses import fields
from datetime import UTC, datetime
from typing import Any


@functools.lru_cache(maxsize=4096)  # the same few instants are written and read again all through a replay
def timestamp(now: datetime) -> str:
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@functools.lru_cache(maxsize=4096)
def parse_timestamp(text: str) -> datetime:
    """``timestamp``'s text back (``2026-11-27T08:00:00Z`` and nothing else: ValueError)."""
    if len(text) != 20 or text[4] != "-" or text[10] != "T" or text[13] != ":" or text[19] != "Z":
        raise ValueError(f"time data {text!r} does not match format '%Y-%m-%dT%H:%M:%SZ'")
    return datetime.fromisoformat(text[:19]).replace(tzinfo=UTC)  # C-fast; strptime was 50 us a call


def clipped(text: str, limit: int) -> str:
    """``text``, or its first ``limit - 3`` characters and "..." when it is longer than ``limit``."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


# bidirectional controls: they reorder how the text around them is shown ("Trojan Source"),
# so alert text could make a message or report read differently from what it holds
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def printable(text: str) -> str:
    """Control characters (CR and LF among them) and bidirectional controls as spaces: for
    one-line fields, headers and the report."""
    return "".join(" " if c in _BIDI or unicodedata.category(c) == "Cc" else c for c in text)


def known(kind: type, raw: Mapping[str, Any], exclude: Collection[str] = ()) -> dict[str, Any]:
    """Only the fields this version knows: a status written by a newer operator still loads."""
    names = _field_names(kind)
    if not exclude and raw.keys() <= names:  # the usual case, a status this version wrote: one set operation
        return dict(raw)
    return {k: v for k, v in raw.items() if k in names and k not in exclude}


@functools.cache
def _field_names(kind: type) -> frozenset[str]:
    return frozenset(f.name for f in fields(kind))


def plain(value: Any) -> Any:
    """``value`` as plain JSON data: any Mapping a dict, any list or tuple a list (a Kopf body's
    views, frozen mappings), so it serializes and compares as what the API server sent."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value
