"""The actions as the operator's ServiceAccount: manifests/namespace-access is what they need, and enough."""

from typing import Any

import pytest
import yaml

from runbook_operator.adapters.kube import Kube
from tests.fixtures.cluster import Kubectl
from tests.integration.kubernetes.conftest import (
    NAMESPACE_ACCESS,
    RESTARTED_AT,
    FakeKubelet,
    can_i,
    create,
    deployment,
    grant,
    pod_names,
    run,
    wait_ready,
)

# each action, and the first call it makes (what a missing Role must name)
FIRST_CALLS = [
    ("kubernetes.workloadStatus", {"name": "web"}, "get deployments"),
    ("kubernetes.rolloutRestart", {"kind": "StatefulSet", "name": "web"}, "get statefulsets"),
    ("kubernetes.scale", {"name": "web", "by": 1, "max": 3}, "get deployments/scale"),
    ("kubernetes.podLogs", {"labelSelector": "app=web"}, "list pods"),
    ("kubernetes.podLogs", {"name": "web"}, "get deployments"),
    ("kubernetes.deletePod", {"name": "web-0"}, "delete pods"),
    ("kubernetes.deletePod", {"kind": "Deployment", "name": "web"}, "get deployments"),
]


@pytest.mark.parametrize(("action", "params", "call"), FIRST_CALLS)
async def test_without_the_role_the_step_says_which_grant_is_missing(
    namespace: str, operator_sa: Kube, action: str, params: dict[str, Any], call: str
) -> None:
    result = await run(action, params, namespace, operator_sa)
    assert not result.ok
    assert result.message == (
        f"forbidden: the operator may not {call} in namespace {namespace}; bind the Role runbook-operator-actions "
        f"there (kubectl apply -n {namespace} -k manifests/namespace-access)"
    )


async def test_with_namespace_access_every_action_works_as_the_service_account(
    kubectl: Kubectl, namespace: str, operator_sa: Kube, kubelet: FakeKubelet
) -> None:
    create(kubectl, namespace, deployment("web", 2))
    grant(kubectl, namespace)

    status = await run("kubernetes.workloadStatus", {"name": "web"}, namespace, operator_sa)
    assert status.ok, status.message

    kubelet.logs = dict.fromkeys(pod_names(kubectl, namespace, "app=web"), "ERROR once\n")
    logs = await run("kubernetes.podLogs", {"name": "web"}, namespace, operator_sa)
    assert logs.ok and logs.output["matches"] == 2, logs.message  # get deployments, list pods, get pods/log

    scaled = await run("kubernetes.scale", {"name": "web", "by": 1, "max": 3}, namespace, operator_sa)
    assert scaled.ok, scaled.message
    wait_ready(kubectl, namespace, "Deployment", "web", 3)

    restarted = await run("kubernetes.rolloutRestart", {"name": "web"}, namespace, operator_sa)
    assert restarted.ok, restarted.message
    annotations = kubectl.get("deployment", "web", namespace)["spec"]["template"]["metadata"]["annotations"]
    assert annotations[RESTARTED_AT] == restarted.output["restartedAt"]
    wait_ready(kubectl, namespace, "Deployment", "web", 3)

    deleted = await run("kubernetes.deletePod", {"kind": "Deployment", "name": "web"}, namespace, operator_sa)
    assert deleted.ok and len(deleted.output["deleted"]) == 1, deleted.message
    by_name = await run("kubernetes.deletePod", {"name": "not-there"}, namespace, operator_sa)
    assert by_name.message == f"pod {namespace}/not-there not found"  # allowed to try: delete pods


async def test_the_grant_holds_in_its_namespace_only(kubectl: Kubectl, namespace: str, operator_sa: Kube) -> None:
    other = f"{namespace}-other"
    kubectl("create", "namespace", other)
    try:
        create(kubectl, other, deployment("web", 1), ready=False)
        grant(kubectl, namespace)
        result = await run("kubernetes.workloadStatus", {"name": "web"}, other, operator_sa)
        assert not result.ok and result.message.startswith(
            f"forbidden: the operator may not get deployments in namespace {other};"
        )
    finally:
        kubectl("delete", "namespace", other, "--wait=false")


LEAST_PRIVILEGE = [
    ("patch", "deployments", True),
    ("update", "statefulsets/scale", True),
    ("patch", "deployments/scale", True),
    ("get", "pods/log", True),
    ("get", "secrets", True),
    # what the actions do not need, the Role does not give
    ("delete", "deployments", False),
    ("update", "deployments", False),
    ("delete", "statefulsets", False),
    ("create", "pods", False),
    ("patch", "pods", False),
    ("watch", "pods", False),
    ("create", "pods/exec", False),
    ("list", "secrets", False),
    ("create", "rolebindings", False),
]


def test_namespace_access_is_least_privilege(kubectl: Kubectl, namespace: str) -> None:
    grant(kubectl, namespace)
    wrong = []
    for verb, resource, allowed in LEAST_PRIVILEGE:
        answer = can_i(kubectl, namespace, verb, resource)
        if (answer == "yes") is not allowed:
            wrong.append(f"{verb} {resource}: {answer}")
    assert not wrong


def test_the_role_is_exactly_the_documented_one() -> None:
    docs = list(yaml.safe_load_all((NAMESPACE_ACCESS / "role.yaml").read_text()))
    role = next(d for d in docs if d["kind"] == "Role")
    binding = next(d for d in docs if d["kind"] == "RoleBinding")
    rules = {
        (g, r): sorted(rule["verbs"]) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
    }
    assert rules == {
        ("apps", "deployments"): ["get", "patch"],
        ("apps", "statefulsets"): ["get", "patch"],
        ("apps", "deployments/scale"): ["get", "patch", "update"],
        ("apps", "statefulsets/scale"): ["get", "patch", "update"],
        ("", "pods"): ["delete", "get", "list"],
        ("", "pods/log"): ["get"],
        ("", "secrets"): ["get"],
    }
    assert all("namespace" not in d["metadata"] for d in docs)  # kubectl apply -n decides
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "runbook-operator", "namespace": "runbook-operator"}
    ]
    kustomization = yaml.safe_load((NAMESPACE_ACCESS / "kustomization.yaml").read_text())
    assert kustomization["resources"] == ["role.yaml"] and "namespace" not in kustomization
