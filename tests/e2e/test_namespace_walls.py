"""Namespaces are walls (issue 13), on the real control plane: an Incident is about its own
namespace. The API server refuses one whose spec.target names another (crds/incident-scope.yaml);
without that policy the operator refuses it itself, and a decoy in one namespace never makes
another namespace's Incident for the same target a Duplicate (nor holds its lock or cooldown).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from runbook_lab.demo import DemoService
from tests.e2e.conftest import ROOT, Kubectl, OperatorProcess, wait_for
from tests.e2e.test_foundation import conditions, demo_policy, incident, settled

POLICY = "runbook-operator-incident-scope"
TARGET = {"kind": "Deployment", "name": "instance-manager"}


def enforces_scope(kubectl: Kubectl) -> bool:
    """Does the API server refuse an Incident whose target is in another namespace (the policy is in force)?"""
    probe = incident("probe", "default", target=TARGET | {"namespace": "kube-system"})
    done = kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(probe), check=False)
    return done.returncode != 0 and POLICY in done.stderr


@pytest.fixture
def without_scope_policy(kubectl: Kubectl) -> Iterator[None]:
    """Remove the policy's binding for one test, and put it back (as crds/ has it) after."""
    wait_for(lambda: enforces_scope(kubectl), 60, "the incident-scope admission policy to be enforced")
    kubectl("delete", f"validatingadmissionpolicybinding/{POLICY}")
    try:
        wait_for(lambda: not enforces_scope(kubectl), 30, "the API server to stop enforcing the incident scope")
        yield
    finally:
        kubectl("apply", "-k", str(ROOT / "crds"))
        wait_for(lambda: enforces_scope(kubectl), 30, "the API server to enforce the incident scope again")


def test_the_api_server_refuses_an_incident_about_another_namespace(
    kubectl: Kubectl, namespace: str, other_namespace: str
) -> None:
    wait_for(lambda: enforces_scope(kubectl), 60, "the incident-scope admission policy to be enforced")
    proc = kubectl.apply(incident("decoy", namespace, target=TARGET | {"namespace": other_namespace}), check=False)
    assert proc.returncode != 0
    message = " ".join(proc.stderr.split())
    assert (
        f"spec.target.namespace: {json.dumps(other_namespace)} is not this Incident's namespace {namespace}" in message
    )
    assert (
        f"create it in namespace {json.dumps(other_namespace)} instead, or leave spec.target.namespace out" in message
    )
    # its own namespace, spelled out or left to the default, is fine
    kubectl.apply(incident("own", namespace, target=TARGET | {"namespace": namespace}))
    kubectl.apply(incident("default-ns", namespace, target=TARGET))
    # and an update cannot move a target away either
    proc = kubectl("patch", "incident", "own", "-n", namespace, "--type=merge", "-p",
                   json.dumps({"spec": {"target": {"namespace": other_namespace}}}), check=False)  # fmt: skip
    assert proc.returncode != 0 and POLICY in proc.stderr


@pytest.mark.usefixtures("without_scope_policy")
def test_without_the_policy_the_operator_refuses_it_and_a_decoy_makes_no_duplicate(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str, other_namespace: str, demo: DemoService
) -> None:
    team_a, team_b = namespace, other_namespace
    # team-a's decoy names team-b's Deployment: the same target as team-b's own Incident below
    kubectl.apply(incident("decoy", team_a, target=TARGET | {"namespace": team_b}))
    status = settled(kubectl, "decoy", team_a, "Escalated")
    assert conditions(status)["Escalated"] == ("True", "TargetOutsideNamespace")
    message = next(c["message"] for c in status["conditions"] if c["type"] == "Escalated")
    assert message.startswith(f"spec.target.namespace {team_b!r} is not the incident's namespace {team_a!r}")
    assert status.get("steps", []) == []
    reasons = [e["reason"] for e in kubectl.events("decoy", team_a)]
    assert reasons.count("TargetOutsideNamespace") == 1

    kubectl.apply(demo_policy("im-down", team_b, demo.url))
    kubectl.apply(incident("real", team_b, target=TARGET))
    real = settled(kubectl, "real", team_b, "Resolved")
    assert real.get("duplicateOf") is None and conditions(real)["Resolved"] == ("True", "Verified")
    assert demo.restarts == 1
