"""The indexed select_policy (PolicySet) and the one-shot scan agree with a straightforward scan."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from runbook_operator.domain.matching import Candidate, PolicySet, mismatch, select_policy
from runbook_operator.domain.model import InvalidPolicy, LabelSelector, Match, Policy, Requirement
from tests.unit.builders import incident, policy

ALERTS = ["A", "B", "C", "D"]
SEVERITIES = ["Critical", "High", "Medium", "Low"]
NAMES = ["a", "b", "c", "d", "e", "f"]


def reference(inc: Any, candidates: Iterable[Candidate]) -> tuple[Candidate | None, str, tuple[tuple[str, str], ...]]:
    """select_policy as it was before the index: sort the namespace by name, check every candidate."""
    in_namespace = sorted((c for c in candidates if c.namespace == inc.namespace), key=lambda c: c.name)
    if inc.policy_ref:
        pinned = next((c for c in in_namespace if c.name == inc.policy_ref), None)
        if pinned is None:
            return None, f"policyRef {inc.policy_ref!r} does not exist in namespace {inc.namespace!r}", ()
        return pinned, f"pinned by policyRef {pinned.name!r}", ()
    matched: list[Candidate] = []
    rejected: list[tuple[str, str]] = []
    for candidate in in_namespace:
        if candidate.match is None:
            rejected.append((candidate.name, "match section is invalid"))
            continue
        why = mismatch(inc, candidate.match)
        if why:
            rejected.append((candidate.name, why))
        else:
            matched.append(candidate)
    if not matched:
        return None, f"no RemediationPolicy in namespace {inc.namespace!r} matches alert {inc.alert!r}", tuple(rejected)
    matched.sort(key=lambda c: (-c.priority, c.name))
    best, others = matched[0], matched[1:]
    rejected.extend((c.name, f"lower priority than {best.name!r} (or same priority, later name)") for c in others)
    return best, f"matched alert {inc.alert!r} (priority {best.priority})", tuple(rejected)


subsets = st.frozensets(st.sampled_from(ALERTS), max_size=3)
requirements = st.builds(
    Requirement,
    key=st.sampled_from(["service", "tier"]),
    operator=st.sampled_from(["In", "NotIn", "Exists", "DoesNotExist"]),
    values=st.frozensets(st.sampled_from(["x", "y"]), max_size=2),
)
matches = st.builds(
    Match,
    alerts=subsets,
    severities=st.frozensets(st.sampled_from(SEVERITIES), max_size=3),
    selector=st.none() | st.builds(LabelSelector, st.lists(requirements, max_size=2).map(tuple)),
)
common: dict[str, Any] = {
    "namespace": st.sampled_from(["ns", "ns", "ns", "other"]),
    "name": st.sampled_from(NAMES),
    "generation": st.integers(1, 3),
    "priority": st.integers(0, 3),
}
valid = st.builds(Policy, match=matches, **common)
broken = st.builds(InvalidPolicy, error=st.just("bad step"), match=st.none() | matches, **common)
candidate_lists = st.lists(st.one_of(valid, valid, broken), max_size=12)
incidents = st.builds(
    lambda alert, severity, labels, ref: incident(
        alert,
        **({"severity": severity} if severity else {}),
        labels=labels,
        **({"policyRef": {"name": ref}} if ref else {}),
    ),
    st.sampled_from([*ALERTS, "Unknown"]),
    st.none() | st.sampled_from(SEVERITIES),
    st.dictionaries(st.sampled_from(["service", "tier"]), st.sampled_from(["x", "y", "z"]), max_size=2),
    st.one_of(st.none(), st.none(), st.none(), st.sampled_from([*NAMES, "ghost"])),
)


@settings(max_examples=400, deadline=None)
@given(candidates=candidate_lists, incs=st.lists(incidents, min_size=1, max_size=5))
def test_indexed_and_plain_selection_equal_a_straightforward_scan(candidates: list[Candidate], incs: list[Any]) -> None:
    indexed = PolicySet(candidates)
    for inc in incs:
        chosen, reason, rejected = reference(inc, candidates)
        for selection in (select_policy(inc, indexed), select_policy(inc, candidates)):
            assert selection.chosen is chosen
            assert selection.reason == reason
            assert selection.rejected == rejected


def test_a_policy_set_is_the_sequence_it_was_built_from() -> None:
    members = [policy("b", match={"alerts": ["RedisDown"]}), policy("a")]
    indexed = PolicySet(members)
    assert list(indexed) == members and len(indexed) == 2 and indexed[0] is members[0]
    assert indexed.same_as(list(members))
    assert not indexed.same_as([policy("b", match={"alerts": ["RedisDown"]}), members[1]])  # a new object: rebuild
    assert not indexed.same_as(members[:1])


def test_wildcard_and_alert_buckets_compete_on_priority_then_name() -> None:
    members = [
        policy("z-any", priority=2),
        policy("a-redis", match={"alerts": ["RedisDown"]}, priority=2),
        policy("low-redis", match={"alerts": ["RedisDown"]}, priority=1),
    ]
    indexed = PolicySet(members)
    assert select_policy(incident(), indexed).chosen is members[1]
    assert select_policy(incident("Other"), indexed).chosen is members[0]
    rejected = dict(select_policy(incident(), indexed).rejected)
    assert set(rejected) == {"z-any", "low-redis"}


def test_the_reconciler_indexes_a_namespace_once_per_policy_change() -> None:
    from runbook_operator.engine.reconciler import Reconciler

    current: list[Candidate] = [policy("a"), policy("b")]
    reconciler = Reconciler(None, None, lambda namespace: list(current))  # type: ignore[arg-type]
    first = reconciler._policies("ns")
    assert isinstance(first, PolicySet) and list(first) == current
    assert reconciler._policies("ns") is first  # same policies: same index
    current[1] = policy("b", priority=3)  # the Kopf index holds a new object for a changed policy
    second = reconciler._policies("ns")
    assert second is not first and list(second) == current
    current.clear()
    assert list(reconciler._policies("ns")) == []


def test_a_policy_is_found_by_name_in_its_namespace_only_with_or_without_the_index() -> None:
    from runbook_operator.domain.matching import PolicySet, named
    from tests.unit.builders import check, policy

    here, there = policy("p", "here", verify=[check("c")]), policy("p", "there", verify=[check("c")])
    second = policy("p", "here", priority=5, verify=[check("c")])  # the same name twice: the first given wins
    for candidates in ([there, here, second], PolicySet([there, here, second])):
        assert named(candidates, "here", "p") is here
        assert named(candidates, "there", "p") is there
        assert named(candidates, "elsewhere", "p") is None
        assert named(candidates, "here", "q") is None and named(candidates, "here", None) is None
