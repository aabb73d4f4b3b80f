"""The local control plane starts even when a port it picked is taken before a component binds it.

On a busy machine (the test session runs operators, servers and a second control plane) an
outgoing connection can take the ephemeral port ``free_port()`` just returned; the component
then exits with "address already in use". ``ControlPlane.up`` starts again on other ports.
"""

from __future__ import annotations

import itertools
import socket
import subprocess
from pathlib import Path

import pytest

from runbook_lab import controlplane
from tests.fixtures.cluster import ROOT

CONTROLLER_MANAGER_PORT = 4  # free_port()'s 4th answer: API server, etcd client, etcd peer, then this


def test_a_port_taken_before_a_component_binds_it_is_retried_elsewhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    build = subprocess.run([str(ROOT / "tools/controlplane/build.sh")], capture_output=True, text=True, check=True)
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    calls = itertools.count(1)
    real = controlplane.free_port

    def racy() -> int:  # the first start's controller-manager port is someone else's by the time it binds
        return int(taken.getsockname()[1]) if next(calls) == CONTROLLER_MANAGER_PORT else real()

    monkeypatch.setattr(controlplane, "free_port", racy)
    plane = controlplane.ControlPlane(tmp_path / "plane", Path(build.stdout.strip()))
    try:
        plane.up()
        assert plane.running()
        log = (tmp_path / "plane" / "logs" / "kube-controller-manager.log").read_text()
        assert "address already in use" in log  # the first start failed that way, the second did not
    finally:
        plane.down()
        taken.close()
    assert not plane.running()
