"""kubernetes.podLogs and deletePod on real pods: logs go through the API server to a kubelet."""

import json

from runbook_operator.adapters.kube import Kube
from tests.fixtures.cluster import Kubectl, wait_for
from tests.integration.kubernetes.conftest import (
    FakeKubelet,
    create,
    deployment,
    pod_names,
    pods,
    run,
    statefulset,
    wait_ready,
)

# -- kubernetes.podLogs ------------------------------------------------------------------


async def test_logs_count_the_error_lines_of_each_pod(
    kubectl: Kubectl, namespace: str, admin: Kube, kubelet: FakeKubelet
) -> None:
    create(kubectl, namespace, deployment("web", 2))
    first, second = sorted(pod_names(kubectl, namespace, "app=web"))
    kubelet.logs = {
        first: "started\nERROR: connection refused\nretrying\nFATAL out of memory\n",
        second: "started\nserving\n",
    }
    result = await run("kubernetes.podLogs", {"name": "web", "tailLines": 3}, namespace, admin)
    assert result.ok, result.message
    assert result.output["pods"] == {first: {"lines": 3, "matches": 2}, second: {"lines": 2, "matches": 0}}
    assert result.output["matches"] == 2 and result.output["selector"] == "app=web"
    # matching lines are quoted; a pod without any quotes its last lines
    assert result.output["excerpts"] == {
        first: ["ERROR: connection refused", "FATAL out of memory"],
        second: ["started", "serving"],
    }
    assert result.message == (
        f"deployment {namespace}/web (selector app=web): "
        "2 of the last 3 lines of 2 pod(s) match /(?i)error|exception|fatal/"
    )
    # what the kubelet was asked: each pod's (only) container, the tail requested
    asked = {path: query for path, query in kubelet.requests}
    assert asked[f"/containerLogs/{namespace}/{first}/main"]["tailLines"] == ["3"]
    assert f"/containerLogs/{namespace}/{second}/main" in asked


async def test_logs_fail_over_max_errors(kubectl: Kubectl, namespace: str, admin: Kube, kubelet: FakeKubelet) -> None:
    create(kubectl, namespace, deployment("web", 2))
    first, second = sorted(pod_names(kubectl, namespace, "app=web"))
    kubelet.logs = {first: "timeout talking to redis\nok\n", second: "Timeout again\nTIMEOUT\n"}
    params = {"labelSelector": "app=web", "errorPattern": "(?i)timeout", "maxErrors": 2}
    result = await run("kubernetes.podLogs", params, namespace, admin)
    assert not result.ok
    assert result.message == (
        f"pods matching app=web in namespace {namespace}: too many errors: "
        "3 of the last 100 lines of 2 pod(s) match /(?i)timeout/ (maxErrors 2)"
    )
    assert result.output["matches"] == 3
    ok = await run("kubernetes.podLogs", {**params, "maxErrors": 3}, namespace, admin)
    assert ok.ok, ok.message


async def test_a_pod_without_a_log_yet_is_reported(
    kubectl: Kubectl, namespace: str, admin: Kube, kubelet: FakeKubelet
) -> None:
    create(kubectl, namespace, deployment("web", 2))
    first, second = sorted(pod_names(kubectl, namespace, "app=web"))
    kubelet.logs = {first: "fine\n"}  # the second answers 404
    result = await run("kubernetes.podLogs", {"name": "web"}, namespace, admin)
    assert result.ok, result.message
    assert result.output["pods"][first] == {"lines": 1, "matches": 0}
    assert result.output["pods"][second]["error"].startswith("HTTP 404")
    assert result.message.endswith(f"; no log from 1 pod(s): {second} (see output)")


async def test_kwok_pods_have_no_log_at_all(kubectl: Kubectl, namespace: str, admin: Kube) -> None:
    """Without a kubelet the API server cannot read any log: each pod says why, the step fails."""
    create(kubectl, namespace, statefulset("db", 2))
    result = await run("kubernetes.podLogs", {"kind": "StatefulSet", "name": "db"}, namespace, admin)
    assert not result.ok
    assert result.message == (
        f"statefulset {namespace}/db (selector app=db): no log could be read from 2 pod(s): db-0, db-1: "
        "HTTP 500: no preferred addresses found; known addresses: []"
    )
    assert set(result.output["pods"]) == {"db-0", "db-1"}
    assert "no preferred addresses found" in result.output["pods"]["db-0"]["error"]


async def test_logs_read_only_the_workloads_own_pods(
    kubectl: Kubectl, namespace: str, admin: Kube, kubelet: FakeKubelet
) -> None:
    create(kubectl, namespace, deployment("web", 1))
    stray = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "stray", "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "main", "image": "busybox"}]},
    }
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(stray))
    (own,) = pod_names(kubectl, namespace, "app=web") - {"stray"}
    kubelet.logs = {own: "ok\n", "stray": "ERROR\n"}
    by_workload = await run("kubernetes.podLogs", {"name": "web"}, namespace, admin)
    assert set(by_workload.output["pods"]) == {own} and by_workload.output["matches"] == 0
    by_labels = await run("kubernetes.podLogs", {"labelSelector": "app=web", "maxPods": 5}, namespace, admin)
    assert set(by_labels.output["pods"]) == {own, "stray"} and by_labels.output["matches"] == 1


async def test_logs_with_nothing_to_read(kubectl: Kubectl, namespace: str, admin: Kube) -> None:
    create(kubectl, namespace, deployment("idle", 0))
    result = await run("kubernetes.podLogs", {"name": "idle"}, namespace, admin)
    assert (result.ok, result.message) == (False, f"deployment {namespace}/idle (selector app=idle) has no pods")
    result = await run("kubernetes.podLogs", {"labelSelector": "app=nothing"}, namespace, admin)
    assert (result.ok, result.message) == (False, f"no pods match app=nothing in namespace {namespace}")
    result = await run("kubernetes.podLogs", {"name": "nope"}, namespace, admin)
    assert (result.ok, result.message) == (False, f"deployment {namespace}/nope not found")


# -- kubernetes.deletePod ----------------------------------------------------------------


def uids(kubectl: Kubectl, namespace: str, selector: str) -> dict[str, str]:
    return {p["metadata"]["name"]: p["metadata"]["uid"] for p in pods(kubectl, namespace, selector)}


def gone(kubectl: Kubectl, namespace: str, name: str, uid: str) -> bool:
    found = kubectl("get", "pod", name, "-n", namespace, "-o", "json", check=False)
    return found.returncode != 0 or json.loads(found.stdout)["metadata"]["uid"] != uid


async def test_delete_a_pod_by_name(kubectl: Kubectl, namespace: str, admin: Kube) -> None:
    create(kubectl, namespace, deployment("web", 2))
    before = uids(kubectl, namespace, "app=web")
    victim = sorted(before)[0]
    result = await run("kubernetes.deletePod", {"name": victim}, namespace, admin)
    assert result.ok, result.message
    assert (result.message, result.output) == (f"deleted pod {namespace}/{victim}", {"deleted": [victim]})
    wait_for(lambda: gone(kubectl, namespace, victim, before[victim]), 30, f"pod {victim} to go")
    wait_ready(kubectl, namespace, "Deployment", "web", 2)
    after = pod_names(kubectl, namespace, "app=web")
    assert victim not in after and len(after) == 2  # replaced by the ReplicaSet


async def test_delete_the_pods_of_a_workload_up_to_max_pods(kubectl: Kubectl, namespace: str, admin: Kube) -> None:
    create(kubectl, namespace, deployment("web", 3))
    before = uids(kubectl, namespace, "app=web")
    result = await run("kubernetes.deletePod", {"kind": "Deployment", "name": "web", "maxPods": 2}, namespace, admin)
    assert result.ok, result.message
    deleted = result.output["deleted"]
    assert len(deleted) == 2 and set(deleted) < set(before)
    assert result.message == f"deleted 2 of 3 pod(s) of deployment {namespace}/web: {', '.join(deleted)}"
    for name in deleted:
        wait_for(lambda name=name: gone(kubectl, namespace, name, before[name]), 30, f"pod {name} to go")
    (kept,) = set(before) - set(deleted)
    wait_ready(kubectl, namespace, "Deployment", "web", 3)
    assert uids(kubectl, namespace, "app=web")[kept] == before[kept]


async def test_delete_takes_a_not_ready_pod_first(kubectl: Kubectl, namespace: str, admin: Kube) -> None:
    create(kubectl, namespace, statefulset("db", 3))
    # db-1 turns unready (as the node lifecycle controller would mark it); kwok leaves it so
    patch = {"status": {"conditions": [{"type": "Ready", "status": "False", "reason": "Probe"}]}}
    kubectl(
        "patch", "pod", "db-1", "-n", namespace, "--subresource=status", "--type=strategic", "-p", json.dumps(patch)
    )
    wait_for(
        lambda: kubectl.get("statefulset", "db", namespace)["status"].get("readyReplicas") == 2, 30, "db-1 unready"
    )
    before = uids(kubectl, namespace, "app=db")
    result = await run("kubernetes.deletePod", {"kind": "StatefulSet", "name": "db"}, namespace, admin)
    assert result.ok, result.message
    assert result.output == {"deleted": ["db-1"], "pods": 3}
    # a StatefulSet recreates the pod under the same name
    wait_for(lambda: gone(kubectl, namespace, "db-1", before["db-1"]), 30, "db-1 to be replaced")
    wait_ready(kubectl, namespace, "StatefulSet", "db", 3)
    assert uids(kubectl, namespace, "app=db")["db-0"] == before["db-0"]


async def test_delete_what_is_not_there(namespace: str, admin: Kube) -> None:
    result = await run("kubernetes.deletePod", {"name": "nope"}, namespace, admin)
    assert (result.ok, result.message) == (False, f"pod {namespace}/nope not found")
    result = await run("kubernetes.deletePod", {"kind": "StatefulSet", "name": "nope"}, namespace, admin)
    assert (result.ok, result.message) == (False, f"statefulset {namespace}/nope not found")


async def test_delete_from_a_workload_without_pods(kubectl: Kubectl, namespace: str, admin: Kube) -> None:
    create(kubectl, namespace, deployment("idle", 0))
    result = await run("kubernetes.deletePod", {"kind": "Deployment", "name": "idle"}, namespace, admin)
    assert (result.ok, result.message) == (False, f"deployment {namespace}/idle has no pods to delete")
