"""On-call communication end to end: one incident through diagnose -> approval -> acknowledged ->
resolved on the real control plane, told in one Slack thread (a Slack app's chat.postMessage)
and paged on PagerDuty (Events API v2: trigger -> acknowledge -> resolve, one dedup key), both
against local receivers that check every request as the providers document it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from runbook_lab.demo import DemoService
from runbook_operator.domain import report
from runbook_operator.entrypoints import cli
from tests.e2e.conftest import ROOT, Kubectl, OperatorProcess
from tests.e2e.test_consent import failover_policy
from tests.e2e.test_foundation import awaiting, incident, settled
from tests.e2e.test_oncall import as_alice
from tests.fixtures.common import wait_for
from tests.fixtures.paging import PagerDuty
from tests.fixtures.slack import TOKEN, SlackReceiver

CONSENT = "remediation.ishchat.io/policies"
ROUTING_KEY = "R0UT1NGKEY0123456789abcdef012345"
CHANNEL = "C0123456789"


@pytest.fixture
def slack() -> Iterator[SlackReceiver]:
    receiver = SlackReceiver().start()
    yield receiver
    receiver.stop()


@pytest.fixture
def pagerduty() -> Iterator[PagerDuty]:
    receiver = PagerDuty(ROUTING_KEY).start()
    yield receiver
    receiver.stop()


def secret(namespace: str, name: str, key: str, value: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "stringData": {key: value},
            "metadata": {"name": name, "namespace": namespace, "annotations": {CONSENT: "im-down"}}}  # fmt: skip


def announce(slack: SlackReceiver, pagerduty: PagerDuty) -> list[dict[str, Any]]:
    """The example in docs/oncall.md: every change people act on in the incident's Slack thread; a page
    only once a person is needed, acknowledged and resolved with it."""
    return [
        {"phases": ["Diagnosing", "AwaitingApproval", "Acknowledged", "Resolved"], "notify": [
            {"name": "tell-slack", "action": "notify.slack", "with": {
                "baseUrl": slack.url, "channel": CHANNEL, "tokenSecretRef": {"name": "slack-app", "key": "token"}}}]},
        {"phases": ["AwaitingApproval", "Acknowledged", "Resolved"], "notify": [
            {"name": "page", "action": "notify.pagerduty", "with": {
                "baseUrl": pagerduty.url, "routingKeySecretRef": {"name": "pagerduty", "key": "routingKey"}}}]},
    ]  # fmt: skip


def test_an_incident_is_told_in_one_slack_thread_and_paged_once_with_one_dedup_key(
    kubectl: Kubectl,
    approver: Kubectl,
    operator: OperatorProcess,
    namespace: str,
    demo: DemoService,
    slack: SlackReceiver,
    pagerduty: PagerDuty,
) -> None:
    kubectl("apply", "-n", namespace, "-k", str(ROOT / "manifests/namespace-access"))
    kubectl.apply(secret(namespace, "slack-app", "token", TOKEN))
    kubectl.apply(secret(namespace, "pagerduty", "routingKey", ROUTING_KEY))
    kubectl.apply(failover_policy(namespace, demo, announce=announce(slack, pagerduty)))
    kubectl.apply(incident("told", namespace, summary="instance manager <!channel> down"))

    record = awaiting(settled(kubectl, "told", namespace, "AwaitingApproval"), "failover")
    wait_for(lambda: len(pagerduty.events) == 1, 30, "the page")
    assert cli.main(["ack", "told", "-n", namespace, *as_alice(kubectl)]) == 0
    wait_for(lambda: len(pagerduty.events) == 2, 30, "the page's acknowledgement")
    assert cli.main(["approve", "told", "failover", "-n", namespace, "--yes", *as_alice(kubectl)]) == 0
    settled(kubectl, "told", namespace, "Resolved")
    wait_for(lambda: len(pagerduty.events) == 3, 30, "the page's resolution")
    body = kubectl.get("incident", "told", namespace)
    status, uid = body["status"], body["metadata"]["uid"]
    assert record["approvalRequest"]["nonce"]

    head = f"[Critical] InstanceManagerDown {namespace}/told: "
    first, *replies = slack.messages
    assert [m.text.split("\n")[0] if m.text else None for m in slack.messages] == [
        f"{head}investigating", f"{head}needs approval", f"{head}acknowledged by alice", f"{head}resolved"]  # fmt: skip
    assert first.thread_ts is None and all(m.thread_ts == first.ts for m in replies), slack.messages
    assert [m.reply_broadcast for m in replies] == [False, False, True]  # the resolution shows in the channel too
    assert first.text and "Summary: instance manager &lt;!channel&gt; down" in first.text  # alert text cannot ping
    assert "needs approval for round 1" in (replies[0].text or "") and "runbook approve" in (replies[0].text or "")
    assert "Steps taken:" in (replies[2].text or "") and "failover (Remediate): Succeeded" in (replies[2].text or "")

    events = pagerduty.events
    assert [e["event_action"] for e in events] == ["trigger", "acknowledge", "resolve"]
    assert {e["dedup_key"] for e in events} == {f"runbook-operator/{uid}"}
    assert pagerduty.alerts == {f"runbook-operator/{uid}": "resolved"}
    assert events[0]["payload"]["severity"] == "critical"

    assert status["conversations"] == {f"slack/{CHANNEL}": first.ts, "pagerduty/pagerduty/routingKey": f"runbook-operator/{uid}"}  # fmt: skip
    assert [(a["phase"], a["done"]) for a in status["announcements"]] == [
        ("Diagnosing", True), ("AwaitingApproval", True), ("Acknowledged", True), ("Resolved", True)]  # fmt: skip
    for m in slack.messages:  # the sequence, for the record (pytest -s)
        print(f"slack {m.ts} thread={m.thread_ts} broadcast={m.reply_broadcast}:\n{m.text}\n")
    for e in events:
        print(f"pagerduty {e['event_action']} dedup_key={e['dedup_key']}")
    text = report.render(body)
    assert "7 sent, 0 failed" in text  # 4 Slack messages, 3 PagerDuty events
    for place in (str(status), text, operator.log.read_text()):
        assert ROUTING_KEY not in place and TOKEN not in place
