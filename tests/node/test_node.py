"""The real node: real containers, Services, cluster DNS, the API server from a pod, walls around it."""

from __future__ import annotations

import json
import socket
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from runbook_lab.images import Image
from runbook_lab.node import NODE_NAME, Node, NodeError
from tests.fixtures.cluster import Kubectl
from tests.fixtures.common import wait_for
from tests.node.conftest import RealNode, container_ids, rolled_out, wait_ids_change

NS = "node-tests"
SERVER = textwrap.dedent("""
    import http.server, os, sys
    print("web started as pid", os.getpid(), flush=True)
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = os.environ["HOSTNAME"].encode()
            self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
            self.wfile.write(body)
        def log_message(self, *a): print("served", self.path, flush=True)
    http.server.ThreadingHTTPServer(("0.0.0.0", 8000), H).serve_forever()
""")


def web(real_node: RealNode, image: Image, name: str = "web", replicas: int = 1) -> list[dict[str, object]]:
    spec = real_node.pod_spec(containers=[{"name": name, "image": image.ref, "imagePullPolicy": "Never",
                                           "command": ["python3", "-c", SERVER]}])  # fmt: skip
    return [
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": NS},
         "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                  "template": {"metadata": {"labels": {"app": name}}, "spec": spec}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": NS},
         "spec": {"selector": {"app": name}, "ports": [{"port": 80, "targetPort": 8000}]}},
    ]  # fmt: skip


@pytest.fixture(scope="module")
def served(real_node: RealNode, lab_image: Image) -> Iterator[Kubectl]:
    kubectl = real_node.kubectl
    kubectl("create", "namespace", NS, check=False)
    kubectl.apply(*web(real_node, lab_image))
    rolled_out(kubectl, NS, "web")
    yield kubectl
    kubectl("delete", "namespace", NS, "--wait=false")


def http_get(host: str, port: int, path: str) -> bytes:
    """The whole answer to one HTTP/1.0 request (the server closes the connection after it)."""
    with socket.create_connection((host, port), timeout=5) as conn:
        conn.sendall(f"GET {path} HTTP/1.0\r\n\r\n".encode())
        chunks = []
        while chunk := conn.recv(4096):
            chunks.append(chunk)
    return b"".join(chunks)


def in_pod(kubectl: Kubectl, code: str) -> str:
    return kubectl("exec", "-n", NS, "deploy/web", "--", "python3", "-c", textwrap.dedent(code)).stdout


def test_a_pod_runs_a_real_container_on_the_real_node(served: Kubectl) -> None:
    [pod] = json.loads(served("get", "pods", "-n", NS, "-l", "app=web", "-o", "json").stdout)["items"]
    assert pod["spec"]["nodeName"] == NODE_NAME
    [status] = pod["status"]["containerStatuses"]
    assert status["containerID"].startswith("containerd://") and status["ready"]
    ip = pod["status"]["podIP"]
    assert ip.startswith("10.244.0.")
    # the host reaches the pod's own address
    assert http_get(ip, 8000, "/hello").endswith(b"\r\n\r\n" + pod["metadata"]["name"].encode())
    logs = wait_for(lambda: "served /hello" in (out := served("logs", "-n", NS, pod["metadata"]["name"]).stdout) and out,
                    20, "the request in the container's log")  # fmt: skip
    assert "web started as pid 1" in logs  # the program is the container's first process: no shim in between


def test_services_and_cluster_dns_work_from_inside_and_from_the_host(served: Kubectl) -> None:
    service_ip = served.get("service", "web", NS)["spec"]["clusterIP"]
    # kube-proxy's rules, from the host (programmed a moment after the Service appears; refused until then)
    answer = wait_for(lambda: http_get(service_ip, 80, "/"), 30, "the Service from the host", ignoring=(OSError,))
    assert answer.startswith(b"HTTP/1.0 200")
    out = in_pod(
        served,
        f"""
        import socket, urllib.request
        print(socket.gethostbyname("web.{NS}.svc.cluster.local"), socket.gethostbyname("web"))
        print(urllib.request.urlopen("http://web.{NS}.svc/", timeout=5).status)  # through its own Service
    """,
    )
    assert out.split() == [service_ip, service_ip, "200"]


def test_a_pod_reaches_the_api_server_as_its_service_account(served: Kubectl) -> None:
    out = in_pod(
        served,
        """
        import json, os, ssl, urllib.request
        secrets = "/var/run/secrets/kubernetes.io/serviceaccount"
        context = ssl.create_default_context(cafile=f"{secrets}/ca.crt")
        host = f"https://{os.environ['KUBERNETES_SERVICE_HOST']}:{os.environ['KUBERNETES_SERVICE_PORT']}"
        request = urllib.request.Request(host + "/apis/authentication.k8s.io/v1/selfsubjectreviews", method="POST",
            data=b'{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}',
            headers={"Authorization": "Bearer " + open(f"{secrets}/token").read(), "Content-Type": "application/json"})
        print(json.load(urllib.request.urlopen(request, context=context, timeout=5))["status"]["userInfo"]["username"])
    """,
    )
    assert out.strip() == f"system:serviceaccount:{NS}:default"


def test_pods_reach_nothing_beyond_this_machine(served: Kubectl) -> None:
    """Guards: leaving the pod network is refused at once, as is a Service or kwok address with no rule."""
    out = in_pod(
        served,
        """
        import socket
        for address in [("203.0.113.7", 80), ("10.77.0.9", 80), ("10.0.0.250", 80)]:
            try:
                socket.create_connection(address, timeout=3).close()
                print("connected")
            except ConnectionRefusedError:
                print("refused")
            except OSError as err:
                print(type(err).__name__)
    """,
    )
    assert out.split() == ["refused", "refused", "refused"]


def test_a_rollout_restart_replaces_the_containers(served: Kubectl) -> None:
    served("scale", "deployment/web", "-n", NS, "--replicas=2")
    rolled_out(served, NS, "web")
    before = container_ids(served, NS, "app=web")
    assert len(before) == 2
    served("rollout", "restart", "deployment/web", "-n", NS)
    after = wait_ids_change(served, NS, "app=web", before, 2)
    assert not set(after) & set(before), "new pods, with new containers"
    served("scale", "deployment/web", "-n", NS, "--replicas=1")


def test_pods_without_the_toleration_stay_on_kwok(real_node: RealNode, served: Kubectl) -> None:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "fake", "namespace": NS},
           "spec": {"containers": [{"name": "c", "image": "never-pulled:1"}]}}  # fmt: skip
    served.apply(pod)
    node = wait_for(lambda: served.get("pod", "fake", NS)["spec"].get("nodeName"), 30, "the fake pod scheduled")
    assert node == "kwok-node-0"


def test_a_second_node_on_this_machine_is_refused_naming_the_first(real_node: RealNode, tmp_path: Path) -> None:
    second = Node(tmp_path / "second", real_node.plane, real_node.node.bin)
    with pytest.raises(NodeError, match=f"already runs on this machine from {real_node.node.root}"):
        second.up()
    assert real_node.node.running()
