"""tools/system-packages.sh: silent when everything is there, one clear line when not."""

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = ROOT / "tools" / "system-packages.sh"


def run(path: str) -> subprocess.CompletedProcess[str]:
    bash = shutil.which("bash")
    assert bash
    return subprocess.run([bash, str(SCRIPT)], env={"PATH": path}, capture_output=True, text=True, timeout=30)


def test_nothing_to_do_prints_nothing() -> None:
    # the machine running the tests has everything (.ci/run installed it)
    result = run(os.environ["PATH"])
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_without_a_package_manager_names_what_is_missing_in_one_line(tmp_path: Path) -> None:
    # a PATH with only the shell tools the script uses: no servers, no Go, no apt-get
    for tool in ("sort", "id", "uname", "head"):
        found = shutil.which(tool)
        assert found
        (tmp_path / tool).symlink_to(found)
    result = run(str(tmp_path))
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    for name in ("redis-server", "prometheus", "prometheus-alertmanager", "docker.io", "Go >= 1.25"):
        assert name in lines[0]
    assert lines[0].startswith("missing: ")
