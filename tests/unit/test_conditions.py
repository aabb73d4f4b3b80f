"""The one conditions helper both kinds use: stable order, transition time, observedGeneration."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

from runbook_operator.domain.conditions import Condition, dump, find, load, set_condition
from runbook_operator.entrypoints import handlers

T0 = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)


def test_a_new_condition_is_appended_and_a_changed_one_keeps_its_place() -> None:
    c = set_condition((), "Diagnosed", True, "DiagnosisComplete", "a", T0, 1)
    c = set_condition(c, "Resolved", False, "InProgress", "b", T0, 1)
    c = set_condition(c, "Diagnosed", False, "Other", "c", T0 + timedelta(minutes=1), 1)
    assert [x.type for x in c] == ["Diagnosed", "Resolved"]
    assert find(c, "Diagnosed") == Condition("Diagnosed", "False", "Other", "c", "2026-11-27T08:01:00Z", 1)


def test_the_transition_time_is_kept_unless_the_status_flips() -> None:
    c = set_condition((), "Ready", True, "Valid", "ok", T0, 1)
    same = set_condition(c, "Ready", True, "Valid", "ok", T0 + timedelta(hours=1), 1)
    assert same == c  # nothing changed: nothing to write
    reworded = set_condition(c, "Ready", True, "Valid", "still ok", T0 + timedelta(hours=1), 1)
    assert reworded[0].lastTransitionTime == "2026-11-27T08:00:00Z"
    flipped = set_condition(reworded, "Ready", False, "InvalidPolicy", "bad", T0 + timedelta(hours=2), 1)
    assert flipped[0].lastTransitionTime == "2026-11-27T10:00:00Z"


def test_the_condition_carries_the_generation_it_describes() -> None:
    c = set_condition((), "Ready", True, "Valid", "ok", T0, 3)
    assert c[0].observedGeneration == 3
    newer = set_condition(c, "Ready", True, "Valid", "ok", T0 + timedelta(minutes=1), 4)
    assert newer != c and newer[0].observedGeneration == 4
    assert newer[0].lastTransitionTime == c[0].lastTransitionTime


def test_load_and_dump_round_trip_and_ignore_fields_this_version_does_not_know() -> None:
    raw = [{"type": "Ready", "status": "True", "reason": "Valid", "message": "m",
            "lastTransitionTime": "2026-11-27T08:00:00Z", "futureKey": 1}]  # fmt: skip
    loaded = load(raw)
    assert dump(loaded) == [{k: v for k, v in raw[0].items() if k != "futureKey"} | {"observedGeneration": 0}]
    assert load(None) == ()


class _Kube:
    def __init__(self) -> None:
        self.patches: list[tuple[str, str, str, dict[str, Any]]] = []
        self.events: list[tuple[str, str, str]] = []

    async def patch_status(
        self, plural: str, namespace: str, name: str, status: dict[str, Any], resource_version: str | None = None
    ) -> None:
        self.patches.append((plural, namespace, name, status))

    async def post_event(self, body: Any, type_: str, reason: str, message: str) -> None:
        self.events.append((type_, reason, message))


class _Reconciler:
    def wake_namespace(self, namespace: str) -> None:
        pass


def _policy(generation: int, status: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "metadata": {"name": "p", "namespace": "ns", "generation": generation},
        "spec": {
            "match": {"alertname": "A"},
            "remediate": [{"name": "s", "action": "http.check", "with": {"url": "http://x.local/"}}],
        },
        "status": status or {},
    }


async def test_the_policy_handler_writes_ready_with_the_injected_clock_once() -> None:
    kube = _Kube()
    runtime = handlers.Runtime(handlers.Config(clock=lambda: T0), kube=kube, reconciler=_Reconciler())  # type: ignore[arg-type]
    memo = handlers.memo(runtime)
    await handlers.policy_event({"type": "ADDED"}, _policy(2), "ns", memo)  # type: ignore[arg-type]
    (plural, _, name, status) = kube.patches[0]
    assert (plural, name, status["observedGeneration"]) == ("remediationpolicies", "p", 2)
    assert status["conditions"] == [{"type": "Ready", "status": "True", "reason": "Valid",
                                     "message": "the policy is valid", "lastTransitionTime": "2026-11-27T08:00:00Z",
                                     "observedGeneration": 2}]  # fmt: skip
    assert kube.events == [("Normal", "Valid", "the policy is valid")]
    await handlers.policy_event({"type": "MODIFIED"}, _policy(2, status), "ns", copy.copy(memo))  # type: ignore[arg-type]
    assert len(kube.patches) == 1  # unchanged: no write, no Event
