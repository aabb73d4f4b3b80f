"""`down` leaves nothing host-wide behind (last in this tier: it stops the session's node, then starts it again)."""

from __future__ import annotations

import time

from runbook_lab.node import leftovers, owner
from tests.node.conftest import HostSnapshot, RealNode


def test_down_undoes_every_host_wide_change_and_a_new_node_starts_after(real_node: RealNode) -> None:
    node = real_node.node
    started = time.monotonic()
    node.down()
    took = time.monotonic() - started
    assert leftovers(node.root, node.bin) == []
    assert real_node.before.differences(HostSnapshot.take()) == []
    assert owner() is None
    assert not node.root.exists()
    print(f"node down in {took:.1f}s")
    started = time.monotonic()
    node.up()  # the same directory, from nothing: what `make cluster` after `make cluster-down` does
    print(f"node up again in {time.monotonic() - started:.1f}s")
    assert node.running()
