"""The twelve runbook scenarios, end to end in the lab `make run` brings up.

Every scenario takes the whole real path: a fault in the lab → the metric in Prometheus →
the pack's alert rule → Alertmanager → the operator's intake → an Incident → the pack's
policy → its steps against the lab → where the runbook ends it. The lab runs on its own
control plane (its operator watches all namespaces, like `make run`'s). Faults come in the
three waves of ``scenarios.WAVES``; each wave is played once, and the tests below read what
it left: the Incident as it settled, and what the lab saw happen.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from runbook_lab import scenarios
from runbook_lab.controlplane import ControlPlane
from runbook_lab.lab import NAMESPACE, ONCALL_GROUP, ONCALL_USER, Lab
from runbook_operator.actions.notify import messages
from runbook_operator.entrypoints import cli
from tests.fixtures.cluster import ROOT
from tests.fixtures.common import wait_for


@dataclass
class Wave:
    outcomes: dict[str, scenarios.Outcome]
    calls: list[tuple[str, str, str, Any]]  # what the simulated ISH Chat was asked, in order
    hooks: list[tuple[str, Any]]  # notifications the lab's on-call webhook received
    workloads: dict[str, dict[str, Any]]  # name -> the Deployment/StatefulSet as the wave left it
    extra: dict[str, Any] = field(default_factory=dict)

    def incident(self, alert: str) -> dict[str, Any]:
        outcome = self.outcomes[alert]
        assert outcome.incident is not None, f"no Incident for {alert}; the operator log tells why"
        return outcome.incident

    def steps(self, alert: str) -> dict[str, dict[str, Any]]:
        return {f"{s['stage']}.{s['name']}": s for s in self.incident(alert)["status"]["steps"]}

    def called(self, service: str, method: str, path: str) -> list[Any]:
        return [body for s, m, p, body in self.calls if (s, m, p) == (service, method, path)]


class LabRun:
    def __init__(self, lab: Lab, log: Path) -> None:
        self.lab, self.log = lab, log
        self.kubeconfig = lab.kubeconfig

    def kubectl(self, *args: str) -> str:
        return self.lab.kube(*args).stdout

    def incidents(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = json.loads(self.kubectl("get", "incidents", "-n", NAMESPACE, "-o", "json"))[
            "items"
        ]
        return items

    def incident(self, name: str) -> dict[str, Any]:
        found: dict[str, Any] = json.loads(self.kubectl("get", "incident", name, "-n", NAMESPACE, "-o", "json"))
        return found

    def workloads(self) -> dict[str, dict[str, Any]]:
        items = json.loads(self.kubectl("get", "deployments,statefulsets", "-n", NAMESPACE, "-o", "json"))["items"]
        return {item["metadata"]["name"]: item for item in items}

    def play(self, wave: tuple[str, ...]) -> Wave:
        assert self.lab.sim is not None
        before = [item["metadata"]["name"] for item in self.incidents()]
        calls_before, hooks_before = len(self.lab.sim.calls), len(self.lab.hooks)
        approved_at: dict[str, int] = {}  # incident name -> the number of the wave's calls when on-call approved

        def approve(name: str, step: str) -> bool:
            assert self.lab.sim is not None
            approved_at[name] = len(self.lab.sim.calls) - calls_before
            argv = ["approve", name, step, "-n", NAMESPACE, "--yes", f"--kubeconfig={self.kubeconfig}",
                    f"--as={ONCALL_USER}", f"--as-group={ONCALL_GROUP}"]  # fmt: skip
            return cli.main(argv) == 0

        outcomes = scenarios.play(wave, self.lab.inject, self.incidents, timeout=150, ignore=before, approve=approve)
        calls, hooks = self.lab.sim.calls[calls_before:], self.lab.hooks[hooks_before:]
        return Wave(outcomes, calls, hooks, self.workloads(), {"approved_at": approved_at})

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@pytest.fixture(scope="module")
def lab_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabRun]:
    build = subprocess.run([str(ROOT / "tools/controlplane/build.sh")], capture_output=True, text=True, check=True)
    plane = ControlPlane(tmp_path_factory.mktemp("lab-controlplane"), Path(build.stdout.strip()))
    root = Path(tempfile.mkdtemp(prefix="rbo-lab-"))
    root.chmod(0o755)  # PostgreSQL runs as its own user and must reach its data directory
    log = tmp_path_factory.mktemp("lab-log") / "operator.log"
    lab = Lab(root / "lab", plane.up(), plane.bin / "kubectl", examples=False)
    try:
        lab.up(log)
        yield LabRun(lab, log)
    finally:
        lab.down()
        plane.down()
        shutil.rmtree(root, ignore_errors=True)


def _settled(run: LabRun, wave: Wave) -> None:
    missed = {o.alert: o.phases for o in wave.outcomes.values() if not o.ok}
    assert not missed, f"not as the runbook expects: {missed}\n{scenarios.table(wave.outcomes.values())}\n{run.tail()}"


@pytest.fixture(scope="module")
def outages(lab_run: LabRun) -> Wave:
    """Wave 1: the three services crash, PostgreSQL and Redis stop; then the faults clear."""
    wave = lab_run.play(scenarios.WAVES[0])
    lab = lab_run.lab
    assert lab.sim is not None and lab.postgres is not None and lab.redis is not None
    wave.extra["listening"] = {
        name: httpx.get(f"http://{lab.ip(f'{name}.ishchat.svc')}:{port}/health", timeout=2).status_code
        for name, port in (("instance-manager", 9090), ("intelligent-router", 9091), ("load-balancer", 9092))
    }
    wave.extra["servers"] = {"postgres": lab.postgres.running, "redis": lab.redis.running}
    wave.extra["faults_left"] = lab.state()["faults"]
    _settled(lab_run, wave)
    # the alerts resolve (the operator fixed what fired them), Alertmanager says so, the intake marks it
    for outcome in wave.outcomes.values():
        name = outcome.incident["metadata"]["name"] if outcome.incident else ""
        wait_for(
            lambda name=name: lab_run.incident(name)["spec"].get("resolved") is True,
            90,
            f"Alertmanager's resolved notification for {name}",
        )
    assert lab.prometheus is not None
    wave.extra["firing_after"] = lab.prometheus.firing()
    wave.extra["final"] = {
        o.alert: lab_run.incident(o.incident["metadata"]["name"]) for o in wave.outcomes.values() if o.incident
    }
    lab.clear()
    return wave


@pytest.fixture(scope="module")
def degradations(lab_run: LabRun, outages: Wave) -> Wave:
    """Wave 2, where on-call approves the failover HighErrorRate waits for (`runbook-operator approve`)."""
    wave = lab_run.play(scenarios.WAVES[1])
    _settled(lab_run, wave)
    assert lab_run.lab.sim is not None
    wave.extra["failed_over"] = set(lab_run.lab.sim.failed_over)
    lab_run.lab.clear()
    return wave


@pytest.fixture(scope="module")
def capacity(lab_run: LabRun, degradations: Wave) -> Wave:
    wave = lab_run.play(scenarios.WAVES[2])
    _settled(lab_run, wave)
    lab_run.lab.clear()
    return wave


def _from_alertmanager(incident: dict[str, Any], alert: str) -> None:
    source = incident["spec"]["source"]
    assert incident["spec"]["alert"] == alert and source["kind"] == "Alertmanager"
    assert source["fingerprint"] and source["startsAt"]
    assert incident["spec"]["labels"]["alertname"] == alert and incident["spec"]["labels"]["namespace"] == NAMESPACE


def _ok(steps: dict[str, dict[str, Any]], *names: str) -> None:
    for name in names:
        assert steps[name]["state"] == "Succeeded", f"{name}: {steps[name]}"


def _resolved_by_verification_or_the_alert(incident: dict[str, Any], steps: dict[str, dict[str, Any]]) -> None:
    """Verified: every verify step passed. ResolvedExternally: the alert cleared first (the fix
    worked; Alertmanager said so before the operator's own checks finished)."""
    resolved = next(c for c in incident["status"]["conditions"] if c["type"] == "Resolved")
    assert resolved["reason"] in ("Verified", "ResolvedExternally")
    verify = [name for name in steps if name.startswith("Verify.")]
    if resolved["reason"] == "Verified":
        assert verify
        _ok(steps, *verify)
    else:
        assert incident["spec"].get("resolved") is True


# -- wave 1: outages ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("alert", "service", "health_step"),
    [
        ("InstanceManagerDown", "instance-manager", "Diagnose.health"),
        ("IntelligentRouterDown", "intelligent-router", "Diagnose.routing_config"),
        ("LoadBalancerDown", "load-balancer", "Diagnose.config"),
    ],
)
def test_a_crashed_service_is_restarted_and_resolves(outages: Wave, alert: str, service: str, health_step: str) -> None:
    incident = outages.incident(alert)
    _from_alertmanager(incident, alert)
    assert incident["status"]["phase"] == "Resolved" and incident["spec"]["severity"] == "Critical"
    steps = outages.steps(alert)
    assert steps[health_step]["state"] == "Failed" and "connect" in steps[health_step]["message"].lower()
    logs = steps["Diagnose.logs"]  # through the API server to the lab's kubelet: the crash's error lines
    assert logs["state"] == "Failed" and logs["output"]["matches"] >= 2, logs
    _ok(steps, "Remediate.restart")
    _resolved_by_verification_or_the_alert(incident, steps)
    restarted = outages.workloads[service]["spec"]["template"]["metadata"]["annotations"]
    assert "kubectl.kubernetes.io/restartedAt" in restarted  # the rollout restart the lab's kubelet acted on
    assert outages.extra["listening"][service] == 200  # it answers again
    assert alert not in outages.extra["firing_after"]
    final = outages.extra["final"][alert]
    assert final["spec"]["resolved"] is True and final["status"]["phase"] == "Resolved"


@pytest.mark.parametrize(
    ("alert", "server", "probe"),
    [("PostgreSQLDown", "postgres", "Diagnose.ping"), ("RedisDown", "redis", "Diagnose.ping")],
)
def test_a_stopped_database_is_restarted_by_its_statefulset_and_resolves(
    outages: Wave, alert: str, server: str, probe: str
) -> None:
    incident = outages.incident(alert)
    _from_alertmanager(incident, alert)
    assert incident["status"]["phase"] == "Resolved"
    steps = outages.steps(alert)
    assert steps[probe]["state"] == "Failed" and "refused" in steps[probe]["message"].lower()
    logs = steps["Diagnose.logs"]
    assert logs["state"] == "Failed" and logs["output"]["matches"] >= 1, logs  # the shutdown in its log
    _ok(steps, "Remediate.restart")
    _resolved_by_verification_or_the_alert(incident, steps)
    assert outages.extra["servers"][server] is True  # really running again: started by the lab's kubelet
    assert outages.extra["faults_left"] == []
    assert outages.extra["final"][alert]["spec"]["resolved"] is True
    assert alert not in outages.extra["firing_after"]


# -- wave 2: degradations ------------------------------------------------------------------


def test_high_response_time_switches_to_performance_routing_and_resolves(degradations: Wave) -> None:
    incident = degradations.incident("HighResponseTime")
    _from_alertmanager(incident, "HighResponseTime")
    assert incident["spec"]["labels"]["provider_type"] == "openai"
    steps = degradations.steps("HighResponseTime")
    assert steps["Diagnose.p95"]["state"] == "Failed"  # p95 above 2s: the finding that drives the remediation
    _ok(steps, "Remediate.performance-routing", "Remediate.scale-instances", "Verify.p95-below-threshold")
    assert degradations.called("load-balancer", "POST", "/strategy/update") == [{"strategy": "performance_based"}]
    assert degradations.called("intelligent-router", "POST", "/instances/scale") == [
        {"provider_type": "openai", "desired_instances": 5}  # templated from the alert's provider_type label
    ]
    assert incident["status"]["phase"] == "Resolved"


def test_high_error_rate_resets_circuits_and_fails_over_once_on_call_approves(degradations: Wave) -> None:
    incident = degradations.incident("HighErrorRate")
    _from_alertmanager(incident, "HighErrorRate")
    outcome = degradations.outcomes["HighErrorRate"]
    assert outcome.approved and outcome.phases.index("AwaitingApproval") < outcome.phases.index("Resolved")
    steps = degradations.steps("HighErrorRate")
    assert steps["Diagnose.provider_openai"]["state"] == "Failed"
    _ok(steps, "Diagnose.provider_anthropic", "Diagnose.provider_zai", "Remediate.reset-circuits")
    # the destructive failover ran once, and only after on-call approved it
    failovers = [
        i for i, call in enumerate(degradations.calls) if call[:3] == ("load-balancer", "POST", "/failover/configure")
    ]
    assert len(failovers) == 1 and failovers[0] >= degradations.extra["approved_at"][incident["metadata"]["name"]]
    failover = steps["Remediate.failover-openai"]
    assert failover["state"] == "Succeeded" and failover["approvedBy"] == ONCALL_USER
    assert failover["approvedDigest"] == failover["approvalRequest"]["digest"]
    assert degradations.extra["failed_over"] == {"openai"}
    assert incident["status"]["phase"] == "Resolved"  # verified, or the alert cleared first


def test_a_memory_leak_a_restart_cannot_fix_is_escalated_to_on_call(degradations: Wave) -> None:
    incident = degradations.incident("HighMemoryUsage")
    _from_alertmanager(incident, "HighMemoryUsage")
    assert incident["spec"]["labels"]["service"] == "instance-manager"
    status = incident["status"]
    assert status["phase"] == "Escalated"
    escalated = next(c for c in status["conditions"] if c["type"] == "Escalated")
    assert escalated["reason"] == "RemediationExhausted"
    steps = degradations.steps("HighMemoryUsage")
    _ok(steps, "Remediate.restart", "Remediate.clear-cache")
    assert steps["Diagnose.oom_logs"]["state"] == "Failed" and "MemoryError" in json.dumps(steps["Diagnose.oom_logs"])
    verify = steps["Verify.memory-below-threshold"]
    assert verify["state"] == "Failed" and "95" in verify["message"]
    polled = datetime.fromisoformat(verify["finishedAt"]) - datetime.fromisoformat(verify["startedAt"])
    assert polled.total_seconds() >= 5  # retried (10 x 1s at lab speed), not one look
    assert degradations.called("intelligent-router", "POST", "/cache/clear") == [None]
    name = incident["metadata"]["name"]
    notes = [body["text"] for hook, body in degradations.hooks if hook == "on-call" and name in body["text"]]
    assert len(notes) == 2, notes  # the announcement of the investigation, then the on-call level's page
    assert notes[0].startswith(f"[High] HighMemoryUsage ishchat/{name}: investigating")
    assert notes[1].startswith(f"[High] HighMemoryUsage (ishchat/{name}) escalated")


def test_disk_space_running_low_waits_for_approval_to_prune(degradations: Wave) -> None:
    incident = degradations.incident("DiskSpaceRunningLow")
    _from_alertmanager(incident, "DiskSpaceRunningLow")
    steps = degradations.steps("DiskSpaceRunningLow")
    assert incident["status"]["phase"] == "AwaitingApproval"
    assert steps["Diagnose.disk_usage"]["state"] == "Failed" and "92" in steps["Diagnose.disk_usage"]["message"]
    assert steps["Remediate.prune-images"]["state"] == "AwaitingApproval"
    assert "Remediate.prune-volumes" not in steps or steps["Remediate.prune-volumes"]["state"] != "Succeeded"


def test_slow_queries_are_analyzed_and_reindex_waits_for_approval(degradations: Wave) -> None:
    incident = degradations.incident("PostgreSQLSlowQueries")
    _from_alertmanager(incident, "PostgreSQLSlowQueries")
    steps = degradations.steps("PostgreSQLSlowQueries")
    assert incident["status"]["phase"] == "AwaitingApproval"
    assert steps["Diagnose.slow_queries"]["state"] == "Failed" and "pg_sleep" in json.dumps(
        steps["Diagnose.slow_queries"]
    )
    _ok(steps, "Remediate.analyze")
    assert steps["Remediate.reindex"]["state"] == "AwaitingApproval"


# -- wave 3: capacity and cost ----------------------------------------------------------------


def test_high_cpu_scales_the_deployment_out_and_resolves(capacity: Wave) -> None:
    incident = capacity.incident("HighCPUUsage")
    _from_alertmanager(incident, "HighCPUUsage")
    assert incident["spec"]["labels"]["service"] == "instance-manager"
    assert incident["status"]["phase"] == "Resolved"
    steps = capacity.steps("HighCPUUsage")
    assert steps["Diagnose.cpu_by_pod"]["state"] == "Failed"
    _ok(steps, "Remediate.scale-out", "Verify.scaled-out-ready", "Verify.cpu-below-threshold")
    assert capacity.workloads["instance-manager"]["spec"]["replicas"] == 3  # from 2, by 1, at least 3
    assert capacity.called("intelligent-router", "POST", "/config/update") == [{"max_concurrent_requests": 50}]


def test_a_cost_spike_is_rate_limited_and_scaling_down_waits_for_approval(capacity: Wave) -> None:
    incident = capacity.incident("UnexpectedCostSpike")
    _from_alertmanager(incident, "UnexpectedCostSpike")
    assert incident["spec"]["severity"] == "Medium" and incident["spec"]["labels"]["provider_type"] == "openai"
    steps = capacity.steps("UnexpectedCostSpike")
    assert incident["status"]["phase"] == "AwaitingApproval"
    _ok(steps, "Remediate.rate-limit", "Remediate.cost-optimized-routing")
    assert steps["Remediate.scale-down-provider"]["state"] == "AwaitingApproval"
    assert capacity.called("intelligent-router", "POST", "/rate-limit/configure") == [
        {"provider_type": "openai", "requests_per_minute": 100}
    ]
    scaled = capacity.called("intelligent-router", "POST", "/instances/scale")
    assert {"provider_type": "openai", "desired_instances": 2} not in scaled  # not before the approval
    assert scaled == [{"provider_type": "openai", "desired_instances": 10}]  # HighCPUUsage's, same wave


def test_critical_and_high_incidents_tell_on_call_each_status_change_once(
    outages: Wave, degradations: Wave, capacity: Wave
) -> None:
    """The pack announces Critical and High incidents' changes to the on-call webhook (runbook:
    "update when status changes"): what status says was announced is what the webhook got, in order."""
    told: dict[str, list[str]] = {}
    severities: dict[str, str] = {}
    for wave in (outages, degradations, capacity):
        for outcome in wave.outcomes.values():
            assert outcome.incident is not None
            name, status = outcome.incident["metadata"]["name"], outcome.incident["status"]
            head = f"[{status['severity']}] {outcome.alert} ishchat/{name}: "
            heads = [b["text"].split("\n")[0] for h, b in wave.hooks if h == "on-call" and b["text"].startswith(head)]
            announced = [a["phase"] for a in status.get("announcements") or ()]
            assert all(a["done"] for a in status.get("announcements") or ())
            assert [h.removeprefix(head) for h in heads] == [messages.STATUS_WORDS[p] for p in announced], name
            assert outcome.messages()[1] == 0, status["steps"]
            told[outcome.alert], severities[outcome.alert] = announced, status["severity"]
    for alert, phases in told.items():
        if severities[alert] in ("Critical", "High"):
            assert phases[0] == "Diagnosing", (alert, phases)
        else:
            assert "Diagnosing" not in phases, (alert, phases)
    assert told["InstanceManagerDown"] == ["Diagnosing", "Resolved"]
    assert told["HighErrorRate"] == ["Diagnosing", "AwaitingApproval", "Resolved"]  # approved by on-call, fixed
    assert told["DiskSpaceRunningLow"] == ["Diagnosing", "AwaitingApproval"]
    assert told["HighMemoryUsage"] == ["Diagnosing"]  # Escalated: the on-call level's own page says it


def test_every_alert_of_the_runbook_was_played(outages: Wave, degradations: Wave, capacity: Wave) -> None:
    played = {**outages.outcomes, **degradations.outcomes, **capacity.outcomes}
    assert set(played) == set(scenarios.EXPECTED)
    assert all(o.settled_after is not None and o.settled_after < 150 for o in played.values())


# -- replay: three changes of the pack against what the operator archived ----------------------


def _replay(*argv: str) -> tuple[int, str, str]:
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["replay", *argv])
    return code, out.getvalue(), err.getvalue()


def test_replaying_three_pack_changes_over_the_archive_names_exactly_the_incidents_each_touches(
    lab_run: LabRun, outages: Wave, degradations: Wave, capacity: Wave, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """The operator archived every scenario that ended (the lab runs it with an archive); replaying
    the pack as the cluster holds it changes nothing, and each of three proposed changes names the
    one incident it touches, with exit codes as ``--fail-on`` says."""
    from markdown_it import MarkdownIt

    from runbook_lab.recorded import PACK_CHANGES

    monkeypatch.setenv("RUNBOOK_ARCHIVE_DSN", lab_run.lab.archive_dsn())
    played = {**outages.outcomes, **degradations.outcomes, **capacity.outcomes}
    name = {alert: o.incident["metadata"]["name"] for alert, o in played.items() if o.incident}
    ended = {alert for alert, expected in scenarios.EXPECTED.items() if expected in ("Resolved", "Escalated")}
    served = json.loads(lab_run.kubectl("get", "remediationpolicies", "-n", NAMESPACE, "-o", "json"))["items"]
    pack = [{"apiVersion": p["apiVersion"], "kind": p["kind"], "spec": p["spec"],
             "metadata": {"name": p["metadata"]["name"], "namespace": NAMESPACE}} for p in served]  # fmt: skip

    def proposal(change: str | None) -> str:
        folder = tmp_path / (change or "merged")
        folder.mkdir()
        edit = PACK_CHANGES[change] if change else (lambda body: body)
        (folder / "policies.json").write_text(json.dumps({"apiVersion": "v1", "kind": "List",
                                                          "items": [edit(p) for p in pack]}))  # fmt: skip
        return str(folder)

    merged = proposal(None)

    def archived() -> set[str]:
        code, out, _ = _replay("--archive", "-n", NAMESPACE, "--policies", merged, "-o", "json")
        return {i["name"] for i in json.loads(out)["incidents"]} if code == 0 else set()

    wait_for(lambda: {name[a] for a in ended} <= archived(), 30, "the finished scenarios in the archive")
    code, out, _ = _replay("--archive", "-n", NAMESPACE, "--policies", merged, "-o", "json", "--fail-on",
                           ",".join(cli_kinds()))  # fmt: skip
    document = json.loads(out)
    assert code == 0 and document["summary"]["changed"] == 0, out  # the pack as it ran: nothing changes
    (before,) = {i["name"]: i for i in document["incidents"]}[name["HighErrorRate"]]["before"]
    assert before["end"] == "Resolved" and all(s["recorded"] for s in before["steps"])  # every call it made, matched
    assert [s["approvedBy"] for s in before["steps"] if s["name"] == "failover-openai"] == [ONCALL_USER]

    expected = {  # change -> (the one incident it touches, its riskiest kind)
        "failover-without-approval": ("HighErrorRate", "unapproved-destructive"),
        "redis-restart-removed": ("RedisDown", None),
        "cpu-critical-only": ("HighCPUUsage", "unmatched"),
    }
    for change, (alert, riskiest) in expected.items():
        folder = proposal(change)
        code, out, err = _replay("--archive", "-n", NAMESPACE, "--policies", folder, "-o", "json")
        report = json.loads(out)
        touched = {i["name"]: i["changes"] for i in report["incidents"] if i["changes"]}
        assert set(touched) == {name[alert]}, (change, touched)
        kinds = touched[name[alert]]
        if riskiest:
            assert kinds[0] == riskiest, (change, kinds)
        code, _, err = _replay("--archive", "-n", NAMESPACE, "--policies", folder, "--fail-on", kinds[0])
        assert code == 1 and err.strip() == f"runbook-operator replay: --fail-on: {kinds[0]} (1)"
        others = [k for k in cli_kinds() if k not in kinds]
        assert _replay("--archive", "-n", NAMESPACE, "--policies", folder, "--fail-on", ",".join(others))[0] == 0

        code, text, _ = _replay("--archive", "-n", NAMESPACE, "--policies", folder, "-o", "markdown")
        assert code == 0 and f"{NAMESPACE}/{name[alert]}" in text
        html = MarkdownIt("commonmark").enable("table").render(text)  # as GitHub renders a comment
        tags = {t.split()[0].strip("/") for t in re.findall(r"<([^>]+)>", html)}
        assert tags <= {"h3", "p", "table", "thead", "tbody", "tr", "th", "td", "ul", "li", "strong"}, tags
    assert (
        "would run failover-openai without approval"
        in _replay(
            "--archive", "-n", NAMESPACE, "--policies", str(tmp_path / "failover-without-approval"), "-o", "markdown"
        )[1]
    )


def cli_kinds() -> tuple[str, ...]:
    from runbook_operator.gitops.whatif import KINDS

    return KINDS
