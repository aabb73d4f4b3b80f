"""What `approve` shows and when it refuses, from an Incident as the API serves it (no server needed).

The commands themselves run against the real control plane in tests/e2e/test_oncall.py.
"""

import io
from types import SimpleNamespace
from typing import Any

import pytest

from runbook_operator.adapters.kube import Refused
from runbook_operator.domain import consent
from runbook_operator.entrypoints.cli.oncall import approve, describe, waiting_step


def served(phase: str = "AwaitingApproval", **record: Any) -> dict[str, Any]:
    params = record.pop("parameters", {"url": "http://lb:9092/failover", "destructive": True})
    request = {"nonce": "9d6804ee8de82189", "digest": consent.digest("http.request", params),
               "requestedAt": "2026-12-02T06:40:28Z", "parameters": params}  # fmt: skip
    step = {"name": "failover", "stage": "Remediate", "action": "http.request", "attempt": 1,
            "state": "AwaitingApproval", "approvalRequest": request} | record  # fmt: skip
    return {"metadata": {"name": "i", "namespace": "ns"}, "spec": {"alert": "HighErrorRate"},
            "status": {"phase": phase, "severity": "High", "steps": [step]}}  # fmt: skip


def test_describe_shows_the_request_with_every_value_escaped() -> None:
    incident = served(parameters={"json": {"user": "*\x1b[2K\r\u202ebob"}, "odd key\n": 1})
    lines = describe(incident, waiting_step(incident, "failover"))
    assert lines[:2] == [
        'Incident ns/i: alert "HighErrorRate", severity High, phase AwaitingApproval',
        "Step failover (Remediate, round 1): http.request",
    ]
    assert '  json: {"user": "*\\u001b[2K\\r\\u202ebob"}' in lines and '  "odd key\\n": 1' in lines
    assert not any(c in "".join(lines) for c in "\x1b\r\u202e")
    assert lines[-1].startswith("Digest sha256:") and "nonce 9d6804ee8de82189" in lines[-1]


@pytest.mark.parametrize(
    ("change", "said"),
    [
        # finding 3b: status rewritten to show a harmless request beside the real digest
        ({"parameters": {"url": "http://lb:9092/db/health"}}, "do not match the request's digest"),
        ({"parameters": {"url": "http://lb:9092/failover", "destructive": True}, "digest": "sha256:0"}, "do not match"),
        ({"parameters": {"truncated": True}}, "too large to keep in status"),
    ],
)
def test_approve_refuses_parameters_its_digest_does_not_cover(change: dict[str, Any], said: str) -> None:
    incident = served()
    incident["status"]["steps"][0]["approvalRequest"] |= change
    patched: list[Any] = []
    incidents = SimpleNamespace(namespace="ns", get=lambda name: incident, patch=lambda *a: patched.append(a))
    with pytest.raises(Refused, match=said):
        approve(incidents, "alice", "i", "failover", None, io.StringIO())  # type: ignore[arg-type]
    assert patched == []


def test_approve_appends_the_approval_when_the_shown_parameters_are_the_digests() -> None:
    incident, patched = served(), []
    incidents = SimpleNamespace(namespace="ns", get=lambda name: incident, patch=lambda *a: patched.append(a))
    approve(incidents, "alice", "i", "failover", None, io.StringIO())  # type: ignore[arg-type]
    assert patched[0][1] == consent.append_patch("failover", 1, "9d6804ee8de82189", "alice", list_exists=False)


@pytest.mark.parametrize(
    ("incident", "step", "said"),
    [
        (served("Resolved"), "failover", "incident ns/i waits for no approval: its phase is Resolved"),
        (served(), "reindex", "step 'reindex' of incident ns/i does not wait for approval; waiting: failover"),
        (served(approvalRequest=None), "failover", "has no approval request yet"),
    ],
)
def test_approve_refuses_what_waits_for_nothing(incident: dict[str, Any], step: str, said: str) -> None:
    with pytest.raises(Refused, match=said):
        waiting_step(incident, step)
