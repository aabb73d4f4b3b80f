"""manifests/runbooks/ish-chat: the ISH Chat incident runbook as one RemediationPolicy per alert.

Offline: the pack validates clean, every alert of the runbook has exactly one policy, the
destructive steps wait for an approval, every policy diagnoses, remediates, verifies and
escalates, URL hosts are literal, and `plan` picks the expected policy for each alert.
"""

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from runbook_operator.actions.catalog import default_registry
from runbook_operator.domain.matching import select_policy
from runbook_operator.domain.model import Incident, Policy, Stage
from runbook_operator.domain.parsing import parse_policy
from runbook_operator.entrypoints.cli import main

ROOT = Path(__file__).resolve().parents[2]
PACK = ROOT / "manifests" / "runbooks" / "ish-chat"
API = "remediation.ishchat.io/v1alpha1"
NAMESPACE = "ishchat"

# alert -> (policy file without .yaml, severity from the runbook's table)
ALERTS = {
    "InstanceManagerDown": ("instance-manager-down", "Critical"),
    "IntelligentRouterDown": ("intelligent-router-down", "Critical"),
    "LoadBalancerDown": ("load-balancer-down", "Critical"),
    "HighResponseTime": ("high-response-time", "High"),
    "HighErrorRate": ("high-error-rate", "High"),
    "HighCPUUsage": ("high-cpu-usage", "High"),
    "HighMemoryUsage": ("high-memory-usage", "High"),
    "DiskSpaceRunningLow": ("disk-space-running-low", "High"),
    "PostgreSQLDown": ("postgresql-down", "Critical"),
    "PostgreSQLSlowQueries": ("postgresql-slow-queries", "High"),
    "RedisDown": ("redis-down", "High"),
    "UnexpectedCostSpike": ("unexpected-cost-spike", "Medium"),
}
# Policies with no remediate steps, and why (none today: every alert has a remediation).
NO_REMEDIATION: dict[str, str] = {}
DESTRUCTIVE_ACTIONS = {
    "redis.flushAll",
    "redis.deleteByPattern",
    "postgres.reindex",
    "postgres.terminateBackend",
    "docker.prune",
    "kubernetes.deletePod",
}
URL_KEYS = {"url"}
SECRET_KEYS = {"passwordSecretRef", "urlSecretRef", "headersFromSecrets"}


def bodies() -> list[dict[str, Any]]:
    found = []
    for path in sorted(PACK.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        assert len(docs) == 1, f"{path.name}: one policy per file"
        found.append({**docs[0], "_file": path.name})
    return found


BODIES = bodies()


def policies() -> list[Policy]:
    check = default_registry().check
    parsed = []
    for body in BODIES:
        policy = parse_policy({k: v for k, v in body.items() if k != "_file"}, check)
        assert isinstance(policy, Policy), f"{body['_file']}: {getattr(policy, 'error', policy)}"
        parsed.append(policy)
    return parsed


def all_steps(body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    spec = body["spec"]
    steps = [(stage, step) for stage in ("diagnose", "remediate", "verify") for step in spec.get(stage) or []]
    for level in (spec.get("escalate") or {}).get("levels") or []:
        steps.extend(("escalate", step) for step in level.get("notify") or [])
    return steps


def walk(value: Any, key: str = "") -> list[tuple[str, Any]]:
    if isinstance(value, dict):
        return [pair for k, v in value.items() for pair in walk(v, k)]
    if isinstance(value, list):
        return [pair for item in value for pair in walk(item, key)]
    return [(key, value)]


def test_the_pack_validates_clean(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["validate", str(PACK)])
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "14 file(s), 12 resource(s), 0 problem(s)"  # + alerting/: rules, Alertmanager config
    assert "12 resource(s), 0 problem(s)" in out[-1]
    assert code == 0


def test_the_kustomization_lists_every_policy_in_the_ishchat_namespace() -> None:
    kustomization = yaml.safe_load((PACK / "kustomization.yaml").read_text())
    assert kustomization["namespace"] == NAMESPACE
    assert sorted(kustomization["resources"]) == sorted(f"{file}.yaml" for file, _ in ALERTS.values())
    for body in BODIES:
        assert body["apiVersion"] == API and body["kind"] == "RemediationPolicy"
        assert body["metadata"]["namespace"] == NAMESPACE
        assert f"{body['metadata']['name']}.yaml" == body["_file"]


@pytest.mark.parametrize("alert", sorted(ALERTS))
def test_every_alert_has_exactly_one_policy(alert: str) -> None:
    file, severity = ALERTS[alert]
    parsed = policies()
    incident = Incident(namespace=NAMESPACE, name=file, generation=1, alert=alert)
    matching = [p for p in parsed if alert in p.match.alerts]
    assert [p.name for p in matching] == [file]
    selection = select_policy(incident, parsed)
    assert selection.chosen is not None and selection.chosen.name == file
    assert len(selection.rejected) == len(parsed) - 1
    assert matching[0].severity == severity


def test_no_policy_matches_an_alert_outside_the_runbook() -> None:
    incident = Incident(namespace=NAMESPACE, name="x", generation=1, alert="SomethingElse")
    assert select_policy(incident, policies()).chosen is None


def test_every_destructive_step_requires_approval() -> None:
    checked = 0
    for policy in policies():
        for stage in (Stage.DIAGNOSE, Stage.REMEDIATE, Stage.VERIFY):
            for step in policy.steps(stage):
                failover = step.action == "http.request" and "failover" in str(step.params.get("url", ""))
                if step.destructive or step.action in DESTRUCTIVE_ACTIONS or failover:
                    assert step.destructive, f"{policy.name}/{step.name}: a failover must be marked destructive"
                    assert step.requires_approval, f"{policy.name}/{step.name} runs without an approval"
                    assert stage is Stage.REMEDIATE, f"{policy.name}/{step.name}: destructive outside remediate"
                    checked += 1
    # redis: deleteByPattern, flushAll; postgres: reindex; disk: 2 prunes; error rate: 3 failovers
    assert checked == 8


def test_every_policy_diagnoses_remediates_verifies_and_escalates() -> None:
    for policy in policies():
        assert policy.diagnose, policy.name
        assert policy.remediate or policy.name in NO_REMEDIATION, policy.name
        assert policy.verify, policy.name
        assert policy.escalation is not None and policy.escalation.levels, policy.name
        assert all(level.notify for level in policy.escalation.levels), policy.name


def test_escalation_follows_the_runbooks_procedures() -> None:
    for policy in policies():
        assert policy.escalation is not None
        levels = {level.name: level.after for level in policy.escalation.levels}
        if policy.severity == "Critical":
            assert levels == {"on-call": None, "team-lead": 30 * 60.0, "manager": 3600.0}, policy.name
            assert policy.escalation.update_every == 30 * 60.0, policy.name
        else:
            assert levels == {"on-call": None, "team-lead": 30 * 60.0}, policy.name
            assert policy.escalation.update_every is None, policy.name
        for level in policy.escalation.levels:
            for step in level.notify:
                assert step.action == "notify.webhook"
                assert step.params["urlSecretRef"] == {"name": "ishchat-notify", "key": "webhook"}


def test_no_url_host_is_templated_and_hosts_are_cluster_services() -> None:
    for body in BODIES:
        for _, step in all_steps(body):
            for key, value in walk(step.get("with") or {}):
                if key not in URL_KEYS:
                    continue
                assert isinstance(value, str)
                origin = value.split("{", 1)[0]
                host = urlsplit(origin).hostname or ""
                assert "{{" not in origin and host, f"{body['_file']}/{step['name']}: {value}"
                assert host.endswith(".svc"), f"{body['_file']}/{step['name']}: {host} is not a Service"


def test_credentials_come_only_from_secrets() -> None:
    for body in BODIES:
        for _, step in all_steps(body):
            params = step.get("with") or {}
            assert not {"password", "token"} & set(params), f"{body['_file']}/{step['name']}"
            if step["action"].startswith("postgres."):
                assert params["passwordSecretRef"] == {"name": "ishchat-postgres", "key": "password"}
                assert (params["host"], params["dbname"], params["user"]) == (
                    "postgres.ishchat.svc",
                    "ish_chat",
                    "ishchat_user",
                )
            if step["action"].startswith("redis."):
                assert params["host"] == "redis.ishchat.svc"
            if step["action"].startswith("prometheus."):
                assert params["url"] == "http://prometheus.monitoring.svc:9090"
            assert not any("secret" in str(v).lower() for k, v in walk(params) if k not in SECRET_KEYS)


def test_when_conditions_only_refer_to_earlier_steps() -> None:
    for body in BODIES:
        seen: list[str] = []
        for _, step in all_steps(body):
            for ref in re.findall(r"steps\.([A-Za-z0-9_]+)", step.get("when") or ""):
                assert ref in seen, f"{body['_file']}/{step['name']}: when refers to {ref!r}, not an earlier step"
            seen.append(step["name"])


@pytest.mark.parametrize("alert", sorted(ALERTS))
def test_plan_of_one_incident_per_alert_names_the_policy(
    alert: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file, severity = ALERTS[alert]
    incident = {
        "apiVersion": API,
        "kind": "Incident",
        "metadata": {"name": file, "namespace": NAMESPACE},
        "spec": {"alert": alert, "labels": {"service": "instance-manager", "provider_type": "openai"}},
    }
    path = tmp_path / "incident.yaml"
    path.write_text(yaml.safe_dump(incident))
    code = main(["plan", str(path), "--policies", str(PACK)])
    out = capsys.readouterr().out.splitlines()
    assert code == 0, out
    assert out[1] == f"Policy: {file}: matched alert '{alert}' (priority 0)"
    assert f"Severity: {severity} (the policy's)" in "\n".join(out)
    assert any(line.startswith("Verify") for line in out)
    assert any(line.startswith("Escalate") for line in out)


def test_critical_and_high_policies_announce_to_on_call_and_the_readmes_paging_example_fits_the_pack(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    registry = default_registry()
    for alert, (name, severity) in ALERTS.items():
        policy = parse_policy(yaml.safe_load((PACK / f"{name}.yaml").read_text()), registry.check)
        assert isinstance(policy, Policy), policy
        steps = [s.name for phase in ("Diagnosing", "Resolved") for s in policy.announced(phase, severity)]
        assert steps == (["announce-on-call"] * 2 if severity in ("Critical", "High") else []), alert
    section = (ROOT / "docs" / "oncall.md").read_text().split("## On-call communication", 1)[1]
    example = yaml.safe_load(re.search(r"```yaml\n(.*?)```", section, re.S).group(1))  # type: ignore[union-attr]
    body = yaml.safe_load((PACK / "instance-manager-down.yaml").read_text())
    body["spec"]["announce"] = example["spec"]["announce"]
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(body))
    assert main(["validate", str(tmp_path)]) == 0, capsys.readouterr().out
    actions = {s["action"] for a in example["spec"]["announce"] for s in a["notify"]}
    assert actions == {"notify.slack", "notify.pagerduty", "notify.email"}
