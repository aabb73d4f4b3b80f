"""alertmanager.silence and its expiry against a real Alertmanager (Debian's prometheus-alertmanager):
the alert is muted in Alertmanager's own API while the silence holds, and speaks again once expired."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from runbook_lab.controlplane import free_port
from runbook_operator.actions import ActionContext, ActionFailure
from runbook_operator.actions import alertmanager as am
from runbook_operator.engine.executor import run_action
from tests.fixtures.alertmanager import fire
from tests.fixtures.common import wait_for
from tests.unit.builders import REGISTRY

LABELS = {"service": "instance-manager", "namespace": "ishchat", "app.kubernetes.io/name": "im"}


def state_of(url: str, **labels: str) -> dict[str, Any]:
    """The alert's status in Alertmanager: state (active, suppressed) and silencedBy."""
    alerts = httpx.get(f"{url}/api/v2/alerts", timeout=5).json()
    found = [a for a in alerts if all(a["labels"].get(k) == v for k, v in labels.items())]
    assert len(found) == 1, found
    return found[0]["status"]  # type: ignore[no-any-return]


def silences(url: str) -> list[dict[str, Any]]:
    return [s for s in httpx.get(f"{url}/api/v2/silences", timeout=5).json() if s["status"]["state"] != "expired"]


async def silence(url: str, uid: str, alert: str = "InstanceManagerDown", **params: Any) -> Any:
    ctx = ActionContext("ishchat", f"inc-{uid}", 10.0, {"alert": alert, "labels": LABELS}, uid=uid)
    return await run_action(REGISTRY.get("alertmanager.silence"), REGISTRY.parse("alertmanager.silence",
                            {"url": url, **params}), ctx)  # fmt: skip


async def test_the_silence_mutes_the_alert_until_the_operator_expires_it(alertmanager: str) -> None:
    alert = {k.replace(".", "_").replace("/", "_"): v for k, v in LABELS.items()}  # as Prometheus names them
    fire(alertmanager, {"alertname": "InstanceManagerDown", **alert})
    wait_for(lambda: state_of(alertmanager, alertname="InstanceManagerDown")["state"] == "active", 10, "the alert")
    result = await silence(alertmanager, "uid-1", duration="30m")
    assert result.ok, result.message
    ident = result.output["silenceID"]
    assert result.silence == (alertmanager, ident, result.output["endsAt"])
    # the alert's name and the incident's labels Alertmanager can match on; `app.kubernetes.io/name` it cannot
    assert result.output["matchers"] == {"alertname": "InstanceManagerDown", "namespace": "ishchat",
                                         "service": "instance-manager"}  # fmt: skip
    wait_for(lambda: state_of(alertmanager, alertname="InstanceManagerDown")["silencedBy"] == [ident], 10, "muted")
    made = next(s for s in silences(alertmanager) if s["id"] == ident)
    assert made["createdBy"] == "runbook-operator"
    assert "incident ishchat/inc-uid-1 (uid uid-1)" in made["comment"]
    assert "kubectl describe incident inc-uid-1 -n ishchat" in made["comment"]
    assert all(m["isRegex"] is False and m["isEqual"] is True for m in made["matchers"])
    ends = datetime.fromisoformat(made["endsAt"].replace("Z", "+00:00"))
    assert timedelta(minutes=29) < ends - datetime.now(UTC) <= timedelta(minutes=30)

    again = await silence(alertmanager, "uid-1")  # the step run again (a restart): the same silence
    assert again.ok and again.output["silenceID"] == ident and "kept the silence made before" in again.message
    assert [s["id"] for s in silences(alertmanager)].count(ident) == 1 and len(silences(alertmanager)) == 1

    await am.expire(alertmanager, ident)
    wait_for(lambda: state_of(alertmanager, alertname="InstanceManagerDown")["silencedBy"] == [], 10, "speaking again")
    assert silences(alertmanager) == []
    await am.expire(alertmanager, ident)  # already expired: not an error
    await am.expire(alertmanager, "2b1e9c1c-0000-4000-8000-000000000000")  # never known: not an error either


async def test_incident_text_is_a_matchers_value_never_a_pattern(alertmanager: str) -> None:
    fire(alertmanager, {"alertname": "RedisDown", "service": "redis"})
    ctx = ActionContext("ishchat", "inc-x", 10.0, {"alert": "RedisDown", "labels": {"service": ".*"}}, uid="uid-x")
    params = REGISTRY.parse("alertmanager.silence", {"url": alertmanager})
    result = await run_action(REGISTRY.get("alertmanager.silence"), params, ctx)
    assert result.ok
    assert state_of(alertmanager, alertname="RedisDown")["silencedBy"] == []  # `.*` matched only itself
    await am.expire(alertmanager, result.output["silenceID"])


async def test_a_silence_never_reaches_past_the_incidents_namespace(alertmanager: str) -> None:
    """An Incident in `team-a` that claims namespace=ishchat in its labels (or names none) silences
    only `team-a`'s alerts: the Incident's own namespace is always a matcher."""
    fire(alertmanager, {"alertname": "LoadBalancerDown", "namespace": "ishchat"})
    for labels in ({"namespace": "ishchat"}, {}):
        ctx = ActionContext(
            "team-a", "inc-a", 10.0, {"alert": "LoadBalancerDown", "labels": labels}, uid=f"a{len(labels)}"
        )
        result = await run_action(REGISTRY.get("alertmanager.silence"),
                                  REGISTRY.parse("alertmanager.silence", {"url": alertmanager}), ctx)  # fmt: skip
        assert result.ok and result.output["matchers"] == {"alertname": "LoadBalancerDown", "namespace": "team-a"}
        assert state_of(alertmanager, alertname="LoadBalancerDown")["silencedBy"] == []
        await am.expire(alertmanager, result.output["silenceID"])


async def test_a_label_the_incident_lacks_fails_the_step_naming_it(alertmanager: str) -> None:
    result = await silence(alertmanager, "uid-2", labels=["instance"])
    assert not result.ok
    assert "the incident has no label 'instance' to match on" in result.message
    assert silences(alertmanager) == []


async def test_an_unreachable_alertmanager_fails_the_step_and_the_expiry() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = await silence(url, "uid-3")
    assert not result.ok and f"Alertmanager at {url}" in result.message
    with pytest.raises(ActionFailure, match=f"Alertmanager at {url}"):
        await am.expire(url, "abc")


def test_the_duration_is_bounded() -> None:
    with pytest.raises(ValueError, match="duration"):
        REGISTRY.parse("alertmanager.silence", {"url": "http://127.0.0.1:9093", "duration": "25h"})
