"""Typed substitution: an incident value lands in a parameter as one value of its language.

Each attack of the trust-boundaries issue that the core decides is here: a label that
would choose where credentials go (refused on apply), one that would rewrite a PromQL
query, widen a Redis glob or add a selector requirement (escaped or refused when the
step renders). The properties feed generated hostile text through every language and
check the rendered parameter with an independent reading of that language.
"""

from __future__ import annotations

import ast
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runbook_operator.actions.api import languages
from runbook_operator.domain.expressions import check_templates, render
from runbook_operator.domain.model import InvalidPolicy
from runbook_operator.domain.parsing import parse_policy
from runbook_operator.domain.substitution import Language
from tests.unit.builders import REGISTRY, policy_body

HOSTILE = st.text(st.characters(blacklist_categories=["Cs"]), max_size=40).filter(
    lambda v: "\ue000" not in v and "\ue001" not in v
)
PROPERTY = settings(max_examples=300, deadline=None)


def ctx(value: Any) -> dict[str, Any]:
    return {"incident": {"labels": {"v": value}, "summary": value}, "steps": {}, "findings": []}


def one(language: Language, template: str, value: Any) -> Any:
    return render({"p": template}, ctx(value), {"p": language})["p"]


# -- destinations: literal in the policy ----------------------------------------------------

LITERAL_PARAMS = sorted(
    (action.name, key)
    for action in REGISTRY
    for key, language in languages(action.params).items()
    if language is Language.LITERAL
)


def test_every_destination_and_credential_parameter_is_literal() -> None:
    """Where a step connects, as whom, and which Secret it reads: nothing else decides."""
    literal = {(a, k) for a, k in LITERAL_PARAMS}
    for action in ("redis.ping", "redis.deleteByPattern", "postgres.ping", "postgres.terminateBackend"):
        assert {(action, "host"), (action, "port"), (action, "passwordSecretRef")} <= literal
    assert {("postgres.ping", "dbname"), ("postgres.ping", "user"), ("redis.ping", "username")} <= literal
    assert {
        ("docker.restart", "host"),
        ("http.request", "headersFromSecrets"),
        ("notify.webhook", "urlSecretRef"),
    } <= literal
    assert all(languages(REGISTRY.get(a).params)["url"] is Language.URL for a in ("http.request", "prometheus.query"))


PG = {"host": "pg", "dbname": "app", "user": "app", "passwordSecretRef": {"name": "pg", "key": "password"}}
VALID = {"redis": {"host": "redis"}, "postgres": PG, "docker": {"container": "web"}, "http": {"url": "http://x/"}}
EXTRA = {"redis.deleteByPattern": {"pattern": "session:*"}, "postgres.terminateBackend": {"pid": 42}}
NOTIFY = {
    "notify.webhook": {},
    "notify.slack": {"channel": "C0123456789", "tokenSecretRef": {"name": "slack", "key": "token"}},
    "notify.pagerduty": {"routingKeySecretRef": {"name": "pd", "key": "routingKey"}},
    "notify.opsgenie": {"apiKeySecretRef": {"name": "og", "key": "apiKey"}},
    "notify.email": {
        "host": "smtp.example.com",
        "from": "runbook@example.com",
        "to": ["oncall@example.com"],
        "usernameSecretRef": {"name": "smtp", "key": "user"},
        "passwordSecretRef": {"name": "smtp", "key": "password"},
    },
}


def valid_params(action: str) -> dict[str, Any]:
    """Parameters the action takes as they are, so the only problem left is the one a test adds."""
    if action == "docker.prune":
        return {}
    if action in NOTIFY:
        return dict(NOTIFY[action])
    return {**VALID[action.split(".")[0]], **EXTRA.get(action, {})}


@pytest.mark.parametrize(("action", "key"), LITERAL_PARAMS)
def test_a_template_in_a_destination_makes_the_policy_invalid_naming_the_field(action: str, key: str) -> None:
    template = "{{ incident.labels.instance }}"
    value: Any = {"name": template, "key": "password"} if key.endswith("SecretRef") else template
    if key == "headersFromSecrets":
        value = {"Authorization": {"name": "token", "key": template}}
    literal = valid_params(action) | ({key: {"name": "hook", "key": "url"}} if action == "notify.webhook" else {})
    fine = parse_policy(policy_body(diagnose=[{"name": "s", "action": action, "with": literal}]), REGISTRY.check)
    assert not isinstance(fine, InvalidPolicy), fine.error  # written literally, the same step is fine
    step = {"name": "s", "action": action, "with": {**valid_params(action), key: value}}
    parsed = parse_policy(policy_body(diagnose=[step]), REGISTRY.check)
    assert isinstance(parsed, InvalidPolicy)
    assert parsed.error.startswith(f"spec.diagnose[0].with ({action}): {key}: must be literal in the policy"), (
        parsed.error
    )


def test_the_redis_attack_from_the_issue_is_refused_on_apply() -> None:
    """`host: "{{ incident.labels.instance }}"` sent AUTH to the attacker's fake Redis."""
    step = {"name": "ping", "action": "redis.ping",
            "with": {"host": "{{ incident.labels.instance }}", "passwordSecretRef": {"name": "r", "key": "p"}}}  # fmt: skip
    parsed = parse_policy(policy_body(diagnose=[step]), REGISTRY.check)
    assert isinstance(parsed, InvalidPolicy) and "incident data may not choose it" in parsed.error
    assert "--host-alias" in parsed.error


# -- PromQL ------------------------------------------------------------------------------------


def test_the_promql_attack_stays_a_label_value() -> None:
    hostile = 'x"}[5m])) * 0 or vector(0) #'
    query = 'sum(rate(ish_chat_requests_total{service="{{ incident.labels.v }}"}[5m])) > 0'
    assert one(Language.PROMQL, query, hostile) == (
        'sum(rate(ish_chat_requests_total{service="x\\"}[5m])) * 0 or vector(0) #"}[5m])) > 0'
    )
    assert one(Language.TEXT, query, hostile).endswith('or vector(0) #"}[5m])) > 0')  # what used to be sent


@PROPERTY
@given(HOSTILE, st.sampled_from(['"', "'"]))
def test_any_value_in_a_promql_string_reads_back_as_itself(value: str, quote: str) -> None:
    rendered = one(Language.PROMQL, f"up{{job={quote}{{{{ incident.labels.v }}}}{quote}}} > 0", value)
    inner = re.fullmatch(rf"up\{{job={quote}((?:[^{quote}\\\n]|\\.)*){quote}\}} > 0", rendered)
    assert inner is not None, rendered  # one string literal, the query's shape unchanged
    assert ast.literal_eval(quote + inner.group(1) + quote) == value  # Go and Python agree on these escapes


@pytest.mark.parametrize(
    ("query", "problem"),
    [
        ("up > {{ incident.labels.v }}", "lands in the query's syntax"),
        ("rate(x[{{ incident.labels.v }}])", "lands in the query's syntax"),
        ("{{ incident.labels.v }}", "lands in the query's syntax"),
        ("up{job=`{{ incident.labels.v }}`}", "lands in a backtick string"),
        ("up # {{ incident.labels.v }}\n", "lands in a PromQL comment"),
        ('up{job="a\\{{ incident.labels.v }}"}', "a backslash right before a substituted value"),
    ],
)
def test_promql_templates_outside_quoted_strings_are_refused_on_apply(query: str, problem: str) -> None:
    with pytest.raises(ValueError, match=re.escape(problem)):
        check_templates({"query": query}, {"query": Language.PROMQL})


def test_promql_checked_again_after_rendering() -> None:
    """The apply-time check reads the template's text; control blocks are checked when they render."""
    sneaky = '{% if false %}"{% endif %}{{ incident.labels.v }}{% if false %}"{% endif %}'
    check_templates({"query": sneaky}, {"query": Language.PROMQL})  # looks quoted on the page
    with pytest.raises(ValueError, match="lands in the query's syntax"):
        one(Language.PROMQL, sneaky, "up or vector(1)")


def test_the_policy_authors_own_promql_escapes_are_kept() -> None:
    query = 'up{job=~"a\\\\.b|{{ incident.labels.v }}", x="\\"lit\\""}'
    assert one(Language.PROMQL, query, 'c"d') == 'up{job=~"a\\\\.b|c\\"d", x="\\"lit\\""}'


# -- Redis globs -----------------------------------------------------------------------------


def glob_tokens(pattern: str) -> list[tuple[str, str]]:
    """Redis' stringmatchlen, read independently: literals and the wildcards * ? [."""
    out, i = [], 0
    while i < len(pattern):
        char = pattern[i]
        if char == "\\" and i + 1 < len(pattern):
            out.append(("lit", pattern[i + 1]))
            i += 2
            continue
        out.append(("wild", char) if char in "*?[" else ("lit", char))
        i += 1
    return out


@PROPERTY
@given(HOSTILE)
def test_a_value_in_a_redis_glob_matches_only_itself(value: str) -> None:
    rendered = one(Language.GLOB, "session:{{ incident.labels.v }}:*", value)
    expected = [("lit", c) for c in f"session:{value}:"] + [("wild", "*")]
    assert glob_tokens(rendered) == expected, rendered


def test_the_glob_attack_from_the_issue_deletes_one_key_not_all() -> None:
    assert one(Language.GLOB, "session:{{ incident.labels.v }}", "*") == "session:\\*"


# -- names, label values, selectors ----------------------------------------------------------

SELECTOR = re.compile(r"(?P<key>[a-z]+)=(?P<value>[A-Za-z0-9_.-]+)")


@PROPERTY
@given(HOSTILE)
def test_a_value_in_a_name_or_selector_is_a_name_or_refused(value: str) -> None:
    try:
        rendered = one(Language.NAME, "app={{ incident.labels.v }}", value)
    except ValueError as err:
        assert "is not a name" in str(err)
        assert not re.fullmatch(r"[A-Za-z0-9_.-]+", value)
        return
    match = SELECTOR.fullmatch(rendered)  # still exactly one requirement: no `,`, `!`, `in (...)`
    assert match is not None and match["value"] == value


@pytest.mark.parametrize("hostile", ["web,tier!=cache", "x in (a,b)", "a b", "../etc", "ns/pod", "", "*"])
def test_selector_and_name_attacks_are_refused_when_the_step_renders(hostile: str) -> None:
    with pytest.raises(ValueError, match="is not a name"):
        one(Language.NAME, "app={{ incident.labels.v }}", hostile)


def test_the_runbook_pack_style_name_default_still_renders() -> None:
    template = "{{ incident.labels.service | default('instance-manager') }}"
    assert render({"p": template}, {"incident": {"labels": {}}}, {"p": Language.NAME}) == {"p": "instance-manager"}


# -- every parameter kind at once ---------------------------------------------------------------


@PROPERTY
@given(HOSTILE)
def test_text_and_json_values_are_substituted_verbatim_never_evaluated(value: str) -> None:
    out = render({"json": {"reason": "{{ incident.summary }}"}, "text": "{{ incident.summary }}"}, ctx(value))
    assert out == {"json": {"reason": value}, "text": value}
