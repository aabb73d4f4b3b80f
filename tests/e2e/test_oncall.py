"""`runbook-operator approve | ack | resolve` and the kubectl plugin, against the real control plane.

The identity always comes from the API server (SelfSubjectReview): impersonation (--as) is how
these tests become alice or carol, exactly as `kubectl --as` would.
"""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from runbook_lab.demo import DemoService
from runbook_operator.entrypoints import cli
from tests.e2e.conftest import ROOT, Kubectl, OperatorProcess
from tests.e2e.test_consent import approvals, failover_policy
from tests.e2e.test_foundation import awaiting, conditions, incident, settled
from tests.fixtures.cluster import ONCALL

BIN = Path(sys.executable).parent


def as_alice(kubectl: Kubectl) -> list[str]:
    return [f"--kubeconfig={kubectl.kubeconfig}", "--as=alice", f"--as-group={ONCALL}"]


@pytest.fixture
def waiting(kubectl: Kubectl, operator: OperatorProcess, namespace: str, demo: DemoService) -> dict[str, Any]:
    """The failover waits for approval; its POST body carries the incident's `user` label."""
    remediate = [{"name": "failover", "action": "http.request", "with": {
        "url": f"{demo.url}/admin/failover", "destructive": True, "json": {"user": "{{ incident.labels.user }}"}}}]  # fmt: skip
    kubectl.apply(failover_policy(namespace, demo, remediate=remediate))
    kubectl.apply(incident("consent", namespace, labels={"user": "bob"}))
    return awaiting(settled(kubectl, "consent", namespace, "AwaitingApproval"), "failover")


def test_approve_shows_the_request_fills_in_who_you_are_and_appends_one_approval(
    kubectl: Kubectl,
    approver: Kubectl,
    namespace: str,
    demo: DemoService,
    waiting: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = cli.main(["approve", "consent", "failover", "-n", namespace, "--yes", *as_alice(kubectl)])
    out = capsys.readouterr().out.splitlines()
    assert code == 0, out
    request = waiting["approvalRequest"]
    assert (
        out[0]
        == f'Incident {namespace}/consent: alert "InstanceManagerDown", severity Critical, phase AwaitingApproval'
    )
    assert out[1] == "Step failover (Remediate, round 1): http.request"
    assert f'  url: "{demo.url}/admin/failover"' in out and '  json: {"user": "bob"}' in out
    assert "  destructive: true" in out
    assert f"Digest {request['digest']}, nonce {request['nonce']}, requested at {request['requestedAt']}" in out
    assert out[-1] == f"approved: step failover (round 1, nonce {request['nonce']}) of {namespace}/consent by alice"
    assert approvals(kubectl, namespace) == [{"step": "failover", "round": 1, "nonce": request["nonce"], "by": "alice"}]
    status = settled(kubectl, "consent", namespace, "Resolved")
    assert next(s for s in status["steps"] if s["name"] == "failover")["approvedBy"] == "alice"
    assert [body for method, path, body in demo.requests if path == "/admin/failover"] == [{"user": "bob"}]


def test_a_refused_approval_is_one_line_with_the_rule_and_the_role_to_bind(
    kubectl: Kubectl, carol: Kubectl, namespace: str, waiting: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(["approve", "consent", "failover", "-n", namespace, "--yes",
                     f"--kubeconfig={kubectl.kubeconfig}", "--as=carol"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1, err
    assert err.startswith("runbook-operator approve: the approval was refused by the API server: ")
    assert f"user carol may not approve steps of incidents in namespace {namespace}" in err
    assert "--clusterrole=runbook-operator-approver --user=carol" in err
    assert approvals(kubectl, namespace) == []


def run_cli(*args: str, stdin: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "runbook-operator"), *args], stdin=stdin, capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip


def test_approve_asks_first_and_a_no_approves_nothing(
    kubectl: Kubectl, approver: Kubectl, namespace: str, waiting: dict[str, Any]
) -> None:
    args = ["approve", "consent", "failover", "-n", namespace, *as_alice(kubectl)]
    for answer, code in ((b"n\n", 1), (b"y\n", 0)):
        leader, follower = pty.openpty()
        try:
            os.write(leader, answer)  # typed at the prompt
            done = run_cli(*args, stdin=follower)
        finally:
            os.close(leader)
            os.close(follower)
        assert done.returncode == code, done.stderr
        assert "Approve this as alice? [y/N]" in done.stdout
        if code:
            assert "not approved" in done.stderr and approvals(kubectl, namespace) == []
    assert [a["by"] for a in approvals(kubectl, namespace)] == ["alice"]


def test_approve_without_a_terminal_or_yes_approves_nothing(
    kubectl: Kubectl, approver: Kubectl, namespace: str, waiting: dict[str, Any]
) -> None:
    done = run_cli("approve", "consent", "failover", "-n", namespace, *as_alice(kubectl), stdin=subprocess.DEVNULL)
    assert done.returncode == 1 and "pass --yes to approve without asking" in done.stderr
    assert approvals(kubectl, namespace) == []


def test_kubectl_runbook_is_a_kubectl_plugin(
    kubectl: Kubectl, approver: Kubectl, namespace: str, waiting: dict[str, Any]
) -> None:
    env = {**os.environ, "KUBECONFIG": str(kubectl.kubeconfig), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    listed = subprocess.run([str(kubectl.binary), "plugin", "list"], env=env, capture_output=True, text=True)
    assert str(BIN / "kubectl-runbook") in listed.stdout
    done = subprocess.run(
        [str(kubectl.binary), "runbook", "approve", "consent", "failover", "-n", namespace, "--yes",
         "--as=alice", f"--as-group={ONCALL}"],
        env=env, capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1].endswith(f"of {namespace}/consent by alice")
    assert [a["by"] for a in approvals(kubectl, namespace)] == ["alice"]


def test_approving_a_step_that_does_not_wait_says_what_does(
    kubectl: Kubectl, approver: Kubectl, namespace: str, waiting: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["approve", "consent", "restart", "-n", namespace, "--yes", *as_alice(kubectl)]) == 1
    err = capsys.readouterr().err
    assert f"step 'restart' of incident {namespace}/consent does not wait for approval" in err
    assert "waiting: failover" in err
    assert cli.main(["approve", "nothing", "failover", "-n", namespace, "--yes", *as_alice(kubectl)]) == 1
    assert f"incident {namespace}/nothing not found" in capsys.readouterr().err
    assert cli.main(["resolve", "consent", "-n", namespace, *as_alice(kubectl)]) == 0
    settled(kubectl, "consent", namespace, "Resolved")
    capsys.readouterr()
    assert cli.main(["approve", "consent", "failover", "-n", namespace, "--yes", *as_alice(kubectl)]) == 1
    err = capsys.readouterr().err  # its request is still in status, but a resolved incident waits for nothing
    assert f"incident {namespace}/consent waits for no approval: its phase is Resolved" in err
    assert approvals(kubectl, namespace) == []


def test_ack_and_resolve_as_yourself(
    kubectl: Kubectl, approver: Kubectl, namespace: str, demo: DemoService, waiting: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    assert cli.main(["ack", "consent", "-n", namespace, *as_alice(kubectl)]) == 0
    assert capsys.readouterr().out == f"acknowledged: {namespace}/consent by alice\n"
    assert kubectl.get("incident", "consent", namespace)["spec"]["acknowledgedBy"] == "alice"
    assert cli.main(["resolve", "consent", "-n", namespace, *as_alice(kubectl)]) == 0
    status = settled(kubectl, "consent", namespace, "Resolved")
    assert conditions(status)["Resolved"] == ("True", "ResolvedExternally")
    assert conditions(status)["Acknowledged"] == ("True", "Acknowledged") and demo.failovers == 0


def test_incident_text_reaches_the_terminal_escaped(
    kubectl: Kubectl,
    operator: OperatorProcess,
    approver: Kubectl,
    namespace: str,
    demo: DemoService,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A label that would clear the line and flip the text direction shows as escapes, not as a disguise."""
    remediate = [{"name": "failover", "action": "http.request", "with": {
        "url": f"{demo.url}/admin/failover", "destructive": True, "json": {"user": "{{ incident.labels.user }}"}}}]  # fmt: skip
    kubectl.apply(failover_policy(namespace, demo, remediate=remediate))
    kubectl.apply(incident("disguised", namespace, labels={"user": "*\x1b[2K\r\u202ebob"}))
    settled(kubectl, "disguised", namespace, "AwaitingApproval")
    assert cli.main(["approve", "disguised", "failover", "-n", namespace, "--yes", *as_alice(kubectl)]) == 0
    out = capsys.readouterr().out
    assert '  json: {"user": "*\\u001b[2K\\r\\u202ebob"}' in out.splitlines()
    assert "\x1b" not in out and "\u202e" not in out and "\r" not in out
