"""A real control plane, the CRDs and RBAC from manifests/, and the operator running
as its own ServiceAccount (not system:masters): started once per session."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from runbook_operator.lab.controlplane import ControlPlane, free_port
from runbook_operator.lab.demo import DemoService

ROOT = Path(__file__).resolve().parents[2]
SA = "system:serviceaccount:runbook-operator:runbook-operator"


class Kubectl:
    def __init__(self, binary: Path, kubeconfig: Path) -> None:
        self.binary, self.kubeconfig = binary, kubeconfig

    def __call__(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        proc = subprocess.run(
            [str(self.binary), *args], input=input, env=env, capture_output=True, text=True, timeout=60
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {proc.stderr}")
        return proc

    def apply(self, *docs: dict[str, Any], check: bool = True) -> subprocess.CompletedProcess[str]:
        return self("apply", "-f", "-", input=yaml.safe_dump_all(docs), check=check)

    def get(self, kind: str, name: str, namespace: str) -> dict[str, Any]:
        return json.loads(self("get", kind, name, "-n", namespace, "-o", "json").stdout)  # type: ignore[no-any-return]

    def events(self, name: str, namespace: str) -> list[dict[str, Any]]:
        out = self("get", "events", "-n", namespace, "--field-selector", f"involvedObject.name={name}", "-o", "json")
        items = json.loads(out.stdout)["items"]
        return sorted(items, key=lambda e: (e.get("firstTimestamp") or "", e["metadata"]["creationTimestamp"]))


def wait_for(predicate: Callable[[], Any], timeout: float = 60.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}; last value: {last!r}")


@pytest.fixture(scope="session")
def controlplane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    build = subprocess.run([str(ROOT / "tools/controlplane/build.sh")], capture_output=True, text=True, check=True)
    plane = ControlPlane(tmp_path_factory.mktemp("controlplane"), Path(build.stdout.strip()))
    plane.up()
    yield plane
    plane.down()


@pytest.fixture(scope="session")
def kubectl(controlplane: ControlPlane) -> Kubectl:
    k = Kubectl(controlplane.bin / "kubectl", controlplane.kubeconfig)
    k("apply", "-k", str(ROOT / "manifests"))
    k("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
    # the OpenAPI document (kubectl explain, server-side field names) is published a moment later
    wait_for(lambda: k("explain", "incident", check=False).returncode == 0, 60, "the CRDs' OpenAPI schema")
    return k


@pytest.fixture(scope="session")
def operator_kubeconfig(kubectl: Kubectl, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A kubeconfig holding the operator ServiceAccount's token: RBAC from manifests/ applies."""
    token = kubectl("-n", "runbook-operator", "create", "token", "runbook-operator", "--duration=4h").stdout.strip()
    config = json.loads(kubectl.kubeconfig.read_text())
    config["users"] = [{"name": "admin", "user": {"token": token}}]
    path = tmp_path_factory.mktemp("operator") / "kubeconfig"
    path.write_text(json.dumps(config))
    return path


class OperatorProcess:
    def __init__(self, kubeconfig: Path, log: Path) -> None:
        self.kubeconfig, self.log, self.port = kubeconfig, log, free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        cmd = [
            sys.executable,
            "-m",
            "runbook_operator",
            "run",
            "--all-namespaces",
            f"--liveness=http://127.0.0.1:{self.port}/healthz",
        ]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(self._healthy, 60, "the operator's liveness endpoint")

    def _healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"operator exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def kill9(self) -> None:
        """Die the hard way, mid-whatever: no cleanup, no status written."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="session")
def operator(operator_kubeconfig: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    op = OperatorProcess(operator_kubeconfig, tmp_path_factory.mktemp("logs") / "operator.log")
    op.start()
    yield op
    op.stop()


_counter = itertools.count()


@pytest.fixture
def namespace(kubectl: Kubectl) -> Iterator[str]:
    name = f"e2e-{os.getpid()}-{next(_counter)}"
    kubectl("create", "namespace", name)
    yield name
    kubectl("delete", "namespace", name, "--wait=false")


@pytest.fixture
def demo() -> Iterator[DemoService]:
    service = DemoService(restart_seconds=0.5).start()
    yield service
    service.stop()
