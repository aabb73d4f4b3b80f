"""How status values are spelled in the API's JSON: timestamps, loading only known fields, and
text cut to a bound."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import fields
from datetime import UTC, datetime
from typing import Any


def timestamp(now: datetime) -> str:
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_timestamp(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def clipped(text: str, limit: int) -> str:
    """``text``, or its first ``limit - 3`` characters and "..." when it is longer than ``limit``."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def known(kind: type, raw: Mapping[str, Any], exclude: Collection[str] = ()) -> dict[str, Any]:
    """Only the fields this version knows: a status written by a newer operator still loads."""
    names = {f.name for f in fields(kind)} - set(exclude)
    return {k: v for k, v in raw.items() if k in names}
