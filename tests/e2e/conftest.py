"""The operator running as its own ServiceAccount (not system:masters), once per session,
on the shared control plane of tests/fixtures/cluster.py."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from runbook_operator.lab.controlplane import free_port
from runbook_operator.lab.demo import DemoService
from tests.fixtures.cluster import ROOT, Kubectl, wait_for
from tests.fixtures.common import stop

SA = "system:serviceaccount:runbook-operator:runbook-operator"
__all__ = ["ROOT", "SA", "Kubectl", "OperatorProcess", "wait_for"]


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
        self.kubeconfig, self.log, self.port, self.metrics_port = kubeconfig, log, free_port(), free_port()
        # the Alertmanager intake, with a token only this session knows (tests/e2e/test_intake.py)
        self.intake_port, self.intake_token = free_port(), secrets.token_hex(16)
        self.intake_token_file = log.parent / "intake-token"
        self.intake_token_file.write_text(self.intake_token + "\n")
        self.intake_url = f"http://127.0.0.1:{self.intake_port}/api/v1/alerts/alertmanager"
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
            f"--metrics-address=127.0.0.1:{self.metrics_port}",
            "--log-format=json",
            f"--intake-address=127.0.0.1:{self.intake_port}",
            f"--intake-token-file={self.intake_token_file}",
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

    def scrape(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return r.read().decode()  # type: ignore[no-any-return]

    def kill9(self) -> None:
        """Die the hard way, mid-whatever: no cleanup, no status written."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)


@pytest.fixture(scope="session")
def operator(operator_kubeconfig: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    op = OperatorProcess(operator_kubeconfig, tmp_path_factory.mktemp("logs") / "operator.log")
    op.start()
    yield op
    op.stop()


@pytest.fixture
def demo() -> Iterator[DemoService]:
    service = DemoService(restart_seconds=0.5).start()
    yield service
    service.stop()
