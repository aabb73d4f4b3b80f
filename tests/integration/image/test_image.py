"""The Dockerfile builds, offline, an image that runs the operator read-only as uid 65532.

The image is built once for the module by :func:`runbook_lab.images.operator_image`, on a
base made from this machine's Python (see conftest.py), with ``--network none`` and the
wheels from the build context; a second call is a cache hit that starts nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest

from runbook_lab import images
from runbook_lab.dockerd import DockerCli
from runbook_lab.images import Image, operator_image
from runbook_operator import __version__
from tests.integration.image.conftest import ROOT

SIZE_LIMIT_MB = 400
ACTION_FAMILIES = ("http", "kubernetes", "docker", "prometheus", "postgres", "redis", "alertmanager", "notify")


@pytest.fixture(scope="module")
def image(operator_build: Image) -> str:
    return operator_build.ref


def run(docker_cli: DockerCli, image: str, *args: str, entrypoint: str | None = None, user: str | None = None) -> str:
    """`docker run` the image as the Deployment does: read-only root filesystem, no capabilities, no network."""
    flags = ["--rm", "--read-only", "--network", "none", "--cap-drop", "ALL", "--security-opt", "no-new-privileges"]
    if entrypoint is not None:
        flags += ["--entrypoint", entrypoint]
    if user is not None:
        flags += ["--user", user]
    return docker_cli("run", *flags, image, *args).stdout


def inspect(docker_cli: DockerCli, image: str) -> dict[str, Any]:
    return dict(json.loads(docker_cli("image", "inspect", image).stdout)[0])


def test_prints_its_version(docker_cli: DockerCli, image: str) -> None:
    version = __version__
    out = docker_cli("run", "--rm", "--read-only", "--network", "none", "--user", "65532", image, "--version").stdout
    assert out.strip() == f"runbook-operator {version}"


def test_lists_the_action_catalog(docker_cli: DockerCli, image: str) -> None:
    out = docker_cli("run", "--rm", "--read-only", "--network", "none", "--user", "65532", image, "actions").stdout
    families = {line.split(".", 1)[0] for line in out.splitlines() if line and not line[0].isspace()}
    assert families == set(ACTION_FAMILIES), out
    assert "redis.deleteByPattern [destructive]" in out
    assert "http.check [read-only]" in out


def test_imports_the_operator_read_only(docker_cli: DockerCli, image: str) -> None:
    """What `run` loads before it talks to a cluster (Kopf, the Kubernetes client) imports without writing."""
    out = run(
        docker_cli, image, "-c", "import runbook_operator.entrypoints.handlers, kopf; print('ok')", entrypoint="python3"
    )
    assert out.strip() == "ok"


def test_runs_as_uid_65532(docker_cli: DockerCli, image: str) -> None:
    assert run(docker_cli, image, "-u", entrypoint="id").strip() == "65532"
    assert run(docker_cli, image, "-g", entrypoint="id").strip() == "65532"
    config = inspect(docker_cli, image)["Config"]
    assert config["User"] == "65532:65532"


def test_runs_the_operator_by_default(docker_cli: DockerCli, image: str) -> None:
    config = inspect(docker_cli, image)["Config"]
    assert config["Entrypoint"] == ["runbook-operator"]
    assert config["Cmd"] == ["run", "--all-namespaces", "--liveness=http://0.0.0.0:8080/healthz"]
    assert set(config["ExposedPorts"]) == {"8080/tcp"}
    assert "PYTHONDONTWRITEBYTECODE=1" in config["Env"]


def test_has_no_compiler_wheels_or_pip_cache(docker_cli: DockerCli, image: str) -> None:
    compilers = "for tool in gcc cc c++ g++ clang make ld as; do command -v $tool || true; done"
    assert run(docker_cli, image, "-c", compilers, entrypoint="sh").split() == []
    leftovers = "find / -xdev \\( -path '*/.cache/pip' -o -name '*.whl' -o -path /wheels -o -path /src \\) -print"
    # as root, to see into every directory (the operator never runs so)
    assert run(docker_cli, image, "-c", leftovers, entrypoint="sh", user="0").split() == []
    tools = run(docker_cli, image, "/opt/venv/bin", entrypoint="ls").split()
    assert "runbook-operator" in tools
    assert not {"pip", "pip3"} & set(tools), tools


def test_size(docker_cli: DockerCli, image: str, capsys: pytest.CaptureFixture[str]) -> None:
    size_mb = inspect(docker_cli, image)["Size"] / 1e6
    with capsys.disabled():
        print(f"\n{image}: {size_mb:.1f} MB")
    assert size_mb < SIZE_LIMIT_MB


def test_is_named_for_the_chart_with_the_key_in_its_tag(operator_build: Image) -> None:
    version = __version__
    key = images.operator_key(ROOT)
    assert operator_build.ref == f"runbook-operator:{version}-{key[:12]}"
    assert (operator_build.repository, operator_build.tag) == ("runbook-operator", f"{version}-{key[:12]}")
    assert operator_build.archive.name == f"runbook-operator-{key}.tar"
    with tarfile.open(operator_build.archive) as archive:  # `docker save`: what ctr images import reads too
        manifest = json.load(archive.extractfile("manifest.json"))  # type: ignore[arg-type]
    assert manifest[0]["RepoTags"] == [operator_build.ref]


def test_a_second_call_is_a_cache_hit_that_starts_nothing(
    operator_build: Image, image_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_process(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"a cache hit started a process: {args}")

    monkeypatch.setattr(subprocess, "Popen", no_process)  # dockerd, docker, pip, ldd: nothing
    started = time.monotonic()
    again = operator_image(image_cache)
    elapsed = time.monotonic() - started
    assert again == operator_build
    assert elapsed < 1.0, f"a cache hit took {elapsed:.2f}s"


def test_the_command_line_prints_ref_and_archive(operator_build: Image, image_cache: Path) -> None:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "runbook_lab.images", "operator", "--cache", str(image_cache)],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert done.stdout == f"{operator_build.ref} {operator_build.archive}\n"
    assert time.monotonic() - started < 10
