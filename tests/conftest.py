"""Fixtures shared by the test tiers, and each test marked with its tier (its folder).

``pytest -m unit`` (or ``make test-unit``) runs one tier; pyproject.toml says what each starts.
"""

import pytest

pytest_plugins = [
    "tests.fixtures.common",
    "tests.fixtures.cluster",
    "tests.fixtures.operator",
    "tests.fixtures.alertmanager",
]


TIERS = ("unit", "integration", "e2e", "node", "reliability")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        tier = item.path.relative_to(item.config.rootpath / "tests").parts[0]
        if tier in TIERS:
            item.add_marker(getattr(pytest.mark, tier))
