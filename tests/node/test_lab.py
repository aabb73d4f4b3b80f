"""`make run` on the real node: ISH Chat as containers, the operator installed by its chart, wave 1 of the demo.

The three services crash in their containers' processes (their listeners close; the processes
live on), PostgreSQL and Redis stop. The in-cluster operator restarts what the runbook restarts:
new containers for the services, the lab's servers back for the databases (their StatefulSets
are kwok's). The crashed containers' own logs carry the errors the runbook's log scan finds.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runbook_lab import ishchat, scenarios
from runbook_lab.lab import NAMESPACE, Lab
from tests.node.conftest import RealNode


@pytest.fixture(scope="module")
def lab(real_node: RealNode) -> Iterator[Lab]:
    root = Path(tempfile.mkdtemp(prefix="rbo-lab-"))
    root.chmod(0o755)  # PostgreSQL runs as its own user and must reach its data directory
    plane = real_node.plane
    the_lab = Lab(root / "lab", plane.kubeconfig, plane.bin / "kubectl", examples=False,
                  node=real_node.node, helm=real_node.helm)  # fmt: skip
    try:
        the_lab.up()
        yield the_lab
    finally:
        the_lab.down()
        shutil.rmtree(root, ignore_errors=True)


def containers(lab: Lab) -> dict[str, dict[str, str]]:
    pods = json.loads(lab.kube("get", "pods", "-n", NAMESPACE, "-o", "json").stdout)["items"]
    found: dict[str, dict[str, str]] = {}
    for pod in pods:
        app = (pod["metadata"].get("labels") or {}).get("app", "")
        statuses = pod.get("status", {}).get("containerStatuses") or []
        if app in ishchat.SERVICES and statuses and "running" in (statuses[0].get("state") or {}):
            found.setdefault(app, {})[pod["metadata"]["name"]] = statuses[0]["containerID"]
    return found


def test_wave_one_on_the_real_node_replaces_the_crashed_containers(lab: Lab) -> None:
    assert lab.in_cluster_intake, "the operator runs in the cluster, fed through its Service"
    assert lab.sim is not None and not lab.sim.serve_services  # the services are the containers, not the lab

    def incidents() -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = json.loads(lab.kube("get", "incidents", "-n", NAMESPACE, "-o", "json").stdout)[
            "items"
        ]
        return items

    before = containers(lab)
    outcomes = scenarios.play(scenarios.WAVES[0], lab.inject, incidents, timeout=180)
    after = containers(lab)
    missed = {o.alert: o.phases for o in outcomes.values() if not o.ok}
    assert not missed, f"{missed}\n{scenarios.table(outcomes.values())}"
    for alert, service in (("InstanceManagerDown", "instance-manager"), ("IntelligentRouterDown", "intelligent-router"),
                           ("LoadBalancerDown", "load-balancer")):  # fmt: skip
        outcome = outcomes[alert]
        assert scenarios.restarted(outcome, ishchat.SERVICES) == [service]
        pairs = scenarios.replacements(before, after, service)
        assert len(pairs) == 2 and all(old != new for old, new in pairs), (service, before, after)
        steps = {f"{s['stage']}.{s['name']}": s for s in outcome.incident["status"]["steps"]}  # type: ignore[index]
        logs = steps["Diagnose.logs"]  # the crashed containers' own stdout, through the API server and the kubelet
        assert logs["output"]["matches"] >= 2 and "unhandled exception" in json.dumps(logs["output"]), logs
    assert lab.postgres is not None and lab.postgres.running and lab.redis is not None and lab.redis.running
    lab.clear()
