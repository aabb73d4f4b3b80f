"""kubernetes.workloadStatus, rolloutRestart and scale on real Deployments and StatefulSets."""

import asyncio
import json
import re
from datetime import UTC, datetime, timedelta

from runbook_operator.adapters.kube import Kube
from tests.fixtures.cluster import Kubectl, wait_for
from tests.integration.kubernetes.conftest import (
    RESTARTED_AT,
    create,
    deployment,
    pod_names,
    pods,
    run,
    statefulset,
    wait_ready,
)

RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def replica_sets(kubectl: Kubectl, namespace: str, app: str) -> set[str]:
    out = kubectl("get", "replicasets", "-n", namespace, "-l", f"app={app}", "-o", "json").stdout
    return {rs["metadata"]["name"] for rs in json.loads(out)["items"]}


# -- kubernetes.workloadStatus -----------------------------------------------------------


async def test_status_of_a_ready_deployment(kubectl: Kubectl, namespace: str, admin: Kube) -> None:
    create(kubectl, namespace, deployment("web", 3))
    result = await run("kubernetes.workloadStatus", {"name": "web"}, namespace, admin)
    assert result.ok, result.message
    assert result.message == f"deployment {namespace}/web: 3/3 ready, 3 updated, 3 available"
    assert {k: result.output[k] for k in ("desired", "ready", "updated", "available", "observed")} == {
        "desired": 3,
        "ready": 3,
        "updated": 3,
        "available": 3,
        "observed": True,
    }
    available = [c for c in result.output["conditions"] if c["type"] == "Available"]
    assert available and available[0]["status"] == "True"


async def test_status_of_a_ready_statefulset(kubectl: Kubectl, namespace: str, admin: Kube) -> None:
    create(kubectl, namespace, statefulset("db", 2))
    result = await run("kubernetes.workloadStatus", {"kind": "StatefulSet", "name": "db"}, namespace, admin)
    assert result.ok, result.message
    assert result.message == f"statefulset {namespace}/db: 2/2 ready, 2 updated, 2 available"


async def test_status_fails_while_replicas_are_not_ready(kubectl: Kubectl, namespace: str, admin: Kube) -> None:
    # no node carries this label: the pods stay Pending
    body = deployment("web", 2)
    body["spec"]["template"]["spec"]["nodeSelector"] = {"disk": "none-such"}
    create(kubectl, namespace, body, ready=False)

    def settled() -> bool:
        # the controller writes Available=False and updatedReplicas in separate status
        # updates; both must be there before the message can be compared
        status = kubectl.get("deployment", "web", namespace).get("status", {})
        unavailable = any(c["type"] == "Available" and c["status"] == "False" for c in status.get("conditions", []))
        return unavailable and status.get("updatedReplicas") == 2

    wait_for(settled, 30, "the deployment's Available=False condition and 2 updated replicas")
    result = await run("kubernetes.workloadStatus", {"name": "web"}, namespace, admin)
    assert not result.ok
    assert result.message == (
        f"deployment {namespace}/web is not healthy: only 0 of 2 replicas ready; "
        "Available=False (MinimumReplicasUnavailable: Deployment does not have minimum availability.) "
        "(0/2 ready, 2 updated, 0 available)"
    )
    assert result.output["desired"] == 2 and result.output["ready"] == 0


async def test_status_of_a_missing_workload(namespace: str, admin: Kube) -> None:
    result = await run("kubernetes.workloadStatus", {"name": "nope"}, namespace, admin)
    assert (result.ok, result.message) == (False, f"deployment {namespace}/nope not found")
    result = await run("kubernetes.workloadStatus", {"kind": "StatefulSet", "name": "nope"}, namespace, admin)
    assert (result.ok, result.message) == (False, f"statefulset {namespace}/nope not found")


# -- kubernetes.rolloutRestart -----------------------------------------------------------


async def test_restart_rolls_a_deployment_onto_new_pods(kubectl: Kubectl, namespace: str, admin: Kube) -> None:
    create(kubectl, namespace, deployment("web", 2))
    old_pods, old_sets = pod_names(kubectl, namespace, "app=web"), replica_sets(kubectl, namespace, "web")
    result = await run("kubernetes.rolloutRestart", {"name": "web"}, namespace, admin)
    assert result.ok, result.message
    stamp = result.output["restartedAt"]
    assert RFC3339.match(stamp), stamp
    assert abs(datetime.fromisoformat(stamp) - datetime.now(UTC)) < timedelta(minutes=1)
    assert result.message.startswith(f"deployment {namespace}/web restarting: {RESTARTED_AT}={stamp}")
    template = kubectl.get("deployment", "web", namespace)["spec"]["template"]
    assert template["metadata"]["annotations"][RESTARTED_AT] == stamp
    # the rollout really happens: a new ReplicaSet, and its pods replace the old ones
    wait_for(lambda: replica_sets(kubectl, namespace, "web") - old_sets, 30, "a new ReplicaSet")
    wait_ready(kubectl, namespace, "Deployment", "web", 2)
    wait_for(lambda: not (pod_names(kubectl, namespace, "app=web") & old_pods), 30, "the old pods to go")
    assert len(pod_names(kubectl, namespace, "app=web")) == 2


async def test_restart_replaces_a_statefulsets_pods(kubectl: Kubectl, namespace: str, admin: Kube) -> None:
    create(kubectl, namespace, statefulset("db", 2))
    old = {p["metadata"]["uid"] for p in pods(kubectl, namespace, "app=db")}
    result = await run("kubernetes.rolloutRestart", {"kind": "StatefulSet", "name": "db"}, namespace, admin)
    assert result.ok, result.message
    sts = kubectl.get("statefulset", "db", namespace)
    assert sts["spec"]["template"]["metadata"]["annotations"][RESTARTED_AT] == result.output["restartedAt"]

    def replaced() -> bool:
        status = kubectl.get("statefulset", "db", namespace)["status"]
        current = {p["metadata"]["uid"] for p in pods(kubectl, namespace, "app=db")}
        rolled = status.get("currentRevision") == status.get("updateRevision") and status.get("readyReplicas") == 2
        return rolled and len(current) == 2 and not (current & old)

    wait_for(replaced, 45, "both StatefulSet pods to be replaced and ready")


async def test_restart_refuses_what_would_not_roll(kubectl: Kubectl, namespace: str, admin: Kube) -> None:
    create(kubectl, namespace, deployment("paused", 1, paused=True), ready=False)
    result = await run("kubernetes.rolloutRestart", {"name": "paused"}, namespace, admin)
    assert (result.ok, result.message) == (
        False,
        f"deployment {namespace}/paused is paused: a restart would not roll out (kubectl rollout resume first)",
    )
    create(kubectl, namespace, statefulset("manual", 1, updateStrategy={"type": "OnDelete"}), ready=False)
    result = await run("kubernetes.rolloutRestart", {"kind": "StatefulSet", "name": "manual"}, namespace, admin)
    assert not result.ok and "updateStrategy OnDelete" in result.message
    for kind, name in (("deployment", "paused"), ("statefulset", "manual")):
        annotations = kubectl.get(kind, name, namespace)["spec"]["template"]["metadata"].get("annotations") or {}
        assert RESTARTED_AT not in annotations


async def test_restart_of_a_missing_workload(namespace: str, admin: Kube) -> None:
    result = await run("kubernetes.rolloutRestart", {"name": "nope"}, namespace, admin)
    assert (result.ok, result.message) == (False, f"deployment {namespace}/nope not found")


# -- kubernetes.scale --------------------------------------------------------------------


async def test_scale_to_an_absolute_count(kubectl: Kubectl, namespace: str, admin: Kube) -> None:
    create(kubectl, namespace, deployment("web", 1))
    result = await run("kubernetes.scale", {"name": "web", "replicas": 3, "max": 5}, namespace, admin)
    assert result.ok, result.message
    assert result.message == f"deployment {namespace}/web scaled from 1 to 3 replicas"
    assert result.output == {"from": 1, "to": 3, "requested": 3, "clamped": False}
    assert kubectl.get("deployment", "web", namespace)["spec"]["replicas"] == 3
    wait_ready(kubectl, namespace, "Deployment", "web", 3)


async def test_scale_by_a_delta_is_clamped_to_max(kubectl: Kubectl, namespace: str, admin: Kube) -> None:
    create(kubectl, namespace, deployment("web", 2))
    result = await run("kubernetes.scale", {"name": "web", "by": 5, "max": 3}, namespace, admin)
    assert result.ok, result.message
    assert result.message == f"deployment {namespace}/web scaled from 2 to 3 replicas (asked for 7, clamped to max 3)"
    assert result.output["clamped"] is True
    wait_ready(kubectl, namespace, "Deployment", "web", 3)


async def test_scale_a_statefulset_down_clamped_to_min(kubectl: Kubectl, namespace: str, admin: Kube) -> None:
    create(kubectl, namespace, statefulset("db", 2))
    params = {"kind": "StatefulSet", "name": "db", "by": -5, "min": 1, "max": 3}
    result = await run("kubernetes.scale", params, namespace, admin)
    assert result.ok, result.message
    assert result.message == f"statefulset {namespace}/db scaled from 2 to 1 replicas (asked for -3, clamped to min 1)"
    assert kubectl.get("statefulset", "db", namespace)["spec"]["replicas"] == 1
    wait_ready(kubectl, namespace, "StatefulSet", "db", 1)
    wait_for(lambda: pod_names(kubectl, namespace, "app=db") == {"db-0"}, 30, "db-1 to go")


async def test_relative_scales_while_another_writer_changes_the_workload_all_count_once(
    kubectl: Kubectl, namespace: str, admin: Kube
) -> None:
    """Controllers write a workload's status all through a rollout (the real node showed it: a scale
    right after a restart met a 409). Each conflict is computed again from what is there, never lost
    and never applied twice: twelve steps of +1 against a writer changing the Deployment end at +12."""
    create(kubectl, namespace, deployment("web", 1), ready=False)
    stop = asyncio.Event()

    async def other_writer() -> int:
        writes = 0
        while not stop.is_set():
            await asyncio.to_thread(
                kubectl, "annotate", "deployment/web", "-n", namespace, f"touched={writes}", "--overwrite"
            )
            writes += 1
        return writes

    writer = asyncio.create_task(other_writer())
    try:
        results = [
            await run("kubernetes.scale", {"name": "web", "by": 1, "max": 50}, namespace, admin) for _ in range(12)
        ]
    finally:
        stop.set()
        writes = await writer
    assert all(r.ok for r in results), [r.message for r in results if not r.ok]
    assert [r.output["to"] for r in results] == list(range(2, 14))
    assert kubectl.get("deployment", "web", namespace)["spec"]["replicas"] == 13
    assert writes >= 2  # the other writer really wrote meanwhile


async def test_scale_to_the_current_count_changes_nothing(kubectl: Kubectl, namespace: str, admin: Kube) -> None:
    create(kubectl, namespace, deployment("web", 2))
    generation = kubectl.get("deployment", "web", namespace)["metadata"]["generation"]
    result = await run("kubernetes.scale", {"name": "web", "replicas": 4, "max": 2}, namespace, admin)
    assert result.ok, result.message
    assert result.message == f"deployment {namespace}/web already has 2 replicas (asked for 4, clamped to max 2)"
    assert kubectl.get("deployment", "web", namespace)["metadata"]["generation"] == generation


async def test_scale_of_a_missing_workload(namespace: str, admin: Kube) -> None:
    result = await run("kubernetes.scale", {"kind": "StatefulSet", "name": "nope", "by": 1, "max": 3}, namespace, admin)
    assert (result.ok, result.message) == (False, f"statefulset {namespace}/nope not found")
