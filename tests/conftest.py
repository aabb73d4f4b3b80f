"""Fixtures shared by the test tiers."""

pytest_plugins = ["tests.fixtures.cluster"]
