"""What `approve` shows and when it refuses, from an Incident as the API serves it (no server needed).

The commands themselves run against the real control plane in tests/e2e/test_oncall.py.
"""

from typing import Any

import pytest

from runbook_operator.domain import consent
from runbook_operator.engine.kube import Refused
from runbook_operator.oncall import describe, waiting_step


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


def test_describe_says_when_the_shown_parameters_are_not_all_the_digest_covers() -> None:
    incident = served()
    incident["status"]["steps"][0]["approvalRequest"]["parameters"] = {"truncated": True}
    lines = describe(incident, waiting_step(incident, "failover"))
    assert any("not all the parameters the digest below covers" in line for line in lines)
    assert not any("not all" in line for line in describe(served(), waiting_step(served(), "failover")))


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
