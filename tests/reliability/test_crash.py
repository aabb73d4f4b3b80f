"""kill -9 of the operator while incidents are in every phase at once; the restarted operator finishes them.

Each incident is held mid-phase by a shut gate (its step is Running in .status when the
process dies), except the one awaiting approval, which is approved while no operator runs.
The gate server counts every call, so "ran at most once" and "notified once per level"
are counted by the receiving end, not read from the operator's own status.
"""

from __future__ import annotations

import time

from runbook_operator.entrypoints import cli
from tests.fixtures.cluster import ONCALL, Kubectl
from tests.fixtures.common import wait_for
from tests.fixtures.operator import OperatorProcess
from tests.reliability.conftest import GateServer, conditions, incident, policy, record, statuses, step


def check(url: str, **extra: object) -> dict[str, object]:
    return {"url": url, **extra}


def test_kill_9_in_every_phase_then_every_incident_finishes_once(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str, gates: GateServer, approver: Kubectl
) -> None:
    g = gates.url
    for name in ("diag", "rem", "ver", "page1"):
        gates.shut(name)
    hook = {"format": "json"}
    kubectl.apply(
        policy("p-diag", namespace,
               diagnose=[step("probe", "http.check", timeout="60s", **{"with": check(f"{g}/gate/diag")})],
               remediate=[step("fix", "http.request", **{"with": check(f"{g}/gate/diag-fix")})],
               verify=[step("fixed", "http.check", **{"with": check(f"{g}/done/diag-fix")})]),
        policy("p-rem", namespace,
               remediate=[step("failover", "http.request", requiresApproval=False, timeout="60s",
                               **{"with": check(f"{g}/gate/rem", destructive=True)})],
               verify=[step("fixed", "http.check", retries=20, backoff="250ms",
                            **{"with": check(f"{g}/done/rem")})]),
        policy("p-ver", namespace,
               remediate=[step("failover", "http.request", requiresApproval=False,
                               **{"with": check(f"{g}/gate/ver-fix", destructive=True)})],
               verify=[step("fixed", "http.check", timeout="60s", **{"with": check(f"{g}/gate/ver")})]),
        policy("p-esc", namespace,
               remediate=[step("fix", "http.request", **{"with": check(f"{g}/fail/esc")})],
               limits={"maxAttempts": 1},
               escalate={"levels": [
                   {"name": "on-call", "notify": [step("page", "notify.webhook", timeout="60s",
                                                       **{"with": check(f"{g}/gate/page1", **hook)})]},
                   {"name": "lead", "after": "15s", "notify": [step("page-lead", "notify.webhook",
                                                                    **{"with": check(f"{g}/gate/page2", **hook)})]},
               ]}),
        policy("p-appr", namespace,
               remediate=[step("failover", "http.request", **{"with": check(f"{g}/gate/appr", destructive=True)})],
               verify=[step("fixed", "http.check", **{"with": check(f"{g}/done/appr")})]),
    )  # fmt: skip
    kubectl.apply(*(incident(n, namespace, f"p-{n}") for n in ("diag", "rem", "ver", "esc", "appr")))

    held = {"diag": "diag", "rem": "rem", "ver": "ver", "esc": "page1"}
    try:
        wait_for(lambda: all(gates.waiting[g] == 1 for g in held.values()), 60, f"steps held at {held}")
    except AssertionError as err:
        timelines = {n: [t["message"] for t in s.get("timeline", [])] for n, s in statuses(kubectl, namespace).items()}
        raise AssertionError(
            f"{err}; waiting: {dict(gates.waiting)}; calls: {dict(gates.calls)}; {timelines}"
        ) from None
    want = {"diag": "Diagnosing", "rem": "Remediating", "ver": "Verifying", "esc": "Escalated",
            "appr": "AwaitingApproval"}  # fmt: skip
    wait_for(lambda: {n: s.get("phase") for n, s in statuses(kubectl, namespace).items()} == want, 30, f"phases {want}")
    before = statuses(kubectl, namespace)
    for name, step_name in (("diag", "probe"), ("rem", "failover"), ("ver", "fixed"), ("esc", "page")):
        assert [s["state"] for s in before[name]["steps"] if s["name"] == step_name] == ["Running"], name

    operator.kill9()
    gates.open_all()  # the held calls now finish on the servers' side: their effects happened, nobody hears back
    approve = ["approve", "appr", "failover", "-n", namespace, "--yes", f"--kubeconfig={kubectl.kubeconfig}"]
    assert cli.main([*approve, "--as=alice", f"--as-group={ONCALL}"]) == 0  # the request the dead operator made
    restarted = time.monotonic()
    operator.start()

    def finished() -> bool:
        now = statuses(kubectl, namespace)
        fired = now["esc"].get("escalation", {}).get("fired")
        return all(now[n].get("phase") == "Resolved" for n in ("diag", "rem", "ver", "appr")) and fired == [
            "on-call", "lead"]  # fmt: skip

    wait_for(finished, 60, "every incident to finish after the restart")
    took = time.monotonic() - restarted
    time.sleep(2)  # room for a duplicate call to (wrongly) happen
    after = statuses(kubectl, namespace)

    # read-only steps run again; the destructive ones and the notification ran exactly once
    assert dict(gates.calls) == {
        "/gate/diag": 2, "/gate/diag-fix": 1, "/done/diag-fix": 1,
        "/gate/rem": 1, "/done/rem": gates.calls["/done/rem"],
        "/gate/ver-fix": 1, "/gate/ver": 2,
        "/fail/esc": 1, "/gate/page1": 1, "/gate/page2": 1,
        "/gate/appr": 1, "/done/appr": 1,
    }, dict(gates.calls)  # fmt: skip
    for name in ("diag", "rem", "ver", "appr"):
        assert conditions(after[name])["Resolved"] == ("True", "Verified"), (name, after[name]["timeline"])
    interrupted = record(after["rem"], "failover")
    assert interrupted["state"] == "Skipped" and "outcome unknown" in interrupted["message"]
    page = next(s for s in after["esc"]["steps"] if s["stage"] == "Escalate" and s["attempt"] == 1)
    assert page["state"] == "Skipped" and "outcome unknown" in page["message"]
    assert record(after["diag"], "probe")["state"] == "Succeeded"
    assert record(after["ver"], "fixed")["state"] == "Succeeded"
    approved = record(after["appr"], "failover")
    assert approved["state"] == "Succeeded" and approved["approvedBy"] == "alice"
    assert conditions(after["esc"])["Escalated"] == ("True", "RemediationExhausted")

    def reasons(name: str) -> list[str]:
        return [e["reason"] for e in kubectl.events(name, namespace)]

    assert reasons("rem").count("StepInterrupted") == 1 and reasons("esc").count("StepInterrupted") == 1
    assert reasons("diag").count("StepResumed") == 1 and reasons("ver").count("StepResumed") == 1
    assert reasons("esc").count("EscalationLevelReached") == 2
    assert operator.alive()
    print(f"all five finished {took:.1f}s after the restart")
