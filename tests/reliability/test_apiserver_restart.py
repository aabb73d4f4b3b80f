"""kube-apiserver and etcd go away mid-run and come back: the operator reconnects by itself.

A control plane of its own (not the session's), with its own operator under the
ServiceAccount from manifests/. Steps are held running by shut gates; the API server and
etcd are stopped, the steps finish during the outage (their status writes fail and are
retried), both come back on the same ports and data, and every incident finishes, including
one created after the restart (so the watch really reconnected). Nothing is left open.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runbook_lab.controlplane import ControlPlane
from tests.fixtures.cluster import ROOT, Kubectl
from tests.fixtures.common import wait_for
from tests.fixtures.operator import OperatorProcess, service_account_kubeconfig
from tests.reliability.conftest import GateServer, conditions, incident, policy, statuses, step

OUTAGE = 8.0  # seconds without an API server: longer than the reconciler's 5 s retry of a failed write


@pytest.fixture
def own_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ControlPlane, Kubectl]]:
    build = subprocess.run([str(ROOT / "tools/controlplane/build.sh")], capture_output=True, text=True, check=True)
    plane = ControlPlane(tmp_path_factory.mktemp("restart-plane"), Path(build.stdout.strip()))
    plane.up()
    try:
        kubectl = Kubectl(plane.bin / "kubectl", plane.kubeconfig)
        kubectl("apply", "-k", str(ROOT / "manifests"))
        kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
        yield plane, kubectl
    finally:
        plane.down()


def test_the_operator_rides_out_an_api_server_and_etcd_restart(
    own_plane: tuple[ControlPlane, Kubectl], gates: GateServer, tmp_path: Path
) -> None:
    plane, kubectl = own_plane
    operator = OperatorProcess(service_account_kubeconfig(kubectl, tmp_path / "kubeconfig"), tmp_path / "operator.log")
    operator.start()
    try:
        namespace = "restart"
        kubectl("create", "namespace", namespace)
        gates.shut("fix")
        kubectl.apply(policy("p", namespace,
            remediate=[step("fix", "http.request", timeout="60s", **{"with": {"url": f"{gates.url}/gate/fix"}})],
            verify=[step("fixed", "http.check", **{"with": {"url": f"{gates.url}/done/fix"}})]))  # fmt: skip
        names = [f"before-{i}" for i in range(3)]
        kubectl.apply(*(incident(n, namespace, "p") for n in names))
        wait_for(lambda: gates.waiting["fix"] == 3, 60, "three steps running")

        plane.stop_component("kube-apiserver")
        plane.stop_component("etcd")
        down_at = time.monotonic()
        gates.open("fix")  # the steps finish while nothing can be written
        wait_for(lambda: gates.waiting["fix"] == 0, 10, "the held steps to finish")
        alive_during = []
        while time.monotonic() - down_at < OUTAGE:
            alive_during.append(operator.alive())
            time.sleep(0.5)
        plane.start_component("etcd")
        plane.start_component("kube-apiserver")
        back_at = time.monotonic()

        kubectl.apply(incident("after", namespace, "p"))
        wait_for(
            lambda: (
                all(s.get("phase") == "Resolved" for s in statuses(kubectl, namespace).values())
                and len(statuses(kubectl, namespace)) == 4
            ),
            90,
            "all four incidents resolved after the restart",
        )
        recovered = time.monotonic() - back_at
        now = statuses(kubectl, namespace)
        for name in [*names, "after"]:
            assert conditions(now[name])["Resolved"] == ("True", "Verified"), (name, now[name]["timeline"])
        assert gates.calls["/gate/fix"] == 4  # each incident's remediation ran once: none again after the outage
        assert operator.proc is not None and operator.proc.poll() is None, "the operator exited"
        assert all(alive_during) and operator.alive()
        metrics = operator.scrape()
        open_phases = re.findall(r'^runbook_incidents\{phase="(?!Resolved)(\w+)"\} (\S+)$', metrics, re.MULTILINE)
        assert all(float(v) == 0 for _, v in open_phases), open_phases
        assert "status write failed" in operator.log.read_text()  # the outage really hit the operator
        print(f"all four resolved {recovered:.1f}s after the API server was back ({OUTAGE:g}s outage)")
    finally:
        operator.stop()
