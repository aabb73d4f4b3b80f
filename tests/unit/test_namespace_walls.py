"""Namespaces are walls in the pure core: locks, cooldowns and duplicates count only incidents of
the same namespace, and an incident about another namespace's target runs nothing (issue 13)."""

from dataclasses import replace
from datetime import timedelta

from runbook_operator.domain.lifecycle import Peer, decide
from runbook_operator.domain.status import Phase, Status
from tests.unit.builders import incident
from tests.unit.test_lifecycle import T0
from tests.unit.test_lifecycle_safety import TARGET, on_target, peer

# team-a's decoy names team-b's Deployment: same target string, Deployment/ns/instance-manager
DECOY = {"namespace": "team-a", "alert": "RedisDown", "created": "2026-11-27T07:00:00Z"}


def test_a_decoy_in_another_namespace_does_not_make_an_incident_a_duplicate() -> None:
    run = on_target()
    run.inc = replace(run.inc, created="2026-11-27T08:00:00Z")
    run.peers = [peer("decoy", phase="Diagnosing", **DECOY)]  # type: ignore[arg-type]
    run.drive()
    assert run.status.duplicateOf is None and run.condition("Resolved") == ("True", "Verified")
    assert ("restart", 1) in run.ran


def test_the_same_peer_in_the_same_namespace_still_is_a_duplicate() -> None:
    run = on_target()
    run.inc = replace(run.inc, created="2026-11-27T08:00:00Z")
    run.peers = [peer("first", phase="Diagnosing", **(DECOY | {"namespace": "ns"}))]  # type: ignore[arg-type]
    run.drive()
    assert run.status.duplicateOf == "first" and run.condition("Resolved") == ("True", "Duplicate")


def test_a_lock_held_in_another_namespace_does_not_hold_this_one() -> None:
    run = on_target()
    run.peers = [peer("decoy", remediating=True, namespace="team-a")]
    run.drive()
    assert ("restart", 1) in run.ran and not any(e.reason == "TargetLocked" for e in run.events)


def test_a_cooldown_from_another_namespace_does_not_delay_this_one() -> None:
    run = on_target()
    recent = T0 - timedelta(minutes=1)
    run.peers = [peer("decoy", phase="Resolved", last_remediated=recent, namespace="team-a")]
    run.drive(horizon=timedelta(seconds=1))
    assert ("restart", 1) in run.ran


def test_peers_know_their_namespace() -> None:
    inc = incident(target=TARGET, namespace="team-b")
    assert Peer.of(inc, Status()).namespace == "team-b"


def test_an_incident_about_another_namespace_runs_nothing_and_says_why() -> None:
    hostile = incident(target=TARGET | {"namespace": "team-b"}, namespace="team-a")
    first = decide(hostile, Status(), on_target().candidates, T0, nonce="n0")
    assert first.run is None and first.status.phase == Phase.ESCALATED.value
    (condition,) = [c for c in first.status.conditions if c.type == "Escalated"]
    assert (condition.status, condition.reason) == ("True", "TargetOutsideNamespace")
    assert condition.message == (
        "spec.target.namespace 'team-b' is not the incident's namespace 'team-a'; nothing runs: an Incident "
        "may only be about its own namespace. Create it in that namespace, or leave spec.target.namespace out"
    )
    assert [e.reason for e in first.events] == ["TargetOutsideNamespace"] and first.status.startedAt
    later = decide(hostile, first.status, on_target().candidates, T0 + timedelta(hours=2), nonce="n1")
    assert later.run is None and later.events == () and later.status == first.status  # said once; no level fires


def test_an_incident_already_under_way_whose_target_moves_away_stops() -> None:
    run = on_target()
    first = decide(run.inc, Status(), run.candidates, T0, nonce="n0")
    assert first.run is not None and first.run.step.name == "restart"
    assert run.inc.target is not None
    moved = replace(run.inc, target=replace(run.inc.target, namespace="team-b"))  # spec.target edited meanwhile
    after = decide(moved, first.status, run.candidates, T0, nonce="n1")
    assert after.run is None and after.status.phase == Phase.ESCALATED.value
