"""Upgrading to consent bound to requests: Incidents written by the previous version still load.

On a control plane of its own (the CRD is swapped under it): the previous schema (approvals
keyed by step, no rounds, nonces or requests), an Incident written then, waiting for an
approval it was given the old way; then the new CRD and the admission policy. The old
entries read back with round 0 and no nonce (they never count), the old status loads, the
operator's core asks again with a request, the API server stores it, and people can go on
editing and approving.
"""

from __future__ import annotations

import copy
import json
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from runbook_lab.controlplane import ControlPlane
from runbook_operator.actions.catalog import default_registry
from runbook_operator.domain.lifecycle import decide
from runbook_operator.domain.model import Incident
from runbook_operator.domain.parsing import parse_policy
from runbook_operator.domain.status import Status
from runbook_operator.entrypoints import cli
from tests.fixtures.cluster import ROOT, Kubectl, enforces_consent
from tests.fixtures.common import wait_for

CRD = ROOT / "crds" / "remediation.ishchat.io_incidents.yaml"


def previous_crd() -> dict[str, Any]:
    """The Incident CRD as the version before consent binding had it."""
    crd = yaml.safe_load(CRD.read_text())
    old = copy.deepcopy(crd)
    props = old["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
    approvals = props["spec"]["properties"]["approvals"]
    del approvals["default"]
    approvals["x-kubernetes-list-map-keys"] = ["step"]
    approvals["items"]["properties"] = {k: approvals["items"]["properties"][k] for k in ("step", "by")}
    record = props["status"]["properties"]["steps"]["items"]["properties"]
    del record["approvalRequest"], record["approvedDigest"]
    return old  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kubectl]:
    build = subprocess.run([str(ROOT / "tools/controlplane/build.sh")], capture_output=True, text=True, check=True)
    control = ControlPlane(tmp_path_factory.mktemp("upgrade-controlplane"), Path(build.stdout.strip()))
    try:
        yield Kubectl(control.bin / "kubectl", control.up())
    finally:
        control.down()


def test_an_incident_written_before_the_upgrade_loads_and_asks_again(plane: Kubectl) -> None:
    kubectl = plane
    kubectl.apply(previous_crd())
    kubectl("wait", "--for=condition=Established", "crd/incidents.remediation.ishchat.io", "--timeout=60s")
    kubectl.apply({"apiVersion": "remediation.ishchat.io/v1alpha1", "kind": "Incident",
                   "metadata": {"name": "old", "namespace": "default"},
                   "spec": {"alert": "RedisDown", "approvals": [{"step": "failover", "by": "alice"}]}})  # fmt: skip
    old_status = {"phase": "AwaitingApproval", "policy": "p", "attempts": 1, "startedAt": "2026-11-27T08:00:00Z",
                  "steps": [{"name": "failover", "stage": "Remediate", "action": "http.request", "attempt": 1,
                             "state": "AwaitingApproval", "startedAt": "2026-11-27T08:00:00Z"}]}  # fmt: skip
    kubectl(
        "patch", "incident", "old", "--subresource=status", "--type=merge", "-p", json.dumps({"status": old_status})
    )

    kubectl("apply", "-f", str(CRD))
    kubectl("apply", "-k", str(ROOT / "manifests" / "consent"))
    wait_for(lambda: enforces_consent(kubectl), 60, "the admission policy")
    body = kubectl.get("incident", "old", "default")
    assert body["spec"]["approvals"] == [{"step": "failover", "by": "alice", "round": 0, "nonce": ""}]

    # the operator's core reads both as they are now served, and asks again (the old approval does not count)
    incident, status = Incident.from_body(body), Status.from_dict(body["status"])
    policy = parse_policy(
        {"metadata": {"name": "p", "namespace": "default", "generation": 1}, "spec": {"remediate": [
            {"name": "failover", "action": "http.request", "with": {"url": "http://lb/failover", "destructive": True}}]}},
        default_registry().check,
    )  # fmt: skip
    decision = decide(incident, status, [policy], datetime(2026, 11, 27, 8, 1, tzinfo=UTC), nonce="0a1b2c3d4e5f6071")
    assert decision.run is None and [e.reason for e in decision.events][:1] == ["ApprovalRequestChanged"]
    kubectl("patch", "incident", "old", "--subresource=status", "--type=merge",
            "-p", json.dumps({"status": decision.status.to_dict()}))  # fmt: skip
    stored = kubectl.get("incident", "old", "default")["status"]["steps"][0]
    assert stored["approvalRequest"]["nonce"] == "0a1b2c3d4e5f6071" and stored["startedAt"] == "2026-11-27T08:00:00Z"

    # and people go on: an edit keeps the old entry; an approval of the new request is appended
    kubectl("patch", "incident", "old", "--type=merge", "-p", '{"spec":{"labels":{"after":"upgrade"}}}')
    argv = ["approve", "old", "failover", "-n", "default", "--yes", f"--kubeconfig={kubectl.kubeconfig}"]
    assert cli.main(argv) == 0
    assert [(a["by"], a["round"], a["nonce"]) for a in kubectl.get("incident", "old", "default")["spec"]["approvals"]] == [
        ("alice", 0, ""), ("admin", 1, "0a1b2c3d4e5f6071")]  # fmt: skip
