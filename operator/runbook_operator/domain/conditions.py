"""Status conditions, for every kind this operator writes (an Incident's, a RemediationPolicy's ``Ready``).

``set_condition`` keeps ``kubectl get -o yaml`` calm: a condition keeps the place it
first appeared in, and its ``lastTransitionTime`` moves only when its status flips.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from runbook_operator.domain.wire import known, timestamp


@dataclass(frozen=True)
class Condition:
    type: str
    status: str
    reason: str
    message: str
    lastTransitionTime: str
    observedGeneration: int = 0

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Condition:
        return cls(**known(cls, raw))


def load(raw: Iterable[Mapping[str, Any]] | None) -> tuple[Condition, ...]:
    return tuple(Condition.from_dict(item) for item in raw or ())


def dump(conditions: Iterable[Condition]) -> list[dict[str, Any]]:
    return [asdict(c) for c in conditions]


def find(conditions: Iterable[Condition], type_: str) -> Condition | None:
    return next((c for c in conditions if c.type == type_), None)


def set_condition(
    conditions: tuple[Condition, ...],
    type_: str,
    ok: bool,
    reason: str,
    message: str,
    now: datetime,
    generation: int,
) -> tuple[Condition, ...]:
    """The conditions with ``type_`` set: in place if present (else appended), its transition
    time kept unless the status flips, stamped with the generation it describes."""
    value = "True" if ok else "False"
    old = find(conditions, type_)
    since = old.lastTransitionTime if old is not None and old.status == value else timestamp(now)
    new = Condition(type_, value, reason, message, since, generation)
    if old is None:
        return (*conditions, new)
    return tuple(new if c.type == type_ else c for c in conditions)
