"""The operator in the cluster, as users run it: its own image on the real node, installed by Helm.

:func:`install` imports the image (``docker save`` of the project's Dockerfile, made by
:func:`runbook_lab.images.operator_image`; no registry) into the node's containerd and runs
``helm upgrade --install`` of ``charts/runbook-operator`` with the chart's defaults (two
replicas with leader election, the ServiceAccount and RBAC, the admission policies, the intake
Service, read-only root, uid 65532, probes, resource limits) plus only what a local node needs:
the image's tag, ``pullPolicy: Never`` and the toleration and selector of the real node.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from runbook_lab.images import Image
from runbook_lab.node import Node, placement

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "runbook-operator"
RELEASE = "runbook-operator"
NAMESPACE = "runbook-operator"  # as manifests/namespace-access binds
INTAKE_SECRET = "runbook-operator-intake"
INTAKE_PORT = 8082


class InstallError(RuntimeError):
    pass


class Helm:
    """The pinned helm (tools/helm/build.sh) with its cache, config and data under ``home``."""

    def __init__(self, binary: Path, home: Path, kubeconfig: Path | None = None) -> None:
        self.binary, self.home, self.kubeconfig = binary, home, kubeconfig

    def __call__(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, **{f"HELM_{d}_HOME": str(self.home / d.lower()) for d in ("CACHE", "CONFIG", "DATA")}}
        if self.kubeconfig:
            env["KUBECONFIG"] = str(self.kubeconfig)
        done = subprocess.run([str(self.binary), *args], env=env, capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise InstallError(f"helm {' '.join(args)} failed: {done.stderr.strip()}")
        return done


# The lab plays waves of faults back to back (`make demo`, the node tests hold ten destructive
# calls open at once): far more remediation rounds and destructive steps in ten minutes than the
# chart's default budget lets a cluster have. It keeps the default budget, with room for that.
LAB_BUDGET = 300


def node_values(image: Image) -> list[str]:
    """The values that put the chart's pods on the real node, from an image that is never pulled."""
    where = placement()
    return [
        f"--set=image.repository={image.repository}",
        f"--set=image.tag={image.tag}",
        "--set=image.pullPolicy=Never",
        "--set-json=nodeSelector=" + json.dumps(where["nodeSelector"]),
        "--set-json=tolerations=" + json.dumps(where["tolerations"]),
        f"--set=defaultBudget.spec.remediations.limit={LAB_BUDGET}",
        f"--set=defaultBudget.spec.destructiveSteps.limit={LAB_BUDGET}",
    ]


def install(
    helm: Helm,
    kubectl: Path,
    node: Node,
    image: Image,
    *,
    namespace: str = NAMESPACE,
    values: Sequence[str] = (),
    token: str | None = None,
    timeout: float = 240,
) -> str:
    """Import ``image``, write the intake's token Secret (``token``, else the one there, else a new one)
    and install or upgrade the release.

    Returns once the Deployment is rolled out; the intake token is returned (the Secret's value).
    """
    node.import_image(image.archive)
    kube = _kubectl(kubectl, helm.kubeconfig)
    kube("create", "namespace", namespace, check=False)
    existing = kube("-n", namespace, "get", "secret", INTAKE_SECRET, "-o", "json", check=False)
    found = existing.returncode == 0
    before = base64.b64decode(json.loads(existing.stdout)["data"]["token"]).decode() if found else None
    if token is None and before is not None:
        token = before
    else:
        token = token or secrets.token_hex(32)
        secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": INTAKE_SECRET, "namespace": namespace},
                  "stringData": {"token": token}}  # fmt: skip
        kube("apply", "-f", "-", stdin=json.dumps(secret))
    helm(
        "upgrade", "--install", RELEASE, str(CHART), "-n", namespace, *node_values(image), *values,
        "--wait", f"--timeout={int(timeout)}s", timeout=timeout + 30,
    )  # fmt: skip
    if before is not None and before != token:  # the operator reads its token at start
        kube("-n", namespace, "rollout", "restart", f"deployment/{RELEASE}")
    kube("-n", namespace, "rollout", "status", f"deployment/{RELEASE}", f"--timeout={int(timeout)}s")
    return token


def uninstall(helm: Helm, namespace: str = NAMESPACE) -> None:
    helm("uninstall", RELEASE, "-n", namespace, "--wait", "--timeout=120s", check=False, timeout=150)


def intake_url(kubectl: Path, kubeconfig: Path, namespace: str = NAMESPACE) -> str:
    """The intake Service's address as this host reaches it (kube-proxy translates it to a pod)."""
    service = json.loads(_kubectl(kubectl, kubeconfig)("-n", namespace, "get", "service", RELEASE, "-o", "json").stdout)
    return f"http://{service['spec']['clusterIP']}:{INTAKE_PORT}/api/v1/alerts/alertmanager"


def leader(kubectl: Path, kubeconfig: Path, namespace: str = NAMESPACE) -> str:
    """The pod that holds the Lease (its holderIdentity), or "" when none does."""
    done = _kubectl(kubectl, kubeconfig)("-n", namespace, "get", "lease", RELEASE, "-o", "json", check=False)
    if done.returncode:
        return ""
    spec: dict[str, Any] = json.loads(done.stdout).get("spec") or {}
    return str(spec.get("holderIdentity") or "")


def wait_for_leader(kubectl: Path, kubeconfig: Path, namespace: str = NAMESPACE, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if holder := leader(kubectl, kubeconfig, namespace):
            return holder
        time.sleep(0.5)
    raise InstallError(f"no replica took the Lease {namespace}/{RELEASE} within {timeout:g}s")


def _kubectl(binary: Path, kubeconfig: Path | None) -> Any:
    def run(*args: str, check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, **({"KUBECONFIG": str(kubeconfig)} if kubeconfig else {})}
        done = subprocess.run([str(binary), *args], env=env, input=stdin, capture_output=True, text=True, timeout=300)
        if check and done.returncode:
            raise InstallError(f"kubectl {' '.join(args)}: {done.stderr.strip()}")
        return done

    return run
