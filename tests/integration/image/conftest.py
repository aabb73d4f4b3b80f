"""A Docker engine, and the operator's image built on it as `make run` builds it (runbook_lab.images).

No image registry is reachable from the test machines, so nothing is pulled:

* The engine is the host's /var/run/docker.sock when it answers, else a private dockerd
  with its own containerd, socket, data and exec roots (no bridge, no iptables), stopped by
  its pid at the end (:func:`runbook_lab.dockerd.docker_host`). It is module-scoped: each
  module here gets its own, and ``tests/integration/observability``'s never overlaps it.
* :func:`runbook_lab.images.operator_image` builds the Dockerfile on it, offline: the base
  is this machine's Python (:func:`runbook_lab.images.python_rootfs`, loaded from an OCI
  archive), the wheels are fetched by this machine's pip, the build runs with
  ``--network none`` and ``WHEELS=prebuilt``. Its cache is a temporary directory, so every
  run builds; the second call (test_image.py) must then be a cache hit.

Temporary directories are removed; the images made are removed from the engine.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runbook_lab.dockerd import DockerCli, docker_host
from runbook_lab.images import Image, operator_image, python_base, remove_build

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def docker_cli() -> Iterator[DockerCli]:
    with docker_host(prefix="img-docker-") as (host, own):
        yield DockerCli(host, own_daemon=own)


@pytest.fixture(scope="module")
def image_cache() -> Iterator[Path]:
    """An empty image cache (the archives are hundreds of MB: removed at the end)."""
    cache = Path(tempfile.mkdtemp(prefix="img-cache-"))
    try:
        yield cache
    finally:
        shutil.rmtree(cache, ignore_errors=True)


@pytest.fixture(scope="module")
def operator_build(docker_cli: DockerCli, image_cache: Path) -> Iterator[Image]:
    """The operator's image, built (a miss in an empty cache) on the module's engine, where it stays for the tests."""
    started = time.monotonic()
    built = operator_image(image_cache, docker=docker_cli)
    print(f"image built in {time.monotonic() - started:.1f}s")
    try:
        yield built
    finally:
        remove_build(docker_cli, built.ref, python_base(image_cache).ref)
