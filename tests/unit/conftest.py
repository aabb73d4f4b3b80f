"""Fixtures the unit tests share, and the tier's wall: no connection leaves loopback."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from runbook_lab.demo import DemoService


@pytest.fixture
def service() -> Iterator[DemoService]:
    """A DemoService that comes back at once after a restart."""
    svc = DemoService(restart_seconds=0).start()
    yield svc
    svc.stop()


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """A unit test that connects anywhere but loopback fails, naming where: the tier needs no
    network, no package index and no server but its own in-process fakes."""
    connect = socket.socket.connect

    def guarded(sock: socket.socket, address: Any) -> None:
        if isinstance(address, tuple) and not _loopback(str(address[0])):
            raise AssertionError(f"a unit test connected to {address[0]}:{address[1]}, off loopback")
        connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return host == "localhost"
