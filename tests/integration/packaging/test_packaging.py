"""What ships: the operator's wheel holds the operator and nothing of the lab; its CLI has no lab commands.

The wheel is built once for the module, with pip and build isolation (setuptools from the
package index), from a copy of the checkout without the virtualenv, caches and build
leftovers: a stale ``build/lib`` in the checkout would otherwise end up in the wheel.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pytest

ROOT = Path(__file__).resolve().parents[3]
BIN = Path(sys.executable).parent
# generated or local-only: never an input of the wheel
NOT_SOURCES = (".git", ".venv", ".cluster", ".lab", "build", "dist", "wheels", "*.egg-info", "__pycache__", ".*_cache")
NOT_SOURCES += (".hypothesis",)
# the lab's modules (lab/runbook_lab/): process managers, the simulator, the demo service, the scenarios
LAB_MODULES = {
    "controlplane",
    "services",
    "kubelet",
    "ishchat",
    "demo",
    "lab",
    "scenarios",
    "speed",
    "commands",
    "node",
    "incluster",
    "images",
    "dockerd",
    "workload",
}
LAB_COMMANDS = {"lab", "demo", "demo-server"}


@dataclass(frozen=True)
class Wheel:
    files: list[str]
    entry_points: str  # the dist-info's entry_points.txt: the console scripts pip installs
    sources: dict[str, str]  # every .py file's text


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Wheel:
    work = tmp_path_factory.mktemp("wheel")
    source, out = work / "src", work / "out"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*NOT_SOURCES), symlinks=True)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"pip wheel exited {done.returncode}:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
    (built,) = out.glob("runbook_operator-*.whl")
    with zipfile.ZipFile(built) as archive:
        files = archive.namelist()
        (entry_points,) = [name for name in files if name.endswith(".dist-info/entry_points.txt")]
        wheel = Wheel(
            files,
            archive.read(entry_points).decode(),
            {name: archive.read(name).decode() for name in files if name.endswith(".py")},
        )
    shutil.rmtree(work, ignore_errors=True)
    return wheel


def test_the_wheel_holds_only_the_operator_package(wheel: Wheel) -> None:
    tops = {PurePosixPath(name).parts[0] for name in wheel.files}
    assert {top for top in tops if not top.endswith(".dist-info")} == {"runbook_operator"}, sorted(tops)
    for module in ("__init__.py", "__main__.py", "entrypoints/cli/__init__.py", "entrypoints/handlers.py", "py.typed"):
        assert f"runbook_operator/{module}" in wheel.files, module
    assert any(name.startswith("runbook_operator/actions/") for name in wheel.files)
    assert any(name.startswith("runbook_operator/engine/") for name in wheel.files)


def test_the_wheel_has_no_lab(wheel: Wheel) -> None:
    assert not [name for name in wheel.files if "runbook_lab" in name or "/lab/" in name]
    modules = {PurePosixPath(name).stem for name in wheel.sources}
    assert not modules & LAB_MODULES, sorted(modules & LAB_MODULES)
    assert not [name for name, text in wheel.sources.items() if "runbook_lab" in text]


def test_the_wheel_installs_only_the_operator_commands(wheel: Wheel) -> None:
    scripts = re.findall(r"^([\w-]+)\s*=", wheel.entry_points.partition("[console_scripts]")[2], re.M)
    assert set(scripts) == {"runbook-operator", "kubectl-runbook"}, wheel.entry_points


def _commands(help_text: str) -> set[str]:
    """The subcommands in an argparse usage line: ``{run,stats,...}``."""
    match = re.search(r"\{([\w,-]+)\}", help_text)
    assert match, help_text
    return set(match.group(1).split(","))


def test_the_operator_cli_has_no_lab_commands() -> None:
    done = subprocess.run([str(BIN / "runbook-operator"), "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    commands = _commands(done.stdout)
    assert {"run", "actions", "validate", "approve"} <= commands, commands
    assert not commands & LAB_COMMANDS, commands


def test_the_lab_commands_live_in_runbook_lab() -> None:
    done = subprocess.run([sys.executable, "-m", "runbook_lab", "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert _commands(done.stdout) == LAB_COMMANDS
