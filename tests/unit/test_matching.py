from typing import Any

import pytest

from runbook_operator.domain.matching import select_policy
from tests.unit.builders import incident, invalid, policy


def names(selection: Any) -> str | None:
    return selection.chosen.name if selection.chosen else None


@pytest.mark.parametrize(
    ("match", "spec", "matches"),
    [
        ({"alerts": ["RedisDown"]}, {}, True),
        ({"alerts": ["PostgreSQLDown"]}, {}, False),
        ({}, {}, True),  # an empty match handles everything
        ({"severities": ["Critical"]}, {"severity": "Critical"}, True),
        ({"severities": ["Critical"]}, {}, False),  # unset severity counts as Medium
        ({"severities": ["Medium"]}, {}, True),
        ({"labelSelector": {"matchLabels": {"service": "redis"}}}, {"labels": {"service": "redis"}}, True),
        ({"labelSelector": {"matchLabels": {"service": "redis"}}}, {"labels": {"service": "db"}}, False),
        ({"labelSelector": {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}]}},
         {"labels": {"tier": "b"}}, True),
        ({"labelSelector": {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["a"]}]}}, {}, False),
        ({"labelSelector": {"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["a"]}]}}, {}, True),
        ({"labelSelector": {"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["a"]}]}},
         {"labels": {"tier": "a"}}, False),
        ({"labelSelector": {"matchExpressions": [{"key": "tier", "operator": "Exists"}]}}, {"labels": {"tier": ""}}, True),
        ({"labelSelector": {"matchExpressions": [{"key": "tier", "operator": "Exists"}]}}, {}, False),
        ({"labelSelector": {"matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]}}, {}, True),
        ({"alerts": ["RedisDown"], "labelSelector": {"matchLabels": {"env": "prod"}}},
         {"labels": {"env": "dev"}}, False),
    ],
)  # fmt: skip
def test_match_criteria_follow_label_selector_semantics(
    match: dict[str, Any], spec: dict[str, Any], matches: bool
) -> None:
    selection = select_policy(incident("RedisDown", **spec), [policy("p", match=match)])
    assert (selection.chosen is not None) is matches, selection


def test_highest_priority_wins_and_ties_go_to_the_first_name() -> None:
    candidates = [
        policy("zeta", match={"alerts": ["RedisDown"]}, priority=5),
        policy("beta", match={"alerts": ["RedisDown"]}, priority=5),
        policy("alpha", match={"alerts": ["RedisDown"]}, priority=1),
    ]
    assert names(select_policy(incident(), candidates)) == "beta"
    assert names(select_policy(incident(), list(reversed(candidates)))) == "beta"


def test_every_loser_is_explained() -> None:
    candidates = [policy("a", match={"alerts": ["RedisDown"]}), policy("b", match={"alerts": ["Other"]})]
    rejected = dict(select_policy(incident(), candidates).rejected)
    assert "not in ['Other']" in rejected["b"]


def test_policies_in_other_namespaces_never_match() -> None:
    selection = select_policy(incident(namespace="team-a"), [policy("p", namespace="team-b")])
    assert selection.chosen is None
    assert "namespace 'team-a'" in selection.reason


def test_policy_ref_pins_even_a_policy_that_would_not_match() -> None:
    candidates = [policy("best", priority=10), policy("pinned", match={"alerts": ["Other"]})]
    assert names(select_policy(incident(policyRef={"name": "pinned"}), candidates)) == "pinned"


def test_policy_ref_to_a_missing_policy_says_so() -> None:
    selection = select_policy(incident(policyRef={"name": "ghost"}), [policy("p")])
    assert selection.chosen is None
    assert "policyRef 'ghost' does not exist" in selection.reason


def test_an_invalid_policy_can_win_so_the_incident_can_say_why() -> None:
    bad = invalid("bad", match={"alerts": ["RedisDown"]}, priority=9, diagnose=[{"name": "x", "action": "nope.nope"}])
    assert select_policy(incident(), [bad, policy("ok")]).chosen is bad
