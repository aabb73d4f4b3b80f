"""Silences around a fix, in the pure core (issue 26): a silence a step created is recorded in
status, and the incident's end (resolved or escalated) asks the engine to expire it, once."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

from runbook_operator.domain.lifecycle import Decision, StepResult, complete, decide
from runbook_operator.domain.model import Incident
from runbook_operator.domain.status import Status
from runbook_operator.domain.wire import timestamp
from tests.unit.builders import check, policy, request

T0 = datetime(2026, 12, 8, 3, 0, tzinfo=UTC)
AM = "http://alertmanager.monitoring.svc:9093"
SILENCE = {"name": "silence", "action": "alertmanager.silence", "with": {"url": AM, "duration": "1h"}}


def drive(verified: bool, resolved_externally: bool = False) -> tuple[Status, list[Decision]]:
    """Run the incident through diagnose, a silence and a restart, and verify; the decisions seen."""
    pol = policy("im", match={"alerts": ["InstanceManagerDown"]}, diagnose=[check("ping")],
                 remediate=[SILENCE, request("restart", requiresApproval=False)], verify=[check("healthy")])  # fmt: skip
    inc = Incident.from_body({"metadata": {"name": "i", "namespace": "ns", "uid": "u1", "generation": 1},
                              "spec": {"alert": "InstanceManagerDown", "labels": {"service": "im"}}})  # fmt: skip
    status, now, seen = Status(), T0, list[Decision]()
    nonces = (f"n{i}" for i in itertools.count())
    for _ in range(30):
        decision = decide(inc, status, [pol], now, nonce=next(nonces))
        seen.append(decision)
        status = decision.status
        if decision.run is None:
            break
        step = decision.run.step.name
        silence = (AM, "s-1", timestamp(now + timedelta(hours=1))) if step == "silence" else None
        ok = verified or step != "healthy"
        status, _ = complete(status, decision.run, StepResult(ok, "ok" if ok else "no", silence=silence), now)
        if resolved_externally and step == "restart":
            inc = Incident.from_body({"metadata": {"name": "i", "namespace": "ns", "uid": "u1", "generation": 2},
                                      "spec": {"alert": "InstanceManagerDown", "resolved": True}})  # fmt: skip
    return status, seen


def test_the_silence_is_recorded_and_expired_once_the_incident_resolves() -> None:
    status, seen = drive(verified=True)
    assert status.phase == "Resolved"
    [silence] = status.silences
    assert (silence.id, silence.url, silence.step, silence.expiredAt) == ("s-1", AM, "silence", None)
    assert seen[-1].expire == (silence,) and seen[-1].run is None
    assert all(not d.expire for d in seen[:-1])  # nothing is expired while remediating
    done = status.silences_expired(["s-1"], T0 + timedelta(seconds=5))
    assert done.silences[0].expiredAt == timestamp(T0 + timedelta(seconds=5))
    inc = Incident.from_body({"metadata": {"name": "i", "namespace": "ns", "uid": "u1", "generation": 1},
                              "spec": {"alert": "InstanceManagerDown"}})  # fmt: skip
    again = decide(inc, done, [], T0 + timedelta(seconds=6), nonce="x")
    assert again.expire == ()  # expired once, never again
    assert Status.from_dict(done.to_dict()).silences == done.silences  # it survives a restart


def test_an_escalated_incident_expires_its_silence_so_alertmanager_pages_again() -> None:
    status, seen = drive(verified=False)
    assert status.phase == "Escalated"
    assert [s.id for s in seen[-1].expire] == ["s-1"]


def test_an_incident_resolved_by_its_alert_expires_the_silence_too() -> None:
    status, seen = drive(verified=True, resolved_externally=True)
    assert status.phase == "Resolved" and [s.id for s in seen[-1].expire] == ["s-1"]


def test_a_silence_past_its_own_end_is_not_expired_again() -> None:
    status, _ = drive(verified=True)
    inc = Incident.from_body({"metadata": {"name": "i", "namespace": "ns", "uid": "u1", "generation": 1},
                              "spec": {"alert": "InstanceManagerDown"}})  # fmt: skip
    assert decide(inc, status, [], T0 + timedelta(hours=1, seconds=1), nonce="x").expire == ()


async def test_an_operator_restarted_after_the_end_still_expires_the_silence() -> None:
    """Killed between the write that resolved the incident and the silence's expiry: the next
    operator finds the open silence in status and expires it, though it keeps resolved incidents."""
    from runbook_operator.actions.catalog import default_registry
    from runbook_operator.engine.executor import Executor
    from runbook_operator.engine.reconciler import Reconciler
    from tests.fixtures.listeners import Listener
    from tests.unit.builders import incident_body
    from tests.unit.test_reconciler import MemoryCluster, wait_until

    alertmanager = Listener().start()
    try:
        body = incident_body("i", "u1")
        ends = timestamp(datetime.now(UTC) + timedelta(hours=1))
        body["status"] = {"phase": "Resolved", "silences": [{"id": "s-1", "url": alertmanager.url, "endsAt": ends}]}
        cluster = MemoryCluster()
        reconciler = Reconciler(cluster, Executor(default_registry()), lambda ns: [], resolved_ttl=None)
        reconciler.observe(body)
        await wait_until(lambda: any(w.get("silences", [{}])[0].get("expiredAt") for w in cluster.writes))
        assert [(m, p) for m, p, _ in alertmanager.requests] == [("DELETE", "/api/v2/silence/s-1")]
        assert reconciler.silences() == 0
        await wait_until(lambda: reconciler.active == 0)
        await reconciler.stop()
    finally:
        alertmanager.stop()
