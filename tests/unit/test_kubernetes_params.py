"""kubernetes.* parameters are checked when a policy is applied, with messages that say what to fix."""

import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from runbook_operator.actions.api import Language
from runbook_operator.actions.catalog import default_registry
from runbook_operator.actions.kubernetes import restart_timestamp
from runbook_operator.domain.model import Traits

REGISTRY = default_registry()

KUBERNETES = [a.name for a in REGISTRY if a.name.startswith("kubernetes.")]


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        # scale: one target, within bounds
        (
            "kubernetes.scale",
            {"name": "web", "replicas": 2, "by": 1, "max": 5},
            "(params): Value error, give exactly one of replicas (absolute) or by (relative)",
        ),
        (
            "kubernetes.scale",
            {"name": "web", "max": 5},
            "(params): Value error, give exactly one of replicas (absolute) or by (relative)",
        ),
        ("kubernetes.scale", {"name": "web", "by": 1}, "max: Field required"),
        (
            "kubernetes.scale",
            {"name": "web", "by": 1, "min": 3, "max": 1},
            "(params): Value error, max (1) is less than min (3)",
        ),
        (
            "kubernetes.scale",
            {"name": "web", "replicas": -1, "max": 5},
            "replicas: Input should be greater than or equal to 0",
        ),
        (
            "kubernetes.scale",
            {"name": "web", "by": 1, "min": -1, "max": 5},
            "min: Input should be greater than or equal to 0",
        ),
        ("kubernetes.scale", {"name": "web", "by": "two", "max": 5}, "by: Input should be a valid integer"),
        # the workload
        (
            "kubernetes.workloadStatus",
            {"kind": "DaemonSet", "name": "web"},
            "kind: Input should be 'Deployment' or 'StatefulSet'",
        ),
        (
            "kubernetes.rolloutRestart",
            {"kind": "deployment", "name": "web"},
            "kind: Input should be 'Deployment' or 'StatefulSet'",
        ),
        ("kubernetes.workloadStatus", {}, "name: Field required"),
        ("kubernetes.workloadStatus", {"name": "Web"}, "name: String should match pattern"),
        ("kubernetes.rolloutRestart", {"name": "../secrets/x"}, "name: String should match pattern"),
        ("kubernetes.workloadStatus", {"name": "x" * 254}, "name: String should have at most 253 characters"),
        # always the incident's namespace: there is no way to name another
        (
            "kubernetes.workloadStatus",
            {"name": "web", "namespace": "kube-system"},
            "namespace: Extra inputs are not permitted",
        ),
        (
            "kubernetes.deletePod",
            {"name": "web-0", "namespace": "kube-system"},
            "namespace: Extra inputs are not permitted",
        ),
        # podLogs: what to read, and how to count
        (
            "kubernetes.podLogs",
            {},
            "(params): Value error, give exactly one of name (a workload's pods) or labelSelector",
        ),
        (
            "kubernetes.podLogs",
            {"name": "web", "labelSelector": "app=web"},
            "(params): Value error, give exactly one of name (a workload's pods) or labelSelector",
        ),
        (
            "kubernetes.podLogs",
            {"kind": "StatefulSet", "labelSelector": "app=web"},
            "(params): Value error, kind goes with name, not with labelSelector",
        ),
        (
            "kubernetes.podLogs",
            {"name": "web", "errorPattern": "(unclosed"},
            "errorPattern: Value error, invalid regular expression '(unclosed': missing ): (unclosed (errorPattern runs on RE2",
        ),
        (
            "kubernetes.podLogs",
            {"name": "web", "tailLines": 0},
            "tailLines: Input should be greater than or equal to 1",
        ),
        (
            "kubernetes.podLogs",
            {"name": "web", "maxErrors": -1},
            "maxErrors: Input should be greater than or equal to 0",
        ),
        ("kubernetes.podLogs", {"name": "web", "maxPods": 51}, "maxPods: Input should be less than or equal to 50"),
        ("kubernetes.podLogs", {"name": "web", "tail": 10}, "tail: Extra inputs are not permitted"),
        # deletePod: one pod, or a bounded number of a workload's
        (
            "kubernetes.deletePod",
            {"name": "web-0", "maxPods": 2},
            "(params): Value error, maxPods goes with kind (a workload's pods); without kind, name is one pod",
        ),
        (
            "kubernetes.deletePod",
            {"kind": "Deployment", "name": "web", "maxPods": 0},
            "maxPods: Input should be greater than or equal to 1",
        ),
        (
            "kubernetes.deletePod",
            {"name": "web-0", "gracePeriodSeconds": -1},
            "gracePeriodSeconds: Input should be greater than or equal to 0",
        ),
    ],
)
def test_parameters_are_checked_with_precise_messages(name: str, params: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        REGISTRY.check(name, params)


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("kubernetes.workloadStatus", {"name": "web"}),
        ("kubernetes.workloadStatus", {"kind": "StatefulSet", "name": "redis-master"}),
        ("kubernetes.rolloutRestart", {"name": "instance-manager"}),
        ("kubernetes.scale", {"name": "web", "replicas": 0, "max": 0}),
        ("kubernetes.scale", {"name": "web", "by": -1, "min": 1, "max": 10}),
        ("kubernetes.podLogs", {"labelSelector": "app in (web,api),tier!=cache"}),
        (
            "kubernetes.podLogs",
            {"kind": "StatefulSet", "name": "db", "tailLines": 500, "maxErrors": 0, "previous": True},
        ),
        ("kubernetes.deletePod", {"name": "web-7d9c-x2x"}),
        ("kubernetes.deletePod", {"kind": "StatefulSet", "name": "db", "maxPods": 2, "gracePeriodSeconds": 0}),
        # templated values are checked when the step runs
        ("kubernetes.scale", {"name": "web", "replicas": "{{ incident.labels.replicas }}", "max": 5}),
        ("kubernetes.deletePod", {"name": "{{ incident.labels.pod }}"}),
    ],
)
def test_valid_parameters_pass(name: str, params: dict[str, Any]) -> None:
    REGISTRY.check(name, params)


def test_defaults() -> None:
    logs = REGISTRY.parse("kubernetes.podLogs", {"name": "web"})
    assert logs.model_dump() == {
        "kind": "Deployment",
        "name": "web",
        "label_selector": None,
        "container": None,
        "previous": False,
        "tail_lines": 100,
        "error_pattern": "(?i)error|exception|fatal",
        "max_errors": None,
        "max_pods": 10,
    }
    delete = REGISTRY.parse("kubernetes.deletePod", {"kind": "Deployment", "name": "web"})
    assert delete.model_dump()["max_pods"] == 1
    assert REGISTRY.parse("kubernetes.scale", {"name": "web", "by": 1, "max": 3}).model_dump()["min_replicas"] == 0


def test_traits() -> None:
    assert KUBERNETES == [
        "kubernetes.deletePod",
        "kubernetes.podLogs",
        "kubernetes.rolloutRestart",
        "kubernetes.scale",
        "kubernetes.workloadStatus",
    ]
    traits = {name: REGISTRY.check(name, _minimal(name)) for name in KUBERNETES}
    assert all(t.languages["name"] is Language.NAME for t in traits.values())  # a label fills a name, not a selector
    assert traits["kubernetes.podLogs"].languages["labelSelector"] is Language.NAME
    assert {name: replace(t, languages={}) for name, t in traits.items()} == {
        "kubernetes.deletePod": Traits(destructive=True, read_only=False),
        "kubernetes.podLogs": Traits(destructive=False, read_only=True),
        "kubernetes.rolloutRestart": Traits(destructive=False, read_only=False),
        "kubernetes.scale": Traits(destructive=False, read_only=False),
        "kubernetes.workloadStatus": Traits(destructive=False, read_only=True),
    }


def _minimal(name: str) -> dict[str, Any]:
    return {"kubernetes.scale": {"name": "web", "by": 1, "max": 2}}.get(name, {"name": "web"})


def test_restart_timestamps_are_what_kubectl_writes() -> None:
    """``time.Now().Format(time.RFC3339)``: seconds, and Z for UTC."""
    assert restart_timestamp(datetime(2024, 3, 9, 7, 5, 1, 999_999, tzinfo=UTC)) == "2024-03-09T07:05:01Z"
    berlin = timezone(timedelta(hours=1))
    assert restart_timestamp(datetime(2024, 3, 9, 8, 5, 1, tzinfo=berlin)) == "2024-03-09T07:05:01Z"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", restart_timestamp())
