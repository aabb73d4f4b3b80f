"""The import-linter contracts in .importlinter (run by `make lint`): kept today, and each
one fails when a change breaks it. The broken imports go into a copy of the package."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint(package_root: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    shutil.copy(ROOT / ".importlinter", cwd / ".importlinter")
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=cwd,
        env={"PYTHONPATH": str(package_root), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_product_keeps_every_contract(tmp_path: Path) -> None:
    result = lint(ROOT / "operator", tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 6 kept, 0 broken." in result.stdout


LAYERS = "The layers, each importing only those below it"


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("domain/lifecycle/decide.py", "from runbook_operator.actions import api", LAYERS),  # the core reaches up
        (
            "domain/lifecycle/records.py",
            "from runbook_operator.domain.lifecycle import decide",
            "The state machine's modules",
        ),
        ("actions/http.py", "from runbook_operator.adapters import metrics", LAYERS),
        ("adapters/kube.py", "from runbook_operator.engine import executor", LAYERS),
        ("engine/executor.py", "from runbook_operator.entrypoints import cli", LAYERS),
        ("engine/reconciler.py", "from runbook_operator.gitops import plan", LAYERS),  # siblings, independent
        ("gitops/plan.py", "from runbook_operator.engine import reconciler", LAYERS),
        ("stray.py", "from runbook_operator.domain import model", LAYERS),  # a module in no layer
        ("domain/model.py", "import httpx", "The domain (state machine, model, status, consent)"),
        ("adapters/archive.py", "import kopf", "Only the handlers (and the command that starts them) import Kopf"),
        (
            "adapters/intake.py",
            "import kubernetes",
            "Only the Kube adapter (adapters.kube) and the kubernetes.* actions",
        ),
        ("gitops", "import runbook_lab", "Nothing in the product imports the lab"),
    ],
)
def test_a_broken_layer_fails_the_lint(tmp_path: Path, module: str, line: str, contract: str) -> None:
    copy = tmp_path / "src"
    shutil.copytree(
        ROOT / "operator" / "runbook_operator", copy / "runbook_operator", ignore=shutil.ignore_patterns("__pycache__")
    )
    target = copy / "runbook_operator" / module
    if target.is_dir():
        target = target / "__init__.py"
    text = target.read_text() if target.exists() else ""
    target.write_text(text + f"\n{line}\n")
    result = lint(copy, tmp_path)
    assert result.returncode == 1, result.stdout
    broken = result.stdout.split("Broken contracts")[1]
    assert contract in " ".join(broken.split()), result.stdout
    assert "Contracts: 5 kept, 1 broken." in result.stdout
