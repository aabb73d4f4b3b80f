import pytest

from runbook_operator.domain.model import Policy, Stage
from tests.unit.builders import check, invalid, policy, request


def test_a_valid_policy_parses_into_ordered_typed_steps() -> None:
    parsed = policy(
        diagnose=[check("health", timeout="5s")],
        remediate=[request("restart", retries=2, backoff="500ms", continueOnFailure=True)],
        verify=[check("again")],
        settle="30s",
        limits={"maxAttempts": 3},
        severity="Critical",
    )
    assert isinstance(parsed, Policy)
    assert [s.name for s in parsed.diagnose] == ["health"]
    assert parsed.diagnose[0].timeout == 5 and parsed.diagnose[0].stage is Stage.DIAGNOSE
    restart = parsed.remediate[0]
    assert (restart.retries, restart.backoff, restart.continue_on_failure) == (2, 0.5, True)
    assert (parsed.settle, parsed.max_attempts, parsed.severity) == (30, 3, "Critical")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"diagnose": [{"name": "x", "action": "ssh.run"}]}, "spec.diagnose[0].with (ssh.run): unknown action 'ssh.run'"),
        ({"verify": [{"name": "x", "action": "http.check", "with": {}}]}, "spec.verify[0].with (http.check): url: Field required"),
        ({"verify": [{"name": "x", "action": "http.check", "with": {"url": "ftp://x"}}]}, "url: URL scheme should be 'http' or 'https'"),
        ({"verify": [check("x") | {"with": {"url": "http://a", "expectStatus": 42}}]}, "expectStatus: Input should be greater than or equal to 100"),
        ({"verify": [check("x") | {"with": {"url": "http://a", "colour": "red"}}]}, "colour: Extra inputs are not permitted"),
        ({"remediate": [request("x") | {"with": {"url": "http://a", "method": "BREW"}}]}, "method: Input should be"),
        ({"diagnose": [check("same")], "verify": [check("same")]}, "spec.verify: duplicate step name 'same'"),
        ({"verify": [check("x", timeout="soon")]}, "spec.verify[0].timeout: invalid duration 'soon'"),
        ({"settle": "1 minute"}, "spec.settle: invalid duration"),
        ({"severity": "Urgent"}, "spec.severity: unknown severity 'Urgent'"),
        ({"limits": {"maxAttempts": 0}}, "spec.limits.maxAttempts: must be an integer >= 1"),
        ({"match": {"labelSelector": {"matchExpressions": [{"key": "k", "operator": "Near"}]}}}, "operator: unknown operator 'Near'"),
        ({"match": {"labelSelector": {"matchExpressions": [{"key": "k", "operator": "In"}]}}}, "values: must be non-empty for operator In"),
        ({"verify": [{"action": "http.check"}]}, "spec.verify[0].name: required"),
        ({"verify": [check("x", when="steps.x.ok ==")]}, "spec.verify[0].when: does not compile"),
        ({"verify": [check("x", when="secrets.a == 'b'")]}, "spec.verify[0].when: unknown root 'secrets'"),
        ({"remediate": [request("x") | {"with": {"url": "http://a/", "json": {"p": "{{ env.HOME }}"}}}]}, "spec.remediate[0].with (http.request): json.p: unknown root 'env'"),
        ({"remediate": [request("x") | {"with": {"url": "http://{{ incident.labels.h }}/"}}]}, "url: templates may only fill the URL path"),
        ({"remediate": [request("x") | {"with": {"url": "http://a/", "expectStatus": "{{ incident.alert"}}]}, "expectStatus: template does not parse"),
        ({"escalate": {"levels": [{"name": "a"}, {"name": "a"}]}}, "spec.escalate.levels: level names must be unique"),
        ({"escalate": {"levels": [{"name": "a", "after": "soon"}]}}, "spec.escalate.levels[0].after: invalid duration"),
        ({"escalate": {"levels": [{"name": "a", "notify": [{"name": "n", "action": "notify.webhook", "with": {"url": "http://h/", "format": "teams"}}]}]}}, "spec.escalate.levels[0].notify[0].with (notify.webhook): format: Input should be 'slack' or 'json'"),
        ({"diagnose": [check("n")], "escalate": {"levels": [{"name": "a", "notify": [{"name": "n", "action": "notify.webhook", "with": {"url": "http://h/"}}]}]}}, "notify[0].name: duplicate step name 'n'"),
        ({"limits": {"cooldown": "a while"}}, "spec.limits.cooldown: invalid duration"),
    ],
)  # fmt: skip
def test_invalid_policies_name_the_field_and_the_problem(spec: dict, message: str) -> None:  # type: ignore[type-arg]
    assert message in invalid(**spec).error


def test_an_invalid_step_keeps_the_match_so_incidents_learn_why() -> None:
    bad = invalid(match={"alerts": ["RedisDown"]}, verify=[{"name": "x", "action": "nope.x"}])
    assert bad.match is not None and bad.match.alerts == {"RedisDown"}


def test_templated_values_are_checked_when_the_step_runs_not_on_apply() -> None:
    parsed = policy(
        remediate=[
            request("x")
            | {"with": {"url": "http://a/{{ incident.labels.svc }}", "expectStatus": "{{ steps.y.output.code }}"}}
        ]
    )
    assert parsed.remediate[0].params["expectStatus"] == "{{ steps.y.output.code }}"


def test_destructive_steps_need_approval_unless_they_opt_out() -> None:
    parsed = policy(remediate=[request("a") | {"with": {"url": "http://a/", "destructive": True}},
                               request("b", requiresApproval=False) | {"with": {"url": "http://a/", "destructive": True}},
                               request("c")])  # fmt: skip
    assert [(s.destructive, s.requires_approval) for s in parsed.remediate] == [
        (True, True),
        (True, False),
        (False, False),
    ]
    assert policy(verify=[check("v")]).verify[0].read_only


def test_a_policy_finds_its_step_by_name_in_any_stage_or_escalation_level() -> None:
    page = {"name": "page", "action": "notify.webhook", "with": {"url": "http://hooks.internal/x"}}
    parsed = policy(
        diagnose=[check("probe")], verify=[check("again")], escalate={"levels": [{"name": "on-call", "notify": [page]}]}
    )
    assert parsed.step("probe") is parsed.diagnose[0] and parsed.step("again") is parsed.verify[0]
    assert parsed.step("page") is parsed.escalation.levels[0].notify[0]  # type: ignore[union-attr]
    assert parsed.step("missing") is None
