"""Fixtures shared by the test tiers."""

pytest_plugins = ["tests.fixtures.common", "tests.fixtures.cluster", "tests.fixtures.operator"]
