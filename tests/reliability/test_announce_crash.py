"""kill -9 while a status change is being announced: the restarted operator does not tell it
again, goes on with the incident, and tells the next change once. Counted at the receiver."""

from __future__ import annotations

import time

from tests.fixtures.cluster import Kubectl
from tests.fixtures.common import wait_for
from tests.fixtures.operator import OperatorProcess
from tests.reliability.conftest import GateServer, incident, policy, record, statuses, step


def test_an_announcement_cut_off_by_kill_9_is_not_sent_again_and_the_next_one_is_sent_once(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str, gates: GateServer
) -> None:
    g = gates.url
    gates.shut("told")
    tell = step("tell", "notify.webhook", timeout="60s", **{"with": {
        "url": f"{g}/gate/told/{{{{ announcement.phase }}}}", "format": "json"}})  # fmt: skip
    kubectl.apply(
        policy("p", namespace, severity="Critical",
               diagnose=[step("probe", "http.check", **{"with": {"url": f"{g}/done/nothing"}})],
               remediate=[step("fix", "http.request", **{"with": {"url": f"{g}/gate/fix"}})],
               verify=[step("fixed", "http.check", **{"with": {"url": f"{g}/done/fix"}})],
               announce=[{"phases": ["Diagnosing", "Resolved"], "notify": [tell]}]),
        incident("told", namespace, "p"),
    )  # fmt: skip
    wait_for(lambda: gates.waiting["told"] == 1, 60, "the Diagnosing announcement held at the receiver")
    held = statuses(kubectl, namespace)["told"]
    assert record(held, "tell")["state"] == "Running" and held["phase"] == "Diagnosing"
    assert "/gate/fix" not in gates.calls  # the change is told before the next step

    operator.kill9()
    gates.open_all()  # the held message is delivered; the dead operator never hears so
    operator.start()
    wait_for(lambda: statuses(kubectl, namespace)["told"].get("phase") == "Resolved", 60, "the incident to resolve")
    wait_for(
        lambda: all(a["done"] for a in statuses(kubectl, namespace)["told"]["announcements"]), 30, "the last message"
    )
    time.sleep(2)  # room for a duplicate message to (wrongly) arrive

    assert gates.calls["/gate/told/Diagnosing"] == 1 and gates.calls["/gate/told/Resolved"] == 1, dict(gates.calls)
    assert gates.calls["/gate/fix"] == 1
    after = statuses(kubectl, namespace)["told"]
    cut = record(after, "tell", 1)
    assert cut["stage"] == "Announce" and cut["state"] == "Skipped" and "outcome unknown" in cut["message"]
    assert record(after, "tell", 2)["state"] == "Succeeded"
    assert [(a["number"], a["phase"], a["done"]) for a in after["announcements"]] == [
        (1, "Diagnosing", True), (2, "Resolved", True)]  # fmt: skip
    assert [e["reason"] for e in kubectl.events("told", namespace)].count("StepInterrupted") == 1
