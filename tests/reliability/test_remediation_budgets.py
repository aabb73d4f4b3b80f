"""RemediationBudgets on the real control plane (issue 26): limits across policies that hold
under a split brain and a kill -9, counted where the destructive calls land (GateServer)."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

import pytest

from runbook_operator.domain import consent
from tests.fixtures.cluster import Kubectl
from tests.fixtures.common import wait_for
from tests.fixtures.operator import OperatorProcess
from tests.reliability.conftest import API, GateServer, conditions, incident, policy, statuses, step
from tests.reliability.test_ha import Replicas

FIXES = "/gate/fix-"


def budget(name: str, namespace: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": API, "kind": "RemediationBudget", "metadata": {"name": name, "namespace": namespace},
            "spec": spec}  # fmt: skip


def fix_policy(namespace: str, gate: str, **spec: Any) -> dict[str, Any]:
    """One destructive fix per incident, needing no approval, then a check that it happened."""
    body = policy("fix", namespace, limits={"maxAttempts": 1, "approvalTimeout": "30m"},
                  remediate=[step("fix", "http.request", requiresApproval=False,
                                  **{"with": {"url": f"{gate}{FIXES}{{{{ incident.name }}}}", "destructive": True}})],
                  verify=[step("fixed", "http.check", retries=20, backoff="500ms",
                               **{"with": {"url": f"{gate}/done/fix-{{{{ incident.name }}}}"}})], **spec)  # fmt: skip
    body["metadata"]["labels"] = {"blast-radius": "restarts"}
    return body


def fixes(gates: GateServer) -> dict[str, int]:
    return {path.removeprefix(FIXES): n for path, n in gates.calls.items() if path.startswith(FIXES)}


def throttled(status: dict[str, Any]) -> bool:
    return status.get("phase") == "AwaitingApproval" and conditions(status).get("Throttled", ("", ""))[0] == "True"


def count(kubectl: Kubectl, namespace: str, names: Sequence[str]) -> tuple[int, int]:
    """(resolved, throttled) among these incidents."""
    now = statuses(kubectl, namespace)
    return (sum(now.get(n, {}).get("phase") == "Resolved" for n in names),
            sum(throttled(now.get(n, {})) for n in names))  # fmt: skip


def test_a_budget_of_2_lets_2_of_6_fixes_run_throttles_4_and_frees_up(
    kubectl: Kubectl, operator: OperatorProcess, approver: Kubectl, namespace: str, gates: GateServer
) -> None:
    kubectl.apply(
        budget("restarts", namespace, policySelector={"matchLabels": {"blast-radius": "restarts"}},
               remediations={"limit": 10, "window": "5m"}, destructiveSteps={"limit": 2, "window": "5m"}),
        fix_policy(namespace, gates.url),
    )  # fmt: skip
    names = [f"b-{i}" for i in range(6)]
    kubectl.apply(*(incident(n, namespace, "fix") for n in names))
    wait_for(lambda: count(kubectl, namespace, names) == (2, 4), 60, "2 incidents resolved and 4 throttled")
    time.sleep(2)  # a third fix would land now
    assert sorted(fixes(gates).values()) == [1, 1]

    waiting = next(n for n in names if throttled(statuses(kubectl, namespace)[n]))
    status = statuses(kubectl, namespace)[waiting]
    message = next(c["message"] for c in status["conditions"] if c["type"] == "Throttled")
    assert f"budget {namespace}/restarts: 2 of 2 destructive step(s) per 5m spent; frees up at 20" in message
    told = [e for e in kubectl.events(waiting, namespace) if e["reason"] == "Throttled"]
    assert told and told[-1]["type"] == "Warning"
    ledger = kubectl.get("remediationbudget", "restarts", namespace)["status"]
    assert ledger["destructiveUsed"] == 2 and ledger["remediationsUsed"] == 2 and ledger["nextFree"]
    assert sorted(s["kind"] for s in ledger["spent"]) == ["destructive", "destructive", "remediation", "remediation"]
    print(kubectl("get", "remediationbudgets", "-n", namespace).stdout)  # the README shows it
    row = kubectl("get", "remediationbudgets", "-n", namespace, "--no-headers").stdout.split()
    assert row[:6] == ["restarts", "2", "10", "5m", "2", "2"], row

    # a person approves one past the budget, with the same consent rules as any approval
    record = next(s for s in status["steps"] if s["state"] == "AwaitingApproval")
    patch = json.dumps(consent.append_patch("fix", record["attempt"], record["approvalRequest"]["nonce"], "alice"))
    approver("patch", "incident", waiting, "-n", namespace, "--type=json", "-p", patch)
    wait_for(lambda: statuses(kubectl, namespace)[waiting].get("phase") == "Resolved", 30, f"{waiting} to resolve")
    assert fixes(gates)[waiting] == 1 and sum(fixes(gates).values()) == 3
    spent = kubectl.get("remediationbudget", "restarts", namespace)["status"]["spent"]
    approved = sorted((s["kind"], s["incident"], s.get("approvedBy")) for s in spent if s.get("approvedBy"))
    assert approved == [(kind, f"{namespace}/{waiting}", "alice") for kind in ("destructive", "remediation")]
    assert conditions(statuses(kubectl, namespace)[waiting])["Throttled"] == ("False", "ApprovedPastBudget")

    # the window frees up: shortened to 10s, the last three run, at most two per window, unasked
    kubectl("patch", "remediationbudget", "restarts", "-n", namespace, "--type=merge", "-p",
            '{"spec": {"remediations": {"limit": 10, "window": "10s"}, "destructiveSteps": {"limit": 2, "window": "10s"}}}')  # fmt: skip
    wait_for(lambda: count(kubectl, namespace, names) == (6, 0), 120, "all six resolved")
    assert sorted(fixes(gates).values()) == [1] * 6
    freed = [
        conditions(s)["Throttled"]
        for n, s in statuses(kubectl, namespace).items()
        if n != waiting and "Throttled" in conditions(s)
    ]
    assert freed.count(("False", "BudgetAvailable")) == 3, freed

    def emptied() -> bool:  # the operator rewrites the ledger as spends leave the window, unasked
        ledger = kubectl.get("remediationbudget", "restarts", namespace)["status"]
        return not ledger.get("destructiveUsed") and not ledger.get("nextFree") and not ledger.get("spent")

    wait_for(emptied, 60, "the ledger to empty as its window passes")


def test_only_the_operator_writes_a_budgets_ledger(kubectl: Kubectl, namespace: str) -> None:
    """Someone allowed to patch remediationbudgets/status still cannot empty the ledger."""
    kubectl.apply(budget("restarts", namespace, destructiveSteps={"limit": 1, "window": "1h"}))
    kubectl.apply(
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "ledger", "namespace": namespace},
         "rules": [{"apiGroups": ["remediation.ishchat.io"], "resources": ["remediationbudgets", "remediationbudgets/status"],
                    "verbs": ["get", "patch", "update"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "ledger", "namespace": namespace},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "ledger"},
         "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "mallory"}]},
    )  # fmt: skip
    mallory = kubectl.as_user("mallory")
    done = mallory("patch", "remediationbudget", "restarts", "-n", namespace, "--subresource=status", "--type=merge",
                   "-p", '{"status": {"spent": []}}', check=False)  # fmt: skip
    assert done.returncode != 0
    assert (
        f"the status of budget {namespace}/restarts is its ledger, written by the operator only: user mallory"
        in done.stderr
    )


@pytest.mark.parametrize("replicas", [False], indirect=True)  # no election: both drive every incident
def test_split_brain_and_kill_9_with_a_budget_of_5_never_overspend(
    kubectl: Kubectl, replicas: Replicas, namespace: str, gates: GateServer
) -> None:
    """Two operators without election drive the same 200 Incidents under one budget of 5; one of
    them is killed with SIGKILL midway and comes back. At most 5 destructive calls land."""
    first, _ = replicas.start(), replicas.start()
    kubectl.apply(
        budget("five", namespace, destructiveSteps={"limit": 5, "window": "1h"}),
        fix_policy(namespace, gates.url),
    )
    names = [f"sb-{i:03d}" for i in range(200)]
    kubectl.apply(*(incident(n, namespace, "fix") for n in names))
    wait_for(lambda: sum(fixes(gates).values()) >= 2, 60, "the first fixes")
    first.kill9()
    replicas.start()
    wait_for(lambda: count(kubectl, namespace, names)[1] >= 195, 180, "195 incidents throttled")
    time.sleep(3)  # a late fix would land now
    landed = fixes(gates)
    resolved, held = count(kubectl, namespace, names)
    ledger = kubectl.get("remediationbudget", "five", namespace)["status"]
    conflicts = sum(op.log.read_text().count("deciding again") for op in replicas.running.values())
    print(f"split brain with a budget of 5: {sum(landed.values())} destructive calls across 200 incidents "
          f"({resolved} resolved, {held} throttled, {len(ledger['spent'])} spends); {conflicts} fenced writes lost")  # fmt: skip
    assert sum(landed.values()) <= 5 and all(n == 1 for n in landed.values()), landed
    assert len(ledger["spent"]) <= 5
    assert held >= 195
    assert conflicts > 0  # both really raced for the same Incidents
