"""manifests/runbooks/ish-chat/alerting: the runbook's twelve alerts and the Alertmanager route to the intake.

promtool checks the rules and runs one unit test per alert (fires after its `for`, with the labels the
policies read, and not before it or below its threshold); amtool checks the Alertmanager configuration
and its routing. Offline checks: every alert has exactly one policy with the same severity and threshold,
and the rules use only the metrics the ISH Chat services, cAdvisor and the exporters expose.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from runbook_operator.adapters.intake import PATH as INTAKE_PATH
from runbook_operator.domain.alerts import MAX_ALERTS, SEVERITIES

ROOT = Path(__file__).resolve().parents[3]
PACK = ROOT / "manifests/runbooks/ish-chat"
ALERTING = PACK / "alerting"
PROMTOOL = "/usr/bin/promtool"  # Debian's prometheus package
AMTOOL = "/usr/bin/amtool"  # Debian's prometheus-alertmanager package
RUNBOOK = "https://github.com/ishchat/runbooks/blob/main/ish-chat-incident-runbook.md#"

# alert -> (severity label, for, anchor of the runbook section it comes from)
ALERTS = {
    "InstanceManagerDown": ("critical", "1m", "instance-manager-down"),
    "IntelligentRouterDown": ("critical", "1m", "intelligent-router-down"),
    "LoadBalancerDown": ("critical", "1m", "load-balancer-down"),
    "HighResponseTime": ("high", "5m", "high-response-times"),
    "HighErrorRate": ("high", "5m", "high-error-rates"),
    "HighCPUUsage": ("high", "5m", "high-cpu-usage"),
    "HighMemoryUsage": ("high", "5m", "high-memory-usage"),
    "DiskSpaceRunningLow": ("high", "5m", "disk-space-issues"),
    "PostgreSQLDown": ("critical", "1m", "database-connection-issues"),
    "PostgreSQLSlowQueries": ("high", "5m", "database-performance-issues"),
    "RedisDown": ("high", "1m", "redis-connectivity-issues"),
    "UnexpectedCostSpike": ("medium", "15m", "high-cost-spike"),
}

# The metric contract: what the lab (and a real ISH Chat deployment) exposes.
CONTRACT = {
    "up",
    # intelligent router
    "ish_chat_requests_total",
    "ish_chat_request_duration_seconds_bucket",
    "ish_chat_request_duration_seconds_sum",
    "ish_chat_request_duration_seconds_count",
    "ish_chat_circuit_breaker_state",
    "ish_chat_cost_estimate_dollars",
    "ish_chat_tokens_used_total",
    # instance manager, load balancer
    "ish_chat_instances_healthy",
    "ish_chat_instance_load",
    # kubelet (cAdvisor)
    "container_cpu_usage_seconds_total",
    "container_memory_working_set_bytes",
    "container_spec_memory_limit_bytes",
    # node_exporter
    "node_filesystem_avail_bytes",
    "node_filesystem_size_bytes",
    # postgres_exporter, redis_exporter
    "pg_up",
    "pg_stat_statements_seconds_total",
    "pg_stat_statements_calls_total",
    "redis_up",
}
UP_JOBS = {"ish-chat-instance-manager", "ish-chat-intelligent-router", "ish-chat-load-balancer"}


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def rules() -> list[dict[str, Any]]:
    rule = load(ALERTING / "prometheus-rule.yaml")
    return [r for group in rule["spec"]["groups"] for r in group["rules"]]


def policies() -> list[dict[str, Any]]:
    docs = [load(p) for p in sorted(PACK.glob("*.yaml")) if p.name != "kustomization.yaml"]
    return [d for d in docs if d.get("kind") == "RemediationPolicy"]


def run(tool: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    assert os.access(tool, os.X_OK), f"{tool} not found: apt-get install prometheus prometheus-alertmanager"
    return subprocess.run([tool, *args], cwd=cwd, capture_output=True, text=True, timeout=60)


@pytest.fixture
def rules_file(tmp_path: Path) -> Path:
    """spec.groups of the PrometheusRule as a plain Prometheus rules file."""
    rule = load(ALERTING / "prometheus-rule.yaml")
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    return path


# -- the PrometheusRule -----------------------------------------------------------------------


def test_the_rule_has_one_alert_per_runbook_alert_with_the_labels_the_intake_reads() -> None:
    rule = load(ALERTING / "prometheus-rule.yaml")
    assert (rule["apiVersion"], rule["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    assert (rule["metadata"]["name"], rule["metadata"]["namespace"]) == ("ish-chat-runbook", "ishchat")
    table = {r["alert"]: (r["labels"]["severity"], r["for"], r["annotations"]["runbook_url"]) for r in rules()}
    assert table == {alert: (sev, for_, RUNBOOK + anchor) for alert, (sev, for_, anchor) in ALERTS.items()}
    for r in rules():
        assert r["labels"]["namespace"] == "ishchat", r["alert"]
        assert set(r["annotations"]) == {"summary", "description", "runbook_url"}, r["alert"]
        assert re.search(r"\{\{[^}]*\$value\b", r["annotations"]["description"]), r["alert"]
        assert "{{ $labels." in r["annotations"]["description"], r["alert"]


def test_durations_are_plain_minutes_hours_or_seconds() -> None:
    """A lab rescales the windows and `for`s with a regex: only [<n>m|h|s] and <n>m|h|s."""
    for r in rules():
        assert re.fullmatch(r"[0-9]+[smh]", r["for"]), (r["alert"], r["for"])
        windows = re.findall(r"\[[^\]]*\]", re.sub(r'"[^"]*"', '""', r["expr"]))
        assert all(re.fullmatch(r"\[[0-9]+[smh]\]", w) for w in windows), (r["alert"], windows)


def test_the_alerting_kustomization_is_separate_from_the_pack() -> None:
    assert load(ALERTING / "kustomization.yaml")["resources"] == ["prometheus-rule.yaml"]
    assert not any("alerting" in r for r in load(PACK / "kustomization.yaml")["resources"])


def test_the_rules_are_valid(rules_file: Path) -> None:
    proc = run(PROMTOOL, "check", "rules", str(rules_file))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 12 rules found" in proc.stdout


# -- promtool unit tests: one per alert ---------------------------------------------------------


def fired(alert: str, labels: dict[str, str], summary: str, description: str) -> dict[str, Any]:
    severity, _, anchor = ALERTS[alert]
    return {
        "exp_labels": {"severity": severity, "namespace": "ishchat", **labels},
        "exp_annotations": {"summary": summary, "description": description, "runbook_url": RUNBOOK + anchor},
    }


def up_case(alert: str, job: str, service: str, what: str, consequence: str) -> dict[str, Any]:
    """A target of the job goes down at 2m and comes back at 8m; its second replica and other jobs don't count."""
    other = next(j for j in sorted(UP_JOBS) if j != job)
    down = fired(
        alert,
        {"service": service, "job": job, "instance": "10.0.1.1:8080"},
        f"ISH Chat {what} is down",
        f"Prometheus cannot scrape the {what} at 10.0.1.1:8080 (job {job}, up = 0): {consequence}.",
    )
    return {
        "input_series": [
            {"series": f'up{{job="{job}",instance="10.0.1.1:8080",namespace="ishchat"}}', "values": "1 1 0x5 1x5"},
            {"series": f'up{{job="{job}",instance="10.0.1.2:8080",namespace="ishchat"}}', "values": "1x12"},
            {"series": f'up{{job="{other}",instance="10.0.2.1:8080"}}', "values": "0x12"},
        ],
        "alert_rule_test": [
            {"eval_time": "1m", "exp_alerts": []},
            {"eval_time": "2m", "exp_alerts": []},  # down, for less than 1m
            {"eval_time": "3m", "exp_alerts": [down]},
            {"eval_time": "7m", "exp_alerts": [down]},
            {"eval_time": "9m", "exp_alerts": []},  # back up
        ],
    }


def bucket(provider: str, le: str, values: str) -> dict[str, str]:
    return {
        "series": f'ish_chat_request_duration_seconds_bucket{{provider_type="{provider}",le="{le}"}}',
        "values": values,
    }


def pods(metric: str, rows: list[tuple[str, str, str, str]]) -> list[dict[str, str]]:
    return [
        {"series": f'{metric}{{namespace="{ns}",pod="{pod}",container="{container}"}}', "values": values}
        for ns, pod, container, values in rows
    ]


def filesystem(device: str, fstype: str, mountpoint: str, avail: int) -> list[dict[str, str]]:
    labels = f'instance="node-1:9100",job="node",namespace="monitoring",device="{device}",fstype="{fstype}",mountpoint="{mountpoint}"'
    return [
        {"series": f"node_filesystem_avail_bytes{{{labels}}}", "values": f"{avail}x10"},
        {"series": f"node_filesystem_size_bytes{{{labels}}}", "values": "100x10"},
    ]


def statement(datname: str, queryid: str, seconds: str, calls: str) -> list[dict[str, str]]:
    labels = (
        f'job="postgres",instance="postgres-exporter:9187",datname="{datname}",user="ishchat_user",queryid="{queryid}"'
    )
    return [
        {"series": f"pg_stat_statements_seconds_total{{{labels}}}", "values": seconds},
        {"series": f"pg_stat_statements_calls_total{{{labels}}}", "values": calls},
    ]


def cpu_alert(service: str) -> dict[str, Any]:
    return fired(
        "HighCPUUsage",
        {"service": service},
        f"Workload {service} uses more than 80% CPU",
        f"The busiest pod of {service} uses 90% of a core over 5m (threshold 80%).",
    )


def memory_alert(service: str, percent: int) -> dict[str, Any]:
    return fired(
        "HighMemoryUsage",
        {"service": service},
        f"Workload {service} uses more than 85% of its memory limit",
        f"The largest pod of {service} has a working set of {percent}% of its memory limit (threshold 85%).",
    )


IM_POD, IM_POD_DIGITS = "instance-manager-7d4b9c8f6-x2k9p", "instance-manager-7d4b9c8f6-24567"
LB_POD, IR_POD = "load-balancer-5f6d7c8b9-abcde", "intelligent-router-6c9d8f7b5-q8w2z"

CASES: dict[str, dict[str, Any]] = {
    "InstanceManagerDown": up_case(
        "InstanceManagerDown", "ish-chat-instance-manager", "instance-manager", "instance manager",
        "no instance management, no auto-scaling",
    ),
    "IntelligentRouterDown": up_case(
        "IntelligentRouterDown", "ish-chat-intelligent-router", "intelligent-router", "intelligent router",
        "requests fall back to basic load balancing",
    ),
    "LoadBalancerDown": up_case(
        "LoadBalancerDown", "ish-chat-load-balancer", "load-balancer", "load balancer", "no request distribution",
    ),
    # openai: every request in (2.5s, 5s] -> p95 = 2.5 + 0.95 * 2.5 = 4.875s; anthropic: all under 0.5s.
    # The rate has two samples from 1m on, so the alert is pending from 1m and fires at 6m.
    "HighResponseTime": {
        "input_series": [
            bucket("openai", "0.5", "0x15"), bucket("openai", "1", "0x15"), bucket("openai", "2.5", "0x15"),
            bucket("openai", "5", "0+10x15"), bucket("openai", "+Inf", "0+10x15"),
            bucket("anthropic", "0.5", "0+10x15"), bucket("anthropic", "1", "0+10x15"),
            bucket("anthropic", "2.5", "0+10x15"), bucket("anthropic", "5", "0+10x15"),
            bucket("anthropic", "+Inf", "0+10x15"),
        ],
        "alert_rule_test": [
            {"eval_time": "5m", "exp_alerts": []},
            {"eval_time": "6m", "exp_alerts": [fired(
                "HighResponseTime", {"provider_type": "openai"},
                "p95 latency of openai requests is above 2s",
                "The 95th percentile of ISH Chat request durations for provider openai is 4.875s over 5m (threshold 2s).",
            )]},
        ],
    },
    # openai fails 1 request/s (and succeeds 10/s, which does not count); anthropic fails 0.2/s.
    # rate() over [5m] of a counter starting at 0: 0.2/s at 1m, 0.6/s at 3m -> pending from 3m, fires at 8m.
    "HighErrorRate": {
        "input_series": [
            {"series": 'ish_chat_requests_total{provider_type="openai",model_name="gpt-4",status="error"}', "values": "0+60x20"},
            {"series": 'ish_chat_requests_total{provider_type="openai",model_name="gpt-4",status="success"}', "values": "0+600x20"},
            {"series": 'ish_chat_requests_total{provider_type="anthropic",model_name="claude-3",status="error"}', "values": "0+12x20"},
            {"series": 'ish_chat_requests_total{provider_type="anthropic",model_name="claude-3",status="success"}', "values": "0+600x20"},
        ],
        "alert_rule_test": [
            {"eval_time": "2m", "exp_alerts": []},
            {"eval_time": "7m", "exp_alerts": []},
            {"eval_time": "8m", "exp_alerts": [fired(
                "HighErrorRate", {"provider_type": "openai"},
                "openai requests are failing",
                "Provider openai fails 1.00 requests/s over 5m (threshold 0.5/s).",
            )]},
        ],
    },
    # 0.9 core (90%) in two instance-manager pods and postgres-0, 50% in load-balancer; the pod cgroup
    # (container="") and another namespace are not counted. 18% per minute of history up to 90% at 5m:
    # pending from 5m (72% at 4m), fires at 10m.
    "HighCPUUsage": {
        "input_series": pods("container_cpu_usage_seconds_total", [
            ("ishchat", IM_POD, "app", "0+54x20"),
            ("ishchat", IM_POD, "", "0+54x20"),
            ("ishchat", IM_POD_DIGITS, "app", "0+54x20"),
            ("ishchat", "postgres-0", "postgres", "0+54x20"),
            ("ishchat", LB_POD, "app", "0+30x20"),
            ("other", "batch-6b5c4d3e2-zzzzz", "job", "0+60x20"),
        ]),
        "alert_rule_test": [
            {"eval_time": "4m", "exp_alerts": []},
            {"eval_time": "9m", "exp_alerts": []},
            {"eval_time": "10m", "exp_alerts": [
                cpu_alert("instance-manager"),  # two pods, one alert for the workload
                cpu_alert("postgres"),
            ]},
        ],
    },
    # intelligent-router 90% and redis-0 87% of their limits; load-balancer 50%; instance-manager has no
    # limit (0: left out); the pod cgroup (container="") is not counted (it would make 92.5%).
    "HighMemoryUsage": {
        "input_series": pods("container_memory_working_set_bytes", [
            ("ishchat", IR_POD, "app", "900000000x10"),
            ("ishchat", IR_POD, "", "950000000x10"),
            ("ishchat", "redis-0", "redis", "870000000x10"),
            ("ishchat", LB_POD, "app", "500000000x10"),
            ("ishchat", IM_POD, "app", "2000000000x10"),
        ]) + pods("container_spec_memory_limit_bytes", [
            ("ishchat", IR_POD, "app", "1000000000x10"),
            ("ishchat", IR_POD, "", "1000000000x10"),
            ("ishchat", "redis-0", "redis", "1000000000x10"),
            ("ishchat", LB_POD, "app", "1000000000x10"),
            ("ishchat", IM_POD, "app", "0x10"),
        ]),
        "alert_rule_test": [
            {"eval_time": "4m", "exp_alerts": []},
            {"eval_time": "5m", "exp_alerts": [
                memory_alert("intelligent-router", 90),
                memory_alert("redis", 87),
            ]},
        ],
    },
    # / is 90% full, /data 50%; tmpfs and overlay (99%) are not disks. namespace="monitoring" of the
    # node_exporter series is replaced by the rule's namespace="ishchat".
    "DiskSpaceRunningLow": {
        "input_series": filesystem("/dev/sda1", "ext4", "/", 10)
        + filesystem("/dev/sdb1", "xfs", "/data", 50)
        + filesystem("tmpfs", "tmpfs", "/run", 1)
        + filesystem("overlay", "overlay", "/var/lib/docker/overlay2/x/merged", 1),
        "alert_rule_test": [
            {"eval_time": "4m", "exp_alerts": []},
            {"eval_time": "5m", "exp_alerts": [fired(
                "DiskSpaceRunningLow",
                {"instance": "node-1:9100", "job": "node", "device": "/dev/sda1", "fstype": "ext4", "mountpoint": "/"},
                "Filesystem / on node-1:9100 is more than 85% full",
                "Filesystem / (/dev/sda1, ext4) on node-1:9100 is 90% full (threshold 85%).",
            )]},
        ],
    },
    "PostgreSQLDown": {
        "input_series": [{"series": 'pg_up{job="postgres",instance="postgres-exporter:9187"}', "values": "1 1 0x5 1x5"}],
        "alert_rule_test": [
            {"eval_time": "2m", "exp_alerts": []},
            {"eval_time": "3m", "exp_alerts": [fired(
                "PostgreSQLDown", {"service": "postgres", "job": "postgres", "instance": "postgres-exporter:9187"},
                "PostgreSQL is down",
                "postgres_exporter at postgres-exporter:9187 reports pg_up = 0: PostgreSQL is unreachable and ISH Chat cannot persist data.",
            )]},
            {"eval_time": "9m", "exp_alerts": []},
        ],
    },
    # ish_chat: statement 1001 takes 1s per call, 1002 10ms, 1003 was not called (no 0/0); database
    # "other": 100ms. One alert per database, from 1m pending, firing at 6m.
    "PostgreSQLSlowQueries": {
        "input_series": statement("ish_chat", "1001", "0+60x15", "0+60x15")
        + statement("ish_chat", "1002", "0+1x15", "0+100x15")
        + statement("ish_chat", "1003", "5x15", "10x15")
        + statement("other", "2001", "0+6x15", "0+60x15"),
        "alert_rule_test": [
            {"eval_time": "5m", "exp_alerts": []},
            {"eval_time": "6m", "exp_alerts": [fired(
                "PostgreSQLSlowQueries", {"service": "postgres", "datname": "ish_chat"},
                "Slow statements in PostgreSQL database ish_chat",
                "The slowest statement in database ish_chat took 1s per call on average over 5m (threshold 500ms).",
            )]},
        ],
    },
    "RedisDown": {
        "input_series": [{"series": 'redis_up{job="redis",instance="redis-exporter:9121"}', "values": "1 0x5 1x5"}],
        "alert_rule_test": [
            {"eval_time": "1m", "exp_alerts": []},
            {"eval_time": "2m", "exp_alerts": [fired(
                "RedisDown", {"service": "redis", "job": "redis", "instance": "redis-exporter:9121"},
                "Redis is down",
                "redis_exporter at redis-exporter:9121 reports redis_up = 0: cache misses and lost sessions.",
            )]},
            {"eval_time": "8m", "exp_alerts": []},
        ],
    },
    # openai spends 0.05 $/s, anthropic 0.005 $/s. rate() over [1h] with t minutes of history is
    # 3t/3600 for openai: above 0.01 from 13m, fires at 28m (84/3600 = 0.0233 $/s).
    "UnexpectedCostSpike": {
        "input_series": [
            {"series": 'ish_chat_cost_estimate_dollars{provider_type="openai"}', "values": "0+3x40"},
            {"series": 'ish_chat_cost_estimate_dollars{provider_type="anthropic"}', "values": "0+0.3x40"},
        ],
        "alert_rule_test": [
            {"eval_time": "12m", "exp_alerts": []},
            {"eval_time": "27m", "exp_alerts": []},
            {"eval_time": "28m", "exp_alerts": [fired(
                "UnexpectedCostSpike", {"provider_type": "openai"},
                "Cost spike on provider openai",
                "Provider openai costs 0.0233 $/s averaged over 1h (threshold 0.01 $/s, 36 $/h).",
            )]},
        ],
    },
}  # fmt: skip


def test_every_alert_has_a_unit_test() -> None:
    assert set(CASES) == set(ALERTS)


@pytest.mark.parametrize("alert", sorted(CASES))
def test_the_alert_fires_after_its_for_and_not_before_or_below_its_threshold(
    alert: str, rules_file: Path, tmp_path: Path
) -> None:
    case = CASES[alert]
    test = {
        "interval": "1m",
        "input_series": case["input_series"],
        "alert_rule_test": [{"alertname": alert, **check} for check in case["alert_rule_test"]],
    }
    assert any(check["exp_alerts"] for check in test["alert_rule_test"]), "the case never expects the alert"
    assert any(not check["exp_alerts"] for check in test["alert_rule_test"]), "the case never expects silence"
    tests = tmp_path / "tests.yaml"
    tests.write_text(
        yaml.safe_dump({"rule_files": [rules_file.name], "evaluation_interval": "1m", "tests": [test]}, width=1000)
    )
    proc = run(PROMTOOL, "test", "rules", tests.name, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


# -- agreement with the policies and the metric contract ---------------------------------------


def test_every_alert_has_exactly_one_policy_with_the_same_severity() -> None:
    bodies = policies()
    assert len(bodies) == 12
    assert sorted(a for p in bodies for a in p["spec"]["match"]["alerts"]) == sorted(ALERTS)
    for r in rules():
        owners = [p for p in bodies if r["alert"] in p["spec"]["match"]["alerts"]]
        assert len(owners) == 1, (r["alert"], [p["metadata"]["name"] for p in owners])
        expected = {"critical": "Critical", "high": "High", "medium": "Medium"}[r["labels"]["severity"]]
        assert owners[0]["spec"]["severity"] == expected, r["alert"]
        assert SEVERITIES[r["labels"]["severity"]] == expected  # what the intake makes of the label


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers that are not functions, keywords, label names."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)  # string literals
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)  # label lists
    text = re.sub(r"\{[^}]*\}", "{}", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "[]", text)  # range windows
    names = set(re.findall(r"\b([A-Za-z_:][A-Za-z0-9_:]*)\b(?!\s*\()", text))
    return {n for n in names if n.lower() not in {"and", "or", "unless", "bool", "offset", "inf", "nan"}}


def test_metric_names_finds_selectors_and_skips_functions_and_labels() -> None:
    expr = 'sum by (le, job) (rate(a_total{x="b_c{"}[5m])) / on(job) group_left(d) b > bool 1 or c_up unless max(d)'
    assert metric_names(expr) == {"a_total", "b", "c_up", "d"}


def test_the_rules_only_use_metrics_of_the_contract() -> None:
    used: set[str] = set()
    for r in rules():
        names = metric_names(r["expr"])
        assert names, (r["alert"], "selects no metric")
        used |= names
        for matchers in re.findall(r"\bup\{([^}]*)\}", r["expr"]):
            assert re.fullmatch(r'job="([^"]+)"', matchers.strip()), (r["alert"], matchers)
            assert matchers.split('"')[1] in UP_JOBS, (r["alert"], matchers)
    assert used <= CONTRACT, used - CONTRACT
    assert "ish_chat_request_duration_seconds_bucket" in used and "pg_stat_statements_calls_total" in used


def threshold(expr: str) -> float:
    match = re.search(r">\s*([0-9.]+)\s*$", expr.strip())
    assert match, f"no trailing '> <threshold>' in {expr!r}"
    return float(match.group(1))


def test_the_thresholds_and_windows_are_the_policies() -> None:
    """Every prometheus.query step (diagnose, verify) of the alert's policy that queries the alert's metrics
    with op '>' uses the alert's threshold; its diagnosis uses the alert's range window."""
    by_alert = {a: p for p in policies() for a in p["spec"]["match"]["alerts"]}
    compared = set()
    for r in rules():
        spec = by_alert[r["alert"]]["spec"]
        steps = [s for stage in ("diagnose", "verify") for s in spec.get(stage, [])]
        same = [
            s["with"]
            for s in steps
            if s["action"] == "prometheus.query"
            and s["with"].get("op") == ">"
            and metric_names(s["with"]["query"]) == metric_names(r["expr"])
        ]
        for query in same:
            assert float(query["value"]) == threshold(r["expr"]), (r["alert"], query)
        diagnosed = [s["with"] for s in spec["diagnose"] if s["with"] in same]
        if diagnosed:
            window = set(re.findall(r"\[[0-9]+[smh]\]", r["expr"]))
            assert set(re.findall(r"\[[0-9]+[smh]\]", diagnosed[0]["query"])) == window, r["alert"]
            compared.add(r["alert"])
        slow = [s["with"] for s in steps if s["action"] == "postgres.slowQueries"]
        if slow:
            assert slow[0]["minMeanMs"] / 1000 == threshold(r["expr"]), r["alert"]
            compared.add(r["alert"])
    # the outages (== 0) have no numeric threshold in their policies: they check workloads and pings
    assert compared == {
        "HighResponseTime", "HighErrorRate", "HighCPUUsage", "HighMemoryUsage", "DiskSpaceRunningLow",
        "PostgreSQLSlowQueries", "UnexpectedCostSpike",
    }  # fmt: skip


# -- Alertmanager -------------------------------------------------------------------------------


def test_the_alertmanager_config_is_valid() -> None:
    proc = run(AMTOOL, "check-config", str(ALERTING / "alertmanager.yaml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_the_webhook_is_the_operators_intake_with_its_token() -> None:
    config = load(ALERTING / "alertmanager.yaml")
    service = load(ROOT / "manifests/service.yaml")
    deployment = load(ROOT / "manifests/deployment.yaml")
    port = next(p["port"] for p in service["spec"]["ports"] if p["name"] == "intake")
    secret = next(v["secret"] for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "intake-token")
    receiver = next(r for r in config["receivers"] if r["name"] == "runbook-operator")
    [webhook] = receiver["webhook_configs"]
    url = f"http://{service['metadata']['name']}.{service['metadata']['namespace']}.svc:{port}{INTAKE_PATH}"
    assert webhook["url"] == url
    assert webhook["send_resolved"] is True and webhook["max_alerts"] == MAX_ALERTS  # more is refused whole
    key = secret["items"][0]["key"]
    assert webhook["http_config"]["authorization"]["credentials_file"] == (
        f"/etc/alertmanager/secrets/{secret['secretName']}/{key}"
    )
    route = config["route"]
    assert route["group_by"] == ["alertname", "namespace", "service", "provider_type"]
    assert (route["group_wait"], route["group_interval"], route["repeat_interval"]) == ("10s", "1m", "4h")


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        *[((f"alertname={alert}", "namespace=ishchat"), "runbook-operator") for alert in sorted(ALERTS)],
        (("alertname=RedisDown",), "null"),
        (("alertname=RedisDown", "namespace=other"), "null"),
        (("alertname=KubePodCrashLooping", "namespace=ishchat-staging"), "null"),
    ],
)
def test_the_ishchat_alerts_route_to_the_operator_and_nothing_else_does(labels: tuple[str, ...], receiver: str) -> None:
    proc = run(
        AMTOOL, "config", "routes", "test", f"--config.file={ALERTING / 'alertmanager.yaml'}",
        f"--verify.receivers={receiver}", *labels,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.split() == [receiver]
