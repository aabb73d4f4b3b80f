"""A real node (containerd, kubelet, kube-proxy, CoreDNS) on a control plane of its own, once per session.

The node changes host-wide state, so one runs per machine: this tier fails (it never skips)
when the machine cannot run one or another node runs, naming why. What the host looked like
before the node first started is kept (:class:`HostSnapshot`), so the teardown test can show
that ``down`` put every bit of it back.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from runbook_lab import images, incluster
from runbook_lab.controlplane import ControlPlane
from runbook_lab.node import HARDCODED, Node, machine_reason, owner, placement
from tests.fixtures.cluster import ROOT, Kubectl
from tests.fixtures.common import wait_for

# what a node must leave as it found it; values that move by themselves are left out
VOLATILE_SYSCTLS = ("random", "inode", "dentry", "file-nr", "ns_last_pid", "quota.syncs", "stat_", "fs.aio-nr",
                    "kernel.pty.nr", "net.netfilter.nf_conntrack_count", "sched_domain", "perf_event_max")  # fmt: skip


DOCKER = re.compile(r"/docker\b|/rbo-img-|/img-docker-|/docker-|/ctrd-")


@dataclass
class HostSnapshot:
    """The host-wide state a node touches, as text to compare."""

    sysctls: dict[str, str]
    iptables: str
    links: list[str]
    cgroups: list[str]
    hardcoded: dict[str, list[str] | None]
    mounts: list[str]

    @classmethod
    def take(cls) -> HostSnapshot:
        sysctls = {}
        for line in subprocess.run(["sysctl", "-a"], capture_output=True, text=True).stdout.splitlines():
            key, _, value = line.partition(" = ")
            if not any(v in key for v in VOLATILE_SYSCTLS) and ".veth" not in key and ".rbo0" not in key:
                sysctls[key] = value
        rules = []
        for tool in ("iptables-save", "ip6tables-save"):
            out = subprocess.run([tool], capture_output=True, text=True, check=True).stdout
            rules += [line for line in out.splitlines() if line.startswith(("-A", "-N", ":KUBE", ":RBO"))]
        return cls(
            sysctls=sysctls,
            iptables="\n".join(sorted(rules)),
            links=sorted(os.listdir("/sys/class/net")),
            cgroups=sorted(str(p) for p in Path("/sys/fs/cgroup").glob("*/*") if p.is_dir()),
            hardcoded={str(p): sorted(os.listdir(p)) if p.is_dir() else None for p in HARDCODED},
            mounts=sorted(line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()),
        )

    def differences(self, after: HostSnapshot) -> list[str]:
        found = []
        for key in sorted(set(self.sysctls) | set(after.sysctls)):
            if self.sysctls.get(key) != after.sysctls.get(key):
                found.append(f"sysctl {key}: {self.sysctls.get(key)} -> {after.sysctls.get(key)}")
        if self.iptables != after.iptables:
            before, now = set(self.iptables.splitlines()), set(after.iptables.splitlines())
            found += [f"iptables added: {r}" for r in sorted(now - before)]
            found += [f"iptables removed: {r}" for r in sorted(before - now)]
        for name in ("links", "cgroups", "mounts"):
            before_set, after_set = set(getattr(self, name)), set(getattr(after, name))
            # a Docker engine another test (or helper) runs meanwhile makes its own; they are not the node's
            found += [f"{name} added: {x}" for x in sorted(after_set - before_set) if not DOCKER.search(x)]
        for path, entries in after.hardcoded.items():  # what others (a Docker engine) remove meanwhile is theirs
            before = self.hardcoded.get(path)
            if entries is not None and before is None:
                found.append(f"directory added: {path}")
            found += [f"added: {path}/{e}" for e in sorted(set(entries or ()) - set(before or ()))]
        return found


@dataclass
class RealNode:
    plane: ControlPlane
    node: Node
    kubectl: Kubectl
    before: HostSnapshot
    helm: incluster.Helm

    def pod_spec(self, **spec: Any) -> dict[str, Any]:
        """A pod spec that lands on the real node (its label and toleration)."""
        return {**placement(), "terminationGracePeriodSeconds": 2, **spec}


def _build(script: str) -> Path:
    done = subprocess.run([str(ROOT / script)], capture_output=True, text=True, check=True)
    return Path(done.stdout.strip())


@pytest.fixture(scope="session")
def real_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealNode]:
    reason = machine_reason()
    if reason:
        pytest.fail(f"this machine cannot run a real node ({reason}); the real-node tier needs one")
    other = owner()
    if other is not None:
        pytest.fail(f"a real node already runs on this machine from {other['root']}: stop it (make cluster-down)")
    before = HostSnapshot.take()
    root = tmp_path_factory.mktemp("real")
    plane = ControlPlane(root / "cp", _build("tools/controlplane/build.sh"))
    plane.up()
    node = Node(root / "node", plane, _build("tools/node/build.sh"))
    try:
        node.up()
        kubectl = Kubectl(plane.bin / "kubectl", plane.kubeconfig)
        helm = incluster.Helm(_build("tools/helm/build.sh"), root / "helm", plane.kubeconfig)
        yield RealNode(plane, node, kubectl, before, helm)
    finally:
        try:
            node.down()  # a failure here fails the session: what it left behind is named
        finally:
            plane.down()


@pytest.fixture(scope="session")
def lab_image(real_node: RealNode) -> images.Image:
    """Python and the lab's package: the ISH Chat services and the test's small servers run from it."""
    image = images.lab_image()
    real_node.node.import_image(image.archive)
    return image


@pytest.fixture(scope="session")
def operator_image() -> images.Image:
    """The project's Dockerfile, built once (cached by content outside the checkout)."""
    return images.operator_image()


def container_ids(kubectl: Kubectl, namespace: str, selector: str) -> dict[str, str]:
    """Pod name -> its first container's id, for the Running pods the selector picks."""
    pods = json.loads(kubectl("get", "pods", "-n", namespace, "-l", selector, "-o", "json").stdout)["items"]
    found = {}
    for pod in pods:
        statuses = pod.get("status", {}).get("containerStatuses") or []
        if pod["metadata"].get("deletionTimestamp") or not statuses or not statuses[0].get("containerID"):
            continue
        if "running" in (statuses[0].get("state") or {}):
            found[pod["metadata"]["name"]] = statuses[0]["containerID"]
    return found


def rolled_out(kubectl: Kubectl, namespace: str, deployment: str, timeout: float = 120) -> None:
    kubectl("rollout", "status", f"deployment/{deployment}", "-n", namespace, f"--timeout={int(timeout)}s")


def wait_ids_change(kubectl: Kubectl, namespace: str, selector: str, old: dict[str, str], count: int) -> dict[str, str]:
    """Wait until ``count`` Running containers, none of them one of ``old``; return them."""

    def fresh() -> dict[str, str] | None:
        now = container_ids(kubectl, namespace, selector)
        if len(now) == count and not set(now.values()) & set(old.values()):
            return now
        return None

    result: dict[str, str] = wait_for(fresh, 120, f"{count} new containers for {selector}", every=0.5)
    return result
