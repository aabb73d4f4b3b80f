"""The e2e tier runs against the session's operator (tests/fixtures/operator.py) on the shared control plane."""

from __future__ import annotations

from tests.fixtures.cluster import ROOT, Kubectl
from tests.fixtures.common import wait_for
from tests.fixtures.operator import SA, OperatorProcess

__all__ = ["ROOT", "SA", "Kubectl", "OperatorProcess", "wait_for"]
