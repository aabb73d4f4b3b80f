"""The lab runs the pack at lab speed: machine waits divided, human decisions untouched."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from runbook_lab import scenarios, speed
from runbook_lab.lab import ALERTS, FAULTS, PACK

POLICY = {
    "spec": {
        "settle": "2m",
        "diagnose": [
            {"name": "p95", "action": "prometheus.query", "with": {"query": "rate(x[5m]) > on() rate(y[1h:1m])"}},
            {"name": "h", "action": "http.check", "with": {"url": "http://svc/[5m]"}, "timeout": "10s"},
        ],
        "verify": [{"name": "v", "action": "http.check", "retries": 24, "backoff": "30s", "timeout": "5s"}],
        "limits": {"maxAttempts": 2, "cooldown": "1h", "approvalTimeout": "30m"},
        "escalate": {"levels": [{"name": "lead", "after": "30m", "notify": []}]},
    }
}


@pytest.mark.parametrize(
    ("text", "factor", "floor", "expected"),
    [("2m", 30, 1, "4s"), ("30s", 30, 1, "1s"), ("500ms", 30, 1, "500ms"), ("5m", 30, 5, "10s"), ("1h", 30, 5, "2m")],
)
def test_scale_divides_and_keeps_a_floor(text: str, factor: float, floor: float, expected: str) -> None:
    assert speed.scale(text, factor, floor) == expected


def test_policy_scales_machine_waits_and_promql_windows_only() -> None:
    fast = speed.policy(POLICY)
    spec = fast["spec"]
    assert spec["settle"] == "4s" and spec["verify"][0]["backoff"] == "1s" and spec["limits"]["cooldown"] == "2m"
    assert spec["diagnose"][0]["with"]["query"] == "rate(x[10s]) > on() rate(y[2m:1m])"
    # not PromQL: untouched; people's timings and step timeouts: untouched
    assert spec["diagnose"][1]["with"]["url"] == "http://svc/[5m]" and spec["diagnose"][1]["timeout"] == "10s"
    assert spec["limits"]["approvalTimeout"] == "30m" and spec["escalate"]["levels"][0]["after"] == "30m"
    assert spec["verify"][0]["retries"] == 24 and spec["verify"][0]["timeout"] == "5s"
    assert POLICY["spec"]["settle"] == "2m"  # the input is not modified


def test_rules_and_alertmanager_config_at_lab_speed() -> None:
    groups = [{"name": "g", "interval": "1m", "rules": [{"alert": "A", "expr": "rate(x[5m]) > 1", "for": "15m"}]}]
    assert speed.rules(groups) == [
        {"name": "g", "interval": "1s", "rules": [{"alert": "A", "expr": "rate(x[10s]) > 1", "for": "30s"}]}
    ]
    config = {
        "route": {"receiver": "null", "group_wait": "10s", "routes": [{"receiver": "op", "group_interval": "1m"}]},
        "receivers": [{"name": "op", "webhook_configs": [{"url": "http://in-cluster/", "send_resolved": True}]}],
    }
    local = speed.alertmanager(config, "http://127.0.0.1:1/hook", "/tmp/token")
    hook = local["receivers"][0]["webhook_configs"][0]
    assert hook["url"] == "http://127.0.0.1:1/hook" and hook["send_resolved"] is True
    assert hook["http_config"]["authorization"]["credentials_file"] == "/tmp/token"
    assert local["route"]["group_wait"] == "1s" and local["route"]["routes"][0]["group_interval"] == "10s"


def test_the_whole_pack_at_lab_speed_still_validates(tmp_path: Path) -> None:
    from runbook_operator.entrypoints.cli import main

    for path in sorted(PACK.glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        if doc.get("kind") == "RemediationPolicy":
            (tmp_path / path.name).write_text(yaml.safe_dump(speed.policy(doc)))
    assert len(list(tmp_path.iterdir())) == 12
    assert main(["validate", str(tmp_path)]) == 0


def test_every_fault_raises_one_runbook_alert_with_an_expected_end() -> None:
    assert set(ALERTS) == set(FAULTS)
    assert sorted(ALERTS.values()) == sorted(scenarios.EXPECTED)
    assert sorted(f for wave in scenarios.WAVES for f in wave) == sorted(FAULTS)


def _incident(name: str, alert: str, phase: str | None, created: str = "2026-11-27T10:00:00Z") -> dict[str, Any]:
    status = {"phase": phase, "steps": [{"name": "s", "state": "Succeeded"}]} if phase else {}
    return {"metadata": {"name": name, "creationTimestamp": created}, "spec": {"alert": alert}, "status": status}


def test_play_follows_the_first_new_incident_of_each_alert_until_it_settles() -> None:
    injected: list[str] = []
    views = iter(
        [
            [_incident("old", "RedisDown", "Resolved")],
            [_incident("old", "RedisDown", "Resolved"), _incident("r1", "RedisDown", "Diagnosing")],
            [_incident("r1", "RedisDown", "Resolved"), _incident("r2", "RedisDown", "Escalated", "2026-11-27T10:00:05Z"),
             _incident("p1", "PostgreSQLDown", "Verifying")],
            [_incident("r1", "RedisDown", "Resolved"), _incident("p1", "PostgreSQLDown", "Resolved")],
        ]
    )  # fmt: skip
    changes: list[tuple[str, str]] = []
    outcomes = scenarios.play(
        ["redis-down", "postgresql-down"], injected.append, lambda: next(views), timeout=10, ignore=["old"],
        on_change=lambda o, phase: changes.append((o.alert, phase)), poll=0,
    )  # fmt: skip
    assert injected == ["redis-down", "postgresql-down"]
    assert outcomes["RedisDown"].incident is not None and outcomes["RedisDown"].incident["metadata"]["name"] == "r1"
    assert outcomes["RedisDown"].phases == ["Diagnosing", "Resolved"] and outcomes["RedisDown"].ok
    assert outcomes["PostgreSQLDown"].ok and outcomes["PostgreSQLDown"].settled_after is not None
    assert changes == [("RedisDown", "Diagnosing"), ("RedisDown", "Resolved"), ("PostgreSQLDown", "Verifying"),
                       ("PostgreSQLDown", "Resolved")]  # fmt: skip
    table = scenarios.table(outcomes.values()).splitlines()
    assert table[0].split()[:4] == ["ALERT", "INCIDENT", "PHASE", "EXPECTED"] and "r1" in table[1]


def test_play_gives_up_at_the_timeout_and_says_what_was_missing() -> None:
    outcomes = scenarios.play(["redis-down"], lambda fault: None, lambda: [], timeout=0.05, poll=0.01)
    assert outcomes["RedisDown"].incident is None and not outcomes["RedisDown"].ok
    assert "(no incident)" in scenarios.table(outcomes.values()) and "not settled" in scenarios.table(outcomes.values())
