"""Two replicas on the real control plane, operators as processes (issue 14).

The session's own operator is stopped for these tests, so the two started here are the
only ones acting. Every destructive call and notification is counted by the server that
receives it (GateServer), never read from the operators' status. Takeover times are
printed and checked against the issue's targets; docs/reliability.md gives the figures.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from typing import Any

import pytest

from tests.fixtures.cluster import Kubectl
from tests.fixtures.common import wait_for
from tests.fixtures.operator import OperatorProcess
from tests.reliability.conftest import GateServer, Replicas, holder, incident, policy, statuses, step

TERMINAL = ("Resolved", "Escalated")


def leader_of(kubectl: Kubectl, group: Replicas) -> tuple[str, OperatorProcess]:
    who = wait_for(lambda: holder(kubectl) or None, 30, "a leader")
    name = group.name_of(who)
    return name, group.running[name]


def handed_over(kubectl: Kubectl, group: Replicas, old: str, timeout: float) -> str:
    """Wait until a replica other than ``old`` holds the Lease; its name."""

    def other() -> str | None:
        who = holder(kubectl)
        return group.name_of(who) if who and group.name_of(who) != old else None

    return str(wait_for(other, timeout, f"a replica other than {old} to hold the Lease"))


def held_fix(name: str, namespace: str, gate: str) -> dict[str, Any]:
    """A destructive call held open at the gate, then a check that its effect happened."""
    return policy(name, namespace, limits={"maxAttempts": 1},
                  remediate=[step("fix", "http.request", requiresApproval=False, timeout="90s",
                                  **{"with": {"url": f"{gate}/gate/{name}", "destructive": True}})],
                  verify=[step("fixed", "http.check", retries=30, backoff="1s", **{"with": {"url": f"{gate}/done/{name}"}})])  # fmt: skip


def test_kill_9_of_the_leader_mid_step_the_standby_finishes_it_once(
    kubectl: Kubectl, replicas: Replicas, namespace: str, gates: GateServer
) -> None:
    replicas.start(), replicas.start()
    takeovers: list[float] = []
    for run in range(5):
        name = f"held-{run}"
        gates.shut(name)
        kubectl.apply(held_fix(name, namespace, gates.url))
        kubectl.apply(incident(name, namespace, name))
        wait_for(lambda n=name: gates.waiting[n] == 1, 60, f"{name}'s destructive call held at the server")  # type: ignore[misc]
        leader, process = leader_of(kubectl, replicas)
        started = time.monotonic()
        process.kill9()
        del replicas.running[leader]
        new = handed_over(kubectl, replicas, leader, 30)
        takeovers.append(time.monotonic() - started)
        gates.open(name)
        wait_for(lambda n=name: statuses(kubectl, namespace)[n].get("phase") == "Resolved", 60, f"{name} resolved")  # type: ignore[misc]
        assert gates.calls[f"/gate/{name}"] == 1, (
            f"the destructive call of {name} ran {gates.calls[f'/gate/{name}']} times"
        )
        assert new in replicas.running
        replicas.start()  # the killed pod comes back, as a standby
    print(f"kill -9 takeover: median {statistics.median(takeovers):.1f} s, max {max(takeovers):.1f} s, {takeovers}")
    assert max(takeovers) <= 20, takeovers


def test_sigterm_of_the_leader_hands_over_within_3_seconds_and_the_intake_keeps_answering(
    kubectl: Kubectl, replicas: Replicas, namespace: str
) -> None:
    """A rolling upgrade stops the old pod with SIGTERM: it releases the Lease on the way out.
    Meanwhile alerts keep arriving at the replica that stays, and each gets a 2xx."""
    kubectl("label", "namespace", namespace, "remediation.ishchat.io/intake=enabled")
    replicas.start(), replicas.start()
    answers: list[int] = []
    posting = threading.Event()
    handovers: list[float] = []

    for run in range(3):
        leader, process = leader_of(kubectl, replicas)
        standby = next(op for n, op in replicas.running.items() if n != leader)
        assert "runbook_leader 1.0" in process.scrape() and "runbook_leader 0.0" in standby.scrape()
        posting.clear()

        def post(op: OperatorProcess = standby, run: int = run) -> None:
            i = 0
            while not posting.is_set():
                i += 1
                body = {"version": "4", "status": "firing", "alerts": [{
                    "status": "firing", "labels": {"alertname": "FailoverProbe", "namespace": namespace, "n": f"{run}-{i}"},
                    "annotations": {}, "startsAt": "2026-12-02T10:00:00Z", "fingerprint": f"{run:04x}{i:08x}"}]}  # fmt: skip
                answers.append(op.post_alerts(json.dumps(body).encode(), op.intake_token)[0])
                time.sleep(0.1)

        poster = threading.Thread(target=post, daemon=True)
        poster.start()
        started = time.monotonic()
        process.terminate()
        handed_over(kubectl, replicas, leader, 15)
        handovers.append(time.monotonic() - started)
        time.sleep(1)
        posting.set()
        poster.join()
        replicas.running.pop(leader).stop()
        replicas.start()
    print(f"SIGTERM handover: {handovers}; intake answers {len(answers)}, statuses {sorted(set(answers))}")
    assert max(handovers) <= 3, handovers
    assert answers and all(200 <= a < 300 for a in answers), sorted(set(answers))


@pytest.mark.parametrize("replicas", [False], indirect=True)
def test_split_brain_two_operators_without_election_never_double_an_action(
    kubectl: Kubectl, replicas: Replicas, namespace: str, gates: GateServer
) -> None:
    """Both drive the same 200 Incidents: fencing alone keeps every destructive call, every page
    and every announcement to one, counted where they land; every Incident ends as it should."""
    replicas.start(), replicas.start()
    g = gates.url
    page = {"levels": [{"name": "on-call", "notify": [step("page", "notify.webhook",
            **{"with": {"url": f"{g}/gate/page-{{{{ incident.name }}}}", "format": "json"}})]}]}  # fmt: skip
    told = f"{g}/gate/told-{{{{ incident.name }}}}-{{{{ announcement.phase }}}}"
    announce = [{"phases": ["Diagnosing", "Escalated", "Resolved"],
                 "notify": [step("tell", "notify.webhook", **{"with": {"url": told, "format": "json"}})]}]  # fmt: skip
    kubectl.apply(
        policy("fixable", namespace, limits={"maxAttempts": 1}, escalate=page, announce=announce,
               remediate=[step("fix", "http.request", requiresApproval=False,
                               **{"with": {"url": f"{g}/gate/fix-{{{{ incident.name }}}}", "destructive": True}})],
               verify=[step("fixed", "http.check", retries=20, backoff="500ms",
                            **{"with": {"url": f"{g}/done/fix-{{{{ incident.name }}}}"}})]),
        policy("broken", namespace, limits={"maxAttempts": 1}, escalate=page, announce=announce,
               remediate=[step("fix", "http.request", requiresApproval=False,
                               **{"with": {"url": f"{g}/fail/fix-{{{{ incident.name }}}}", "destructive": True}})]),
    )  # fmt: skip
    names = {f"sb-{i:03d}": "fixable" if i % 2 else "broken" for i in range(200)}
    kubectl.apply(*(incident(n, namespace, p) for n, p in names.items()))

    def settled() -> bool:
        now = statuses(kubectl, namespace)
        return all(now.get(n, {}).get("phase") in TERMINAL for n in names)

    def told() -> bool:
        return all(
            all(a["done"] for a in s.get("announcements") or [{}]) for s in statuses(kubectl, namespace).values()
        )

    wait_for(settled, 300, "all 200 incidents to finish")
    wait_for(told, 60, "all 200 incidents' changes to be told")
    now = statuses(kubectl, namespace)
    for n, kind in names.items():
        if kind == "fixable":
            assert now[n]["phase"] == "Resolved", (n, now[n].get("phase"))
            assert gates.calls[f"/gate/fix-{n}"] == 1, (n, gates.calls[f"/gate/fix-{n}"])
            assert gates.calls[f"/gate/page-{n}"] == 0
        else:
            assert now[n]["phase"] == "Escalated", (n, now[n].get("phase"), now[n].get("timeline"))
            assert gates.calls[f"/fail/fix-{n}"] == 1, (n, gates.calls[f"/fail/fix-{n}"])
    time.sleep(3)  # a late duplicate notification would land now
    doubled = {
        n: gates.calls[f"/gate/page-{n}"]
        for n, k in names.items()
        if k == "broken" and gates.calls[f"/gate/page-{n}"] != 1
    }
    assert doubled == {}, doubled
    ends = {"fixable": "Resolved", "broken": "Escalated"}
    announced = {n: sorted(p for p in ("Diagnosing", "Escalated", "Resolved") if gates.calls[f"/gate/told-{n}-{p}"])
                 for n in names}  # fmt: skip
    assert announced == {n: sorted(["Diagnosing", ends[k]]) for n, k in names.items()}, announced
    twice = {p: c for p, c in gates.calls.items() if p.startswith("/gate/told-") and c != 1}
    assert twice == {}, twice
    conflicts = sum(op.log.read_text().count("deciding again") for op in replicas.running.values())
    print(f"split brain: 200 incidents, 100 fixes, 100 pages and 400 announcements each counted once; "
          f"{conflicts} fenced writes lost")  # fmt: skip
    assert conflicts > 0  # both really raced for the same Incidents


def test_a_rolling_upgrade_with_50_incidents_open_loses_none_and_doubles_none(
    kubectl: Kubectl, replicas: Replicas, namespace: str, gates: GateServer
) -> None:
    """The Deployment's rollout (maxUnavailable 0), as processes: a new pod starts, then the old
    one gets SIGTERM, one at a time, while 50 destructive calls are held open at the server."""
    replicas.start(), replicas.start()
    gates.shut("roll")
    g = gates.url
    kubectl.apply(policy("roll", namespace, limits={"maxAttempts": 1},
                         remediate=[step("fix", "http.request", requiresApproval=False, timeout="120s",
                                         **{"with": {"url": f"{g}/gate/roll/{{{{ incident.name }}}}", "destructive": True}})],
                         verify=[step("fixed", "http.check", retries=60, backoff="1s", **{"with": {"url": f"{g}/done/roll"}})]))  # fmt: skip
    names = [f"roll-{i:02d}" for i in range(50)]
    kubectl.apply(*(incident(n, namespace, "roll") for n in names))
    wait_for(lambda: gates.waiting["roll"] == 50, 90, "50 destructive calls held open")
    for _ in range(2):  # replace both old pods
        old, process = leader_of(kubectl, replicas)
        replicas.start()
        process.terminate()
        # only that it happens, its time is measured by the SIGTERM test; a stop that took 60 s here was
        # a verify step that did not take its cancel (test_a_cancel_that_meets_the_end_of_a_try_...)
        handed_over(kubectl, replicas, old, 30)
        replicas.running.pop(old).stop()
    gates.open("roll")
    wait_for(lambda: all(statuses(kubectl, namespace).get(n, {}).get("phase") == "Resolved" for n in names), 120,
             "every incident resolved")  # fmt: skip
    assert {n: gates.calls[f"/gate/roll/{n}"] for n in names} == dict.fromkeys(names, 1)
