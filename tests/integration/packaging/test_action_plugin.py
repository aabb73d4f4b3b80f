"""The plug-in example of docs/actions.md, installed with pip as a package and run through the executor.

The files are taken from the page itself (each block that follows a line "`NAME`:"),
so the documentation cannot drift from what works.
"""

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from runbook_operator.actions import StepResult
from runbook_operator.actions.catalog import default_registry
from runbook_operator.actions.registry import Registry
from runbook_operator.domain.lifecycle import StepCall
from runbook_operator.domain.model import Stage, Step
from runbook_operator.engine.executor import Executor
from tests.unit.builders import incident

PAGE = Path(__file__).resolve().parents[3] / "docs/actions.md"
FILE_BLOCK = re.compile(r"^`([\w.-]+)`:\n\n```\w+\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def example_files() -> dict[str, str]:
    section = PAGE.read_text().partition("\n## Write your own action\n")[2]
    return dict(FILE_BLOCK.findall(section))


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The example as pip installs it: a distribution whose entry point importlib.metadata finds."""
    root = tmp_path_factory.mktemp("plugin")
    source, site = root / "acme-actions", root / "site"
    source.mkdir()
    for name, text in example_files().items():
        (source / name).write_text(text)
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "--target", str(site), str(source)],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    yield site
    sys.modules.pop("acme_actions", None)


@pytest.fixture
def registry(installed: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Registry]:
    monkeypatch.syspath_prepend(str(installed))
    yield default_registry()
    sys.modules.pop("acme_actions", None)


def test_the_page_shows_a_complete_package() -> None:
    assert set(example_files()) == {"pyproject.toml", "acme_actions.py"}


async def run(registry: Registry, params: dict[str, object]) -> StepResult:
    step = Step("disk", Stage.DIAGNOSE, "acme.diskFree", params)
    return await Executor(registry).run(incident(), StepCall(step, 1, params))


async def test_the_installed_example_is_in_the_catalog_checked_and_run(registry: Registry, tmp_path: Path) -> None:
    action = registry.get("acme.diskFree")
    assert action.read_only and not action.destructive
    assert registry.check("acme.diskFree", {"path": "/", "minFree": 0.2}).read_only
    with pytest.raises(ValueError, match="minFree: Input should be less than 1"):
        registry.check("acme.diskFree", {"path": "/", "minFree": 2})

    ok = await run(registry, {"path": str(tmp_path), "minFree": 0.0001})
    assert ok.ok and ok.message.startswith(f"disk {tmp_path}: ") and ok.message.endswith("% free"), ok.message
    assert set(ok.output) == {"free", "freeBytes", "totalBytes"}

    missing = await run(registry, {"path": str(tmp_path / "nowhere")})
    assert missing == StepResult(False, f"disk {tmp_path / 'nowhere'}: No such file or directory")
