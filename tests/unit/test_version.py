"""One version: ``runbook_operator.__version__``. The package reads it (pyproject's dynamic
version), the image is tagged from it; the chart, the manifests and the install docs repeat it,
and ``tools/version.sh`` rewrites them all."""

import re
from pathlib import Path

import yaml

from runbook_operator import __version__

ROOT = Path(__file__).resolve().parents[2]
REPEATED = ("manifests/deployment.yaml", "Dockerfile", "docs/install.md")


def test_the_chart_is_the_packages_version() -> None:
    chart = yaml.safe_load((ROOT / "charts/runbook-operator/Chart.yaml").read_text())
    assert (chart["version"], chart["appVersion"]) == (__version__, __version__)


def test_every_image_tag_written_down_is_the_packages_version() -> None:
    for path in REPEATED:
        tags = set(re.findall(r"runbook-operator:([0-9][0-9A-Za-z.+-]*[0-9A-Za-z])", (ROOT / path).read_text()))
        assert tags <= {__version__}, (path, tags)
        assert tags, f"{path} names no image tag any more: drop it from REPEATED and tools/version.sh"


def test_pyproject_reads_the_version_and_does_not_write_it() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in text and 'version = {attr = "runbook_operator.__version__"}' in text
    assert not re.search(r'(?m)^version = "', text)


def test_tools_version_sh_moves_every_place_at_once(tmp_path: Path) -> None:
    import shutil
    import subprocess

    for path in ("tools/version.sh", "operator/runbook_operator/__init__.py", "charts/runbook-operator/Chart.yaml",
                 *REPEATED):  # fmt: skip
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / path, tmp_path / path)
    subprocess.run(["bash", str(tmp_path / "tools/version.sh"), "9.8.7"], check=True, capture_output=True)
    init = (tmp_path / "operator/runbook_operator/__init__.py").read_text()
    assert re.search(r'^__version__ = "9\.8\.7"', init, re.M)
    chart = yaml.safe_load((tmp_path / "charts/runbook-operator/Chart.yaml").read_text())
    assert (chart["version"], chart["appVersion"]) == ("9.8.7", "9.8.7")
    for path in REPEATED:
        text = (tmp_path / path).read_text()
        assert f"runbook-operator:{__version__}" not in text and "runbook-operator:9.8.7" in text, path
