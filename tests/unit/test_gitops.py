"""`runbook-operator validate` and `plan`: offline checks of a GitOps repository's YAML."""

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from runbook_operator.entrypoints.cli import main

ROOT = Path(__file__).resolve().parents[2]
API = "remediation.ishchat.io/v1alpha1"


def incident(name: str = "inc", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": API, "kind": "Incident", "metadata": {"name": name}, "spec": spec}


def policy(name: str = "pol", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": API, "kind": "RemediationPolicy", "metadata": {"name": name}, "spec": spec}


def check(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "action": "http.check", "with": {"url": "http://127.0.0.1:1/health"}, **extra}


def write(path: Path, *docs: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str]]:
    code = main(list(argv))
    return code, capsys.readouterr().out.splitlines()


# -- validate ---------------------------------------------------------------------------------


def test_the_shipped_examples_validate_clean(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(capsys, "validate", str(ROOT / "manifests"))
    files = [p for p in (ROOT / "manifests").rglob("*")
             if p.suffix in (".yaml", ".yml", ".json") and p.name != "kustomization.yaml"]  # fmt: skip
    # examples/: a policy and an incident; runbooks/ish-chat/: the 12 policies of the runbook pack;
    # default-budget/: the operator-wide RemediationBudget
    assert out == [f"{len(files)} file(s), 15 resource(s), 0 problem(s)"]
    assert code == 0


def test_other_kinds_and_kustomization_files_are_ignored(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path / "kustomization.yaml", {"resources": ["x.yaml"], "kind": "Incident", "apiVersion": API})
    write(tmp_path / "cm.yml", {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {}})
    write(tmp_path / "sub" / "p.yaml", policy(diagnose=[check("health")]), incident(alert="A"))
    (tmp_path / "notes.txt").write_text("not yaml: [")
    listed = {"apiVersion": "v1", "kind": "List", "items": [policy(diagnose=[check("health")])]}
    (tmp_path / "sub" / "listed.json").write_text(json.dumps(listed))  # kubectl apply -f DIR reads .json too
    code, out = run(capsys, "validate", str(tmp_path))
    assert (code, out) == (0, ["3 file(s), 3 resource(s), 0 problem(s)"])


CASES = [
    pytest.param(
        incident("urgent", alert="A", severity="Urgent"),
        'Incident/urgent: spec.severity: Unsupported value: "Urgent": supported values: "Critical", "High", "Medium", "Low"',
        id="schema-enum",
    ),
    pytest.param(
        incident("no-alert", summary="x"), "Incident/no-alert: spec.alert: Required value", id="schema-required"
    ),
    pytest.param(
        policy("slow", settle="5 minutes"),
        "RemediationPolicy/slow: spec.settle: Invalid value: \"5 minutes\": should match '^([0-9]+(ms|s|m|h))+$'",
        id="pattern",
    ),
    pytest.param(
        policy("ssh", remediate=[{"name": "x", "action": "ssh.run"}]),
        "RemediationPolicy/ssh: spec.remediate[0].with (ssh.run): unknown action 'ssh.run'; known: alertmanager.silence, docker.logs,",
        id="unknown-action",
    ),
    pytest.param(
        policy("redis-down", remediate=[{"name": "flush", "action": "redis.flushAll", "with": {"port": 6379}}]),
        "RemediationPolicy/redis-down: spec.remediate[0].with (redis.flushAll): host: Field required",
        id="action-parameter",
    ),
    pytest.param(
        policy("cel", verify=[check("x", when="incident.severity ==")]),
        "RemediationPolicy/cel: spec.verify[0].when: does not compile: Failed to parse expression 'incident.severity =='",
        id="cel",
    ),
    pytest.param(
        policy(
            "tpl", diagnose=[{"name": "x", "action": "http.check", "with": {"url": "http://a/{{ secrets.token }}"}}]
        ),
        "RemediationPolicy/tpl: spec.diagnose[0].with (http.check): url: unknown root 'secrets' (known: announcement, findings, incident, steps)",
        id="template-root",
    ),
    pytest.param(
        policy("dup", diagnose=[check("same")], verify=[check("same")]),
        "RemediationPolicy/dup: spec: step names must be unique across diagnose and verify",
        id="duplicate-across-stages",
    ),
    pytest.param(
        policy("dup2", remediate=[check("same"), check("same")]),
        'RemediationPolicy/dup2: spec.remediate[1]: Duplicate value: {"name": "same"}',
        id="duplicate-in-stage",
    ),
    pytest.param(
        incident("pre-approved", alert="A", approvals=[{"step": "failover", "by": "alice"}]),
        "Incident/pre-approved: spec.approvals: Forbidden: must be empty when an Incident is created",
        id="approved-on-create",
    ),
    pytest.param(
        {
            **incident("decoy", alert="A", target={"kind": "Deployment", "name": "web", "namespace": "team-b"}),
            "metadata": {"name": "decoy", "namespace": "team-a"},
        },
        'Incident/decoy: spec.target.namespace: "team-b" is not this Incident\'s namespace team-a',
        id="target-in-another-namespace",
    ),
    pytest.param(policy("typo", sette="5s"), "RemediationPolicy/typo: spec.sette: unknown field", id="unknown-field"),
    pytest.param(
        policy("esc", escalate={"levels": [{"name": "x", "notify": [check("x")]}]}, diagnose=[check("x")]),
        "RemediationPolicy/esc: spec.escalate.levels[0].notify[0].name: duplicate step name 'x'",
        id="duplicate-notify",
    ),
]


@pytest.mark.parametrize(("doc", "message"), CASES)
def test_each_problem_is_one_precise_line(
    doc: dict[str, Any],
    message: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "policies" / "bad.yaml", doc)
    code, out = run(capsys, "validate", "policies/")
    assert code == 1
    assert len(out) == 2, out
    assert out[0].startswith(f"policies/bad.yaml: {message}"), out[0]
    assert out[1] == "1 file(s), 1 resource(s), 1 problem(s)"


def test_problems_of_several_files_are_all_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path / "a.yaml", incident("one", alert="A", severity="Urgent"), incident("two"))
    write(tmp_path / "b.yaml", policy("ok", diagnose=[check("health")]))
    code, out = run(capsys, "validate", str(tmp_path / "a.yaml"), str(tmp_path / "b.yaml"))
    assert code == 1
    assert [line.split(": ")[1] for line in out[:-1]] == ["Incident/one", "Incident/two"]
    assert out[-1] == "2 file(s), 3 resource(s), 2 problem(s)"


def test_malformed_yaml_exits_2_naming_file_and_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: v1\nkind: Incident\nmetadata:\n  name: x\n   oops: [\n")
    write(tmp_path / "good.yaml", incident(alert="A"))
    code, out = run(capsys, "validate", str(tmp_path))
    assert code == 2
    assert out[0] == f"{bad}:5: invalid YAML: mapping values are not allowed in this context (column 8)"
    assert out[-1] == "2 file(s), 1 resource(s), 1 problem(s)"


def test_a_missing_path_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(capsys, "validate", str(tmp_path / "nope"))
    assert code == 2 and out[0] == f"{tmp_path / 'nope'}: no such file or directory"


def test_the_crds_come_from_the_environment_variable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUNBOOK_OPERATOR_CRDS", str(tmp_path / "missing"))
    code = main(["validate", str(ROOT / "manifests")])
    assert code == 2
    assert "RUNBOOK_OPERATOR_CRDS" in capsys.readouterr().err
    monkeypatch.setenv("RUNBOOK_OPERATOR_CRDS", str(ROOT / "crds"))
    assert main(["validate", str(ROOT / "manifests")]) == 0


# -- plan -------------------------------------------------------------------------------------

REDIS = policy(
    "redis-down",
    match={"alerts": ["RedisDown"], "labelSelector": {"matchLabels": {"service": "redis"}}},
    severity="High",
    diagnose=[
        {
            "name": "ping",
            "action": "redis.ping",
            "with": {
                "host": "redis-a",
                "passwordSecretRef": {"name": "redis-auth", "key": "password"},
            },
        },
        {"name": "memory", "action": "redis.memory", "with": {"host": "redis"}},
    ],
    remediate=[
        {
            "name": "clear",
            "action": "redis.deleteByPattern",
            "with": {"host": "redis", "pattern": "session:{{ incident.labels.tenant }}:*"},
        },
        {
            "name": "tell-api",
            "action": "http.request",
            "with": {
                "url": "http://api.internal/cache/{{ incident.labels.tenant }}",
                "json": {"reason": "{{ steps.memory.message }}"},
                "headersFromSecrets": {"Authorization": {"name": "admin-api", "key": "token"}},
            },
            "when": "!steps.clear.ok",
        },
    ],
    verify=[{"name": "ping-again", "action": "redis.ping", "with": {"host": "redis"}, "retries": 5, "backoff": "2s"}],
)
OTHER = policy("instance-manager", match={"alerts": ["InstanceManagerDown"]}, diagnose=[check("health")])


def test_plan_shows_the_match_and_the_rendered_steps(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path / "policies" / "all.yaml", REDIS, OTHER)
    labels = {"service": "redis", "tenant": "acme/1*"}
    inc = write(tmp_path / "inc.yaml", incident("redis-down-1", alert="RedisDown", labels=labels))
    code, out = run(capsys, "plan", str(inc), "--policies", str(tmp_path / "policies"))
    assert code == 0
    text = "\n".join(out)
    assert out[1] == "Policy: redis-down: matched alert 'RedisDown' (priority 0)"
    assert "  instance-manager: alert 'RedisDown' not in ['InstanceManagerDown']" in out
    assert "Severity: High (the policy's); response within 1h" in out
    assert out.index("Diagnose (run once; failures become findings)") < out.index("Remediate (up to 1 attempt(s))")
    assert "    1. ping  redis.ping  [read-only]" in out
    assert "       host: redis-a" in out
    assert "       passwordSecretRef: secret redis-auth/password (read at run time)" in out
    assert "    1. clear  redis.deleteByPattern  [destructive, needs approval]" in out
    assert r"       pattern: session:acme/1\*:*" in out  # the label's `*` matches only itself
    assert "       when: !steps.clear.ok  (decided at run time: refers to step results)" in out
    assert "       url: http://api.internal/cache/acme%2F1%2A" in out  # as the operator would: percent-encoded
    assert '       json: {"reason": "<from step memory at run time>"}' in out
    assert "         Authorization: secret admin-api/token (read at run time)" in out
    assert "       retries 5, backoff 2s" in out
    assert "Escalate (when attempts run out, the runbook's defaults)" in out
    assert "  team-lead (after 30m unresolved): no notification steps" in out
    assert "password" not in text.replace("passwordSecretRef: secret redis-auth/password", "")


def test_plan_shows_what_needs_approval_and_when_conditions_it_can_decide(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pol = policy(
        "p",
        remediate=[
            {"name": "flush", "action": "redis.flushAll", "with": {"host": "r"}, "when": "incident.severity == 'Low'"},
            {"name": "reset", "action": "http.request", "with": {"url": "http://a/r", "destructive": True}},
        ],
    )
    write(tmp_path / "p.yaml", pol)
    inc = write(
        tmp_path / "i.yaml", incident("i", alert="A", severity="Critical", approvals=[{"step": "reset", "by": "ana"}])
    )
    code, out = run(capsys, "plan", str(inc), "--policies", str(tmp_path / "p.yaml"))
    assert code == 0
    assert "       when: incident.severity == 'Low'  → false: the step would be skipped" in out
    # an approval in the file answers no request: each round asks when it gets there
    assert "    2. reset  http.request  [destructive, needs approval]" in out


def test_plan_without_a_match_exits_1_with_the_reasons(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path / "policies" / "all.yaml", REDIS, OTHER)
    inc = write(tmp_path / "inc.yaml", incident("pg", alert="PostgreSQLDown", labels={"service": "postgres"}))
    code, out = run(capsys, "plan", str(inc), "--policies", str(tmp_path / "policies"))
    assert code == 1
    assert out[1:] == [
        "No policy: no RemediationPolicy in namespace 'default' matches alert 'PostgreSQLDown'",
        "Not chosen:",
        "  instance-manager: alert 'PostgreSQLDown' not in ['InstanceManagerDown']",
        "  redis-down: alert 'PostgreSQLDown' not in ['RedisDown']",
        "The operator would escalate it at once (reason NoMatchingPolicy).",
    ]


def test_plan_follows_policy_ref(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path / "policies" / "all.yaml", REDIS, OTHER)
    inc = write(tmp_path / "inc.yaml", incident("x", alert="RedisDown", policyRef={"name": "instance-manager"}))
    code, out = run(capsys, "plan", str(inc), "--policies", str(tmp_path / "policies"))
    assert code == 0
    assert out[1] == "Policy: instance-manager: pinned by policyRef 'instance-manager'"
    assert "    1. health  http.check  [read-only]" in out
    assert "Severity: Medium (the default); response within 4h" in out


def test_plan_with_an_invalid_match_exits_1_with_the_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = policy("broken", match={"alerts": ["A"]}, remediate=[{"name": "x", "action": "ssh.run"}])
    write(tmp_path / "p.yaml", broken)
    inc = write(tmp_path / "i.yaml", incident("i", alert="A"))
    code, out = run(capsys, "plan", str(inc), "--policies", str(tmp_path / "p.yaml"))
    assert code == 1
    assert out[-2].startswith("Policy broken is invalid: spec.remediate[0].with (ssh.run): unknown action 'ssh.run'")
    assert out[-1] == "The operator would escalate it at once (reason InvalidPolicy)."


def test_plan_of_the_shipped_example(capsys: pytest.CaptureFixture[str]) -> None:
    examples = ROOT / "manifests" / "examples"
    code, out = run(capsys, "plan", str(examples / "10-incident.yaml"), "--policies", str(examples))
    assert code == 0
    assert out[1] == "Policy: instance-manager-down: matched alert 'InstanceManagerDown' (priority 0)"
    assert "    1. restart  http.request" in out


def test_plan_shows_which_changes_are_announced_and_the_rendered_messages(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tell = {"name": "tell", "action": "notify.webhook",
            "with": {"url": "http://hooks/x", "text": "{{ incident.alert }} is {{ announcement.phase }}"}}  # fmt: skip
    page = {"name": "page", "action": "notify.webhook", "with": {"url": "http://hooks/page"}}
    pol = policy("p", announce=[{"notify": [tell]}, {"phases": ["Escalated"], "dryRun": True, "notify": [page]}])
    write(tmp_path / "p.yaml", pol)
    inc = write(tmp_path / "i.yaml", incident("i", alert="A", severity="Medium", dryRun=True))
    code, out = run(capsys, "plan", str(inc), "--policies", str(tmp_path))
    assert code == 0
    announce = out[out.index("Announce (each change once, before the incident's next step)") :]
    assert announce[1:4] == [
        "  on AwaitingApproval, Escalated, Resolved (the Medium default)",
        "    1. tell  notify.webhook  [dry run: recorded as Skipped, not run]",
        "       url: http://hooks/x",
    ]
    assert "       text: A is AwaitingApproval" in announce
    assert "  on Escalated" in announce and "    1. page  notify.webhook" in announce  # dryRun: it runs


# -- budgets in validate and plan (issue 26) ------------------------------------------------------
def budget(name: str = "restarts", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": API, "kind": "RemediationBudget", "metadata": {"name": name}, "spec": spec}


def test_validate_checks_budgets_against_their_crd(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path / "ok.yaml", budget(destructiveSteps={"limit": 2, "window": "5m"}))
    write(tmp_path / "bad.yaml", budget("bad", destructiveSteps={"limit": -1, "window": "soon"}))
    code, out = run(capsys, "validate", str(tmp_path))
    assert code == 1
    problems = [line for line in out if line.startswith(str(tmp_path / "bad.yaml"))]
    assert any(
        "spec.destructiveSteps.limit: Invalid value: -1: should be greater than or equal to 0" in p for p in problems
    ), out
    assert any("spec.destructiveSteps.window" in p for p in problems), out
    assert out[-1].startswith("2 file(s), 2 resource(s)")


def test_plan_names_the_budgets_and_whether_they_would_throttle_now(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    restart = {"name": "restart", "action": "http.request", "requiresApproval": False,
               "with": {"url": "http://127.0.0.1:1/restart", "destructive": True}}  # fmt: skip
    pol = policy("im", match={"alerts": ["InstanceManagerDown"]}, remediate=[restart])
    pol["metadata"]["labels"] = {"blast-radius": "restarts"}
    spent = budget(policySelector={"matchLabels": {"blast-radius": "restarts"}},
                   destructiveSteps={"limit": 1, "window": "1h"}, concurrentIncidents=3)  # fmt: skip
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    spent["status"] = {"spent": [{"uid": "u", "incident": "default/x", "step": "restart", "attempt": 1, "at": now}]}
    other = budget("others", policySelector={"matchLabels": {"blast-radius": "none"}}, concurrentIncidents=1)
    write(tmp_path / "policies" / "all.yaml", pol, spent, other)
    inc = write(tmp_path / "inc.yaml", incident("im-1", alert="InstanceManagerDown"))
    code, out = run(capsys, "plan", str(inc), "--policies", str(tmp_path / "policies"))
    assert code == 0
    start = out.index("Budgets (a remediation step past one waits Throttled, or for a person to approve it past it)")
    assert out[start + 1] == "  default/restarts: 1 destructive step(s) per 1h, 3 incident(s) remediating at once"
    assert out[start + 2].startswith(
        "    would be throttled now: step 'restart' waits: budget default/restarts: 1 of 1"
    )
    assert not any("default/others" in line for line in out)
    spent.pop("status")
    write(tmp_path / "policies" / "all.yaml", pol, spent)
    code, out = run(capsys, "plan", str(inc), "--policies", str(tmp_path / "policies"))
    assert not any("would be throttled" in line for line in out)
