"""kubernetes.* against the session's real control plane (tests/fixtures/cluster.py).

Workloads run on the kwok node: the scheduler places their pods and kwok reports
them Running and Ready without pulling an image. kwok serves no logs (the API
server answers "no preferred addresses found"), so :func:`kubelet` points the node
at a small HTTPS server that answers the API server's ``/containerLogs`` requests,
and ``kubectl logs`` really goes through.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest

from runbook_lab.controlplane import NODE_NAME, ControlPlane
from runbook_lab.kubelet import LogServer
from runbook_operator.actions import ActionContext
from runbook_operator.actions.catalog import default_registry
from runbook_operator.adapters.kube import Kube
from runbook_operator.domain.results import StepResult
from runbook_operator.engine.executor import run_action
from tests.fixtures.cluster import ROOT, Kubectl, wait_for

REGISTRY = default_registry()
SA = "system:serviceaccount:runbook-operator:runbook-operator"
NAMESPACE_ACCESS = ROOT / "manifests" / "namespace-access"
RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"


# -- clients ---------------------------------------------------------------------------


def kube_from(kubeconfig: Path) -> Kube:
    config = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(config_file=str(kubeconfig), client_configuration=config)
    return Kube(kubernetes.client.ApiClient(config), workers=8)


@pytest.fixture(scope="session")
def admin(controlplane: ControlPlane, kubectl: Kubectl) -> Iterator[Kube]:
    """The operator's engine with cluster-admin credentials (system:masters)."""
    kube = kube_from(controlplane.kubeconfig)
    yield kube
    kube.close()


@pytest.fixture(scope="session")
def operator_sa(kubectl: Kubectl, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kube]:
    """The operator's engine as its ServiceAccount: the RBAC of manifests/ (and namespace-access) applies."""
    token = kubectl("-n", "runbook-operator", "create", "token", "runbook-operator", "--duration=1h").stdout.strip()
    config = json.loads(kubectl.kubeconfig.read_text())
    config["users"] = [{"name": "admin", "user": {"token": token}}]
    path = tmp_path_factory.mktemp("operator-sa") / "kubeconfig"
    path.write_text(json.dumps(config))
    kube = kube_from(path)
    yield kube
    kube.close()


def can_i(kubectl: Kubectl, namespace: str, verb: str, resource: str) -> str:
    """``kubectl auth can-i`` as the operator; ``resource`` may name a subresource: pods/log."""
    kind, _, sub = resource.partition("/")
    args = ["auth", "can-i", "--as", SA, verb, kind, "-n", namespace, *([f"--subresource={sub}"] if sub else [])]
    return kubectl(*args, check=False).stdout.strip()


def grant(kubectl: Kubectl, namespace: str) -> None:
    """What users are told to run, then wait until the authorizer knows it."""
    kubectl("apply", "-n", namespace, "-k", str(NAMESPACE_ACCESS))
    wait_for(
        lambda: can_i(kubectl, namespace, "get", "pods/log") == "yes",
        10,
        "the namespace-access RoleBinding to take effect",
    )


# -- the kwok node: logs ------------------------------------------------------


class FakeKubelet(LogServer):
    """``logs[pod]`` is the log text; a missing pod answers 404 (a container that has not started)."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.logs: dict[str, str] = {}
        super().__init__(cert, key, lambda namespace, pod, container: self.logs.get(pod))


def _patch_node_status(kubectl: Kubectl, status: dict[str, Any]) -> None:
    kubectl("patch", "node", NODE_NAME, "--subresource=status", "--type=merge", "-p", json.dumps({"status": status}))


@pytest.fixture
def kubelet(controlplane: ControlPlane, kubectl: Kubectl) -> Iterator[FakeKubelet]:
    """Logs for pods on the kwok node, for one test; the node is put back as kwok left it."""
    pki = controlplane.root / "pki"  # the API server does not verify kubelet certificates here
    server = FakeKubelet(pki / "apiserver.crt", pki / "apiserver.key").start()
    before = json.loads(kubectl("get", "node", NODE_NAME, "-o", "json").stdout)["status"]
    _patch_node_status(kubectl, server.node_status())
    yield server
    _patch_node_status(
        kubectl, {"addresses": before.get("addresses"), "daemonEndpoints": before.get("daemonEndpoints")}
    )
    server.stop()


# -- workloads ---------------------------------------------------------------------------


def deployment(name: str, replicas: int = 2, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "main", "image": "busybox"}], "terminationGracePeriodSeconds": 0},
            },
            **spec,
        },
    }


def statefulset(name: str, replicas: int = 2, **spec: Any) -> dict[str, Any]:
    body = deployment(name, replicas, **spec)
    body["kind"] = "StatefulSet"
    body["spec"]["podManagementPolicy"] = "Parallel"  # all pods at once: faster, and enough here
    return body


def create(kubectl: Kubectl, namespace: str, body: dict[str, Any], ready: bool = True) -> dict[str, Any]:
    """Create a workload; with ``ready``, wait until all its replicas are ready."""
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(body))
    if ready:
        wait_ready(kubectl, namespace, body["kind"], body["metadata"]["name"], body["spec"]["replicas"])
    return body


def wait_ready(kubectl: Kubectl, namespace: str, kind: str, name: str, replicas: int, timeout: float = 30) -> None:
    def ready() -> bool:
        obj = kubectl.get(kind, name, namespace)
        status = obj.get("status", {})
        current = status.get("observedGeneration", 0) >= obj["metadata"]["generation"]
        counts = [status.get(k, 0) for k in ("replicas", "readyReplicas", "updatedReplicas", "availableReplicas")]
        return current and counts == [replicas] * 4

    wait_for(ready, timeout, f"{kind} {namespace}/{name} to have {replicas} ready replicas")


def pods(kubectl: Kubectl, namespace: str, selector: str) -> list[dict[str, Any]]:
    """The pods matching the selector that are not being deleted."""
    items = json.loads(kubectl("get", "pods", "-n", namespace, "-l", selector, "-o", "json").stdout)["items"]
    return [p for p in items if not p["metadata"].get("deletionTimestamp")]


def pod_names(kubectl: Kubectl, namespace: str, selector: str) -> set[str]:
    return {p["metadata"]["name"] for p in pods(kubectl, namespace, selector)}


# -- running actions ---------------------------------------------------------------------


async def run(action: str, params: dict[str, Any], namespace: str, services: Any, timeout: float = 10.0) -> StepResult:
    """One action, as the executor calls it, but without its timeout (the action's own bounds show)."""
    ctx = ActionContext(namespace, "incident", timeout, services=services)
    return await run_action(REGISTRY.get(action), REGISTRY.parse(action, params), ctx)


class Hung:
    """Services whose API calls never answer (a hung API server, seen from the event loop)."""

    def __init__(self) -> None:
        self.calls = 0

    async def rest(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        await asyncio.Event().wait()

    async def run_blocking(self, fn: Any, *args: Any) -> Any:
        raise AssertionError("kubernetes.* actions call the API through rest()")

    async def read_secret(self, namespace: str, name: str, key: str, policy: str | None) -> str:
        raise AssertionError("kubernetes.* actions read no secrets")


@pytest.fixture
def silent(silent_port: int) -> Iterator[Kube]:
    """The operator's engine pointed at an API server that accepts connections and never answers."""
    config = kubernetes.client.Configuration()
    config.host = f"https://127.0.0.1:{silent_port}"
    kube = Kube(kubernetes.client.ApiClient(config), workers=4)
    yield kube
    kube.close()
