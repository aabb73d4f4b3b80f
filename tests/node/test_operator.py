"""The operator in the cluster from its own image, installed by the Helm chart, acting on real containers.

Everything runs as users run it: two replicas of the Dockerfile's image (imported into the
node, never pulled), the chart's ServiceAccount, RBAC, admission policies and intake Service,
read-only root, uid 65532, probes and limits. Destructive calls are counted by the server that
receives them (GateServer, on the host's bridge address, which the pods reach), never read
from the operator's status.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from runbook_lab import incluster
from runbook_lab.controlplane import free_port
from runbook_lab.images import Image
from runbook_lab.node import CTR, GATEWAY
from tests.fixtures.cluster import ROOT, Kubectl
from tests.fixtures.common import wait_for
from tests.node.conftest import RealNode, container_ids, rolled_out, wait_ids_change
from tests.reliability.conftest import GateServer, incident, policy, statuses, step

OPERATOR_NS = incluster.NAMESPACE
APP = "team-app"
SELECTOR = "app.kubernetes.io/name=runbook-operator"
OPT_IN = "remediation.ishchat.io/intake=enabled"
WEB = textwrap.dedent("""
    import http.server, os
    print("web started", flush=True)
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            print("served", self.path, flush=True)
            self.send_response(200); self.send_header("Content-Length", "2"); self.end_headers(); self.wfile.write(b"ok")
        def log_message(self, *a): pass
    http.server.ThreadingHTTPServer(("0.0.0.0", 8000), H).serve_forever()
""")


@dataclass
class Release:
    kubectl: Kubectl
    real_node: RealNode
    image: Image
    token: str

    @property
    def kubectl_bin(self) -> Path:
        return self.real_node.plane.bin / "kubectl"

    def pods(self) -> list[dict[str, Any]]:
        out = self.kubectl("get", "pods", "-n", OPERATOR_NS, "-l", SELECTOR, "-o", "json").stdout
        return [p for p in json.loads(out)["items"] if not p["metadata"].get("deletionTimestamp")]

    def leader_pod(self) -> str:
        holder = incluster.wait_for_leader(self.kubectl_bin, self.real_node.plane.kubeconfig)
        return holder.rsplit("_", 1)[0]

    def ready_replicas(self) -> int:
        return int(self.kubectl.get("deployment", incluster.RELEASE, OPERATOR_NS)["status"].get("readyReplicas") or 0)


@pytest.fixture(scope="module")
def release(real_node: RealNode, operator_image: Image, lab_image: Image) -> Iterator[Release]:
    kubectl = real_node.kubectl
    started = time.monotonic()
    token = incluster.install(real_node.helm, real_node.plane.bin / "kubectl", real_node.node, operator_image)
    print(f"helm install (image import included) → rolled out in {time.monotonic() - started:.1f}s")
    kubectl("create", "namespace", APP, check=False)
    kubectl("label", "namespace", APP, OPT_IN, "--overwrite")
    kubectl("apply", "-n", APP, "-k", str(ROOT / "manifests/namespace-access"))
    spec = real_node.pod_spec(containers=[{"name": "web", "image": lab_image.ref, "imagePullPolicy": "Never",
                                           "command": ["python3", "-c", WEB]}])  # fmt: skip
    kubectl.apply(
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": APP},
         "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                  "template": {"metadata": {"labels": {"app": "web"}}, "spec": spec}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": APP},
         "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8000}]}},
    )  # fmt: skip
    rolled_out(kubectl, APP, "web")
    yield Release(kubectl, real_node, operator_image, token)
    incluster.uninstall(real_node.helm)
    kubectl("delete", "namespace", APP, "--wait=false")


@pytest.fixture
def gates() -> Iterator[GateServer]:
    """A GateServer the operator's pods reach: on the host's address on the node's bridge."""
    server = GateServer(GATEWAY).start()
    yield server
    server.stop()


def resolved(kubectl: Kubectl, name: str, timeout: float = 120) -> dict[str, Any]:
    def phase() -> dict[str, Any] | None:
        status = statuses(kubectl, APP).get(name) or {}
        assert status.get("phase") not in ("Escalated", "Failed"), status
        return status if status.get("phase") == "Resolved" else None

    result: dict[str, Any] = wait_for(phase, timeout, f"{name} Resolved", every=0.5)
    return result


def test_two_replicas_of_the_local_image_run_as_in_production(release: Release) -> None:
    pods = wait_for(lambda: len(p := release.pods()) == 2 and p, 60, "two operator pods")
    for pod in pods:
        [container] = pod["spec"]["containers"]
        assert container["image"] == release.image.ref and container["imagePullPolicy"] == "Never"
        assert pod["spec"]["nodeName"] == "localhost"
        assert pod["spec"]["serviceAccountName"] == "runbook-operator"
        assert all(c["ready"] for c in pod["status"]["containerStatuses"])
    names = {p["metadata"]["name"] for p in pods}
    # a Lease an earlier release left (uninstalling keeps it) is taken over once it expires
    leader = wait_for(lambda: (holder := release.leader_pod()) in names and holder, 60, "one of these pods to lead")
    said = "became leader of lease runbook-operator/runbook-operator"
    logs = wait_for(lambda: said in (out := release.kubectl("logs", "-n", OPERATOR_NS, leader).stdout) and out,
                    30, "the leader saying so in its log")  # fmt: skip
    assert "Traceback" not in logs
    [standby] = [p["metadata"]["name"] for p in pods if p["metadata"]["name"] != leader]
    assert "became leader" not in release.kubectl("logs", "-n", OPERATOR_NS, standby).stdout
    inside = release.kubectl("exec", "-n", OPERATOR_NS, leader, "--", "python3", "-c", textwrap.dedent("""
        import os, resource
        try:
            open("/written", "w")
            print("root-writable")
        except OSError as err:
            print("errno", err.errno)
        print(os.getuid(), os.getgid(), resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        print(open("/sys/fs/cgroup/memory/memory.limit_in_bytes").read().strip())
    """)).stdout.split()  # fmt: skip
    assert inside[:2] == ["errno", "30"], inside  # EROFS: the root filesystem is read-only
    assert inside[2:4] == ["65532", "65532"]
    assert int(inside[4]) >= 1024  # the open-files limit containerd gives the container
    assert int(inside[5]) == 256 * 2**20  # the chart's memory limit, enforced by the kernel


def test_an_incident_is_remediated_on_real_containers_by_the_in_cluster_operator(release: Release) -> None:
    kubectl = release.kubectl
    before = container_ids(kubectl, APP, "app=web")
    assert len(before) == 2
    release.kubectl("exec", "-n", APP, "deploy/web", "--", "python3", "-c",
                    "import urllib.request; urllib.request.urlopen('http://localhost:8000/boom-1')")  # fmt: skip
    fix = policy("real-fix", APP, remediate=[
        step("restart", "kubernetes.rolloutRestart", requiresApproval=False, **{"with": {"name": "web"}}),
        step("scale-out", "kubernetes.scale", requiresApproval=False, **{"with": {"name": "web", "by": 1, "max": 3}}),
        step("drop-one", "kubernetes.deletePod", requiresApproval=False,
             **{"with": {"kind": "Deployment", "name": "web", "maxPods": 1}}),
    ], verify=[
        step("serves", "http.check", retries=30, backoff="1s", **{"with": {"url": f"http://web.{APP}.svc/"}}),
        step("logs", "kubernetes.podLogs", retries=30, backoff="1s",
             **{"with": {"name": "web", "errorPattern": "web started", "maxErrors": 10, "tailLines": 20}}),
    ])  # fmt: skip
    kubectl.apply(fix)
    kubectl.apply(incident("real-fix", APP, "real-fix"))
    status = resolved(kubectl, "real-fix")
    after = wait_ids_change(kubectl, APP, "app=web", before, 3)
    assert not set(after.values()) & set(before.values()), "every container replaced: restart, then a new one"
    deployment = kubectl.get("deployment", "web", APP)
    assert deployment["spec"]["replicas"] == 3 and deployment["status"].get("readyReplicas") == 3
    records = {s["name"]: s for s in status["steps"]}
    assert {"restart", "scale-out", "drop-one", "serves", "logs"} <= set(records)
    assert all(records[n]["state"] == "Succeeded" for n in ("restart", "scale-out", "drop-one")), records
    scanned = records["logs"]["output"]  # the containers' own logs, read through the API server from the kubelet
    assert scanned["matches"] >= 1 and "web started" in json.dumps(scanned["excerpts"]), scanned
    # who restarted the Deployment: not the test's kubectl (the API server's managedFields say which client)
    shown = json.loads(kubectl("get", "deployment", "web", "-n", APP, "-o", "json", "--show-managed-fields").stdout)
    restarters = {f["manager"] for f in shown["metadata"]["managedFields"] if "restartedAt" in json.dumps(f)}
    assert restarters and not any(m.startswith("kubectl") for m in restarters), restarters
    events = kubectl.events("real-fix", APP)
    reasons = [e["reason"] for e in events]
    assert "Verified" in reasons and reasons.count("StepSucceeded") >= 4, reasons  # Events written by the pod
    kubectl("scale", "deployment/web", "-n", APP, "--replicas=2")


def _held(name: str, gate: str) -> dict[str, Any]:
    return policy(name, APP, limits={"maxAttempts": 1},
                  remediate=[step("fix", "http.request", requiresApproval=False, timeout="120s",
                                  **{"with": {"url": f"{gate}/gate/{name}", "destructive": True}})],
                  verify=[step("fixed", "http.check", retries=60, backoff="1s", **{"with": {"url": f"{gate}/done/{name}"}})])  # fmt: skip


def _container_pid(release: Release, pod_name: str) -> int:
    """The host pid of the pod's operator container, from the node's containerd."""
    pod = release.kubectl.get("pod", pod_name, OPERATOR_NS)
    container_id = pod["status"]["containerStatuses"][0]["containerID"].removeprefix("containerd://")
    tasks = subprocess.run([str(CTR), "--address", str(release.real_node.node.socket), "-n", "k8s.io", "tasks", "ls"],
                           capture_output=True, text=True, check=True).stdout  # fmt: skip
    for line in tasks.splitlines():
        words = line.split()
        if words and words[0] == container_id:
            return int(words[1])
    raise AssertionError(f"no task for container {container_id}:\n{tasks}")


@pytest.mark.parametrize("how", ["delete-pod", "kill-9"])
def test_the_standby_takes_over_from_a_lost_leader_and_the_held_step_runs_once(
    release: Release, gates: GateServer, how: str
) -> None:
    kubectl = release.kubectl
    wait_for(lambda: release.ready_replicas() == 2, 120, "two ready replicas")
    name = f"held-{how}"
    gates.shut(name)
    kubectl.apply(_held(name, gates.url))
    kubectl.apply(incident(name, APP, name))
    wait_for(lambda: gates.waiting[name] == 1, 90, f"{name}'s destructive call held at the server")
    identity = incluster.wait_for_leader(release.kubectl_bin, release.real_node.plane.kubeconfig)
    leader = identity.rsplit("_", 1)[0]
    started = time.monotonic()
    if how == "delete-pod":
        kubectl("delete", "pod", leader, "-n", OPERATOR_NS, "--wait=false")
    else:  # the kubelet restarts the container in place: the standby or that new process may win the Lease
        os.kill(_container_pid(release, leader), signal.SIGKILL)
    new = wait_for(lambda: (i := incluster.leader(release.kubectl_bin, release.real_node.plane.kubeconfig)) != identity
                   and i, 60, "another process to lead")  # fmt: skip
    took = time.monotonic() - started
    print(f"{how}: {new} leads {took:.1f}s after {identity} was lost")
    assert took <= 30, took  # the lease is 15 s; a deleted pod releases it at once
    gates.open(name)
    resolved(kubectl, name)
    assert gates.calls[f"/gate/{name}"] == 1, f"the destructive call ran {gates.calls[f'/gate/{name}']} times"
    if how == "kill-9":  # the kubelet restarted the killed container in place
        pod = kubectl.get("pod", leader, OPERATOR_NS)
        assert pod["status"]["containerStatuses"][0]["restartCount"] >= 1


def test_alertmanager_reaches_the_in_cluster_intake_through_its_service(release: Release, tmp_path: Path) -> None:
    url = incluster.intake_url(release.kubectl_bin, release.real_node.plane.kubeconfig)
    port = free_port()
    config = {
        "route": {"receiver": "runbook", "group_by": ["alertname", "namespace"],
                  "group_wait": "1s", "group_interval": "1s", "repeat_interval": "1h"},
        "receivers": [{"name": "runbook", "webhook_configs": [{
            "url": url, "send_resolved": True, "http_config": {"authorization": {"credentials": release.token}}}]}],
    }  # fmt: skip
    (tmp_path / "alertmanager.yml").write_text(yaml.safe_dump(config))
    with (tmp_path / "alertmanager.log").open("wb") as log:
        proc = subprocess.Popen(
            ["/usr/bin/prometheus-alertmanager", f"--config.file={tmp_path / 'alertmanager.yml'}",
             f"--storage.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    doc = [{"labels": {"alertname": "InClusterIntake", "namespace": APP, "severity": "warning"},
            "annotations": {"summary": "through the Service"}}]  # fmt: skip

    def push() -> bool:
        request = urllib.request.Request(f"http://127.0.0.1:{port}/api/v2/alerts", data=json.dumps(doc).encode(),
                                         headers={"Content-Type": "application/json"})  # fmt: skip
        with urllib.request.urlopen(request, timeout=5) as answer:
            return bool(answer.status == 200)

    try:
        wait_for(push, 30, "alertmanager to take the alert", ignoring=(OSError,))

        def created() -> list[dict[str, Any]]:
            items = json.loads(release.kubectl("get", "incidents", "-n", APP, "-o", "json").stdout)["items"]
            return [i for i in items if i["spec"]["alert"] == "InClusterIntake"]

        [found] = wait_for(created, 60, "the incident alertmanager's webhook creates")
        assert found["spec"]["summary"] == "through the Service"
        assert found["spec"]["source"]["fingerprint"]  # what Alertmanager sent, kept by the intake
    finally:
        proc.terminate()
        proc.wait(10)


def test_the_intakes_connection_cap_holds_inside_the_containers_limits(release: Release) -> None:
    """600 idle connections through the Service (the cap is 256 per replica): no restart, no OOM, health stays."""
    url = incluster.intake_url(release.kubectl_bin, release.real_node.plane.kubeconfig)
    host, port = url.split("//")[1].split("/")[0].split(":")
    restarts = {p["metadata"]["name"]: p["status"]["containerStatuses"][0]["restartCount"] for p in release.pods()}
    held = []
    try:
        for _ in range(600):
            try:
                held.append(socket.create_connection((host, int(port)), timeout=2))
            except OSError:
                break  # refused or timed out past the cap: what the cap is for
        assert len(held) >= 256
        time.sleep(3)
        for pod in release.pods():
            name = pod["metadata"]["name"]
            health = release.kubectl("exec", "-n", OPERATOR_NS, name, "--", "python3", "-c",
                                     "import urllib.request; print(urllib.request.urlopen("
                                     "'http://127.0.0.1:8080/healthz', timeout=5).status)")  # fmt: skip
            assert health.stdout.strip() == "200"
    finally:
        for conn in held:
            conn.close()
    after = {p["metadata"]["name"]: p["status"]["containerStatuses"][0] for p in release.pods()}
    for name, status in after.items():
        assert status["restartCount"] == restarts.get(name, 0), status
        assert "OOMKilled" not in json.dumps(status)


def test_a_helm_upgrade_to_a_new_image_tag_with_incidents_open_loses_none_and_doubles_none(
    release: Release, gates: GateServer
) -> None:
    kubectl, node = release.kubectl, release.real_node.node
    wait_for(lambda: release.ready_replicas() == 2, 120, "two ready replicas")
    new_ref = f"{release.image.repository}:{release.image.tag}-upgrade"
    subprocess.run([str(CTR), "--address", str(node.socket), "-n", "k8s.io", "images", "tag", "--force",
                    f"docker.io/library/{release.image.ref}", f"docker.io/library/{new_ref}"],
                   check=True, capture_output=True)  # fmt: skip
    names = [f"upgrade-{i}" for i in range(10)]
    for name in names:
        gates.shut(name)
        kubectl.apply(_held(name, gates.url))
        kubectl.apply(incident(name, APP, name))
    wait_for(lambda: sum(gates.waiting[n] for n in names) == len(names), 120, "every destructive call held")
    old_pods = {p["metadata"]["name"] for p in release.pods()}
    upgraded = Image(new_ref, release.image.archive)
    release.real_node.helm(
        "upgrade", incluster.RELEASE, str(incluster.CHART), "-n", OPERATOR_NS, "--reuse-values",
        f"--set=image.tag={upgraded.tag}", "--wait", "--timeout=240s", timeout=300,
    )  # fmt: skip
    for name in names:
        gates.open(name)
    for name in names:
        resolved(kubectl, name, timeout=180)
    assert {n: gates.calls[f"/gate/{n}"] for n in names} == dict.fromkeys(names, 1)
    pods = release.pods()
    assert not {p["metadata"]["name"] for p in pods} & old_pods, "every replica replaced"
    assert {p["spec"]["containers"][0]["image"] for p in pods} == {new_ref}
