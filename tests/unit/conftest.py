"""Fixtures the unit tests share."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from runbook_lab.demo import DemoService


@pytest.fixture
def service() -> Iterator[DemoService]:
    """A DemoService that comes back at once after a restart."""
    svc = DemoService(restart_seconds=0).start()
    yield svc
    svc.stop()
