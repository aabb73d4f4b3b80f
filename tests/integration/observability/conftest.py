"""Real servers for the prometheus.* and docker.* actions, started once per session.

* Prometheus (Debian's /usr/bin/prometheus) scraping a tiny exporter this module serves
  from a thread, every second, on free loopback ports.
* A Docker engine: the host's /var/run/docker.sock when it answers, else a private
  dockerd with its own socket, data and exec roots (no bridge, no iptables: the test
  containers run with ``network_mode="none"``), and a busybox image imported from the
  host's static busybox (no registry needed).

Each server is stopped by its own pid at the end and its temporary directory removed.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import math
import os
import shutil
import subprocess
import tarfile
import tempfile
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from runbook_lab.controlplane import free_port
from runbook_lab.served import QuietHandler, Served
from runbook_lab.services import Prometheus
from runbook_operator.actions import ActionContext
from runbook_operator.domain.results import StepResult
from runbook_operator.engine.executor import run_action
from tests.fixtures.common import wait_for
from tests.fixtures.dockerd import docker_host
from tests.unit.builders import REGISTRY

BUSYBOX = Path("/bin/busybox")
IMAGE = "local/busybox:1"


async def run(name: str, params: dict[str, Any], timeout: float = 10.0) -> StepResult:
    """Run an action as the executor does: parameters parsed by the registry, a bounded context."""
    return await run_action(
        REGISTRY.get(name), REGISTRY.parse(name, params), ActionContext("ns", "inc", timeout=timeout)
    )


# -- ports -------------------------------------------------------------------------------------------------


# -- the exporter Prometheus scrapes ------------------------------------------------------------------------


class Exporter(Served):
    """ISH Chat's metrics, some fixed, some the tests change; counters grow at every scrape."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.scrapes = 0
        self.flaky_errors_per_scrape = 0  # ish_chat_requests_total{status="500",provider_type="flaky"} growth
        self.flaky_errors = 0
        self.healthy = {"openai": 3.0, "anthropic": 1.0}  # ish_chat_instances_healthy, a gauge tests may set
        self.requests = 0
        self.buckets = {"0.1": 0, "0.5": 0, "1": 0, "2.5": 0, "+Inf": 0}
        super().__init__(self._handler())

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        exporter = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                if self.path != "/metrics":
                    self.send_error(404, "no such page")
                    return
                body = exporter.scrape().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler

    def scrape(self) -> str:
        with self.lock:
            self.scrapes += 1
            # ten requests a scrape: 8 fast, 1 at ~0.8s, 1 at ~2s -> p95 interpolates to 1.75s
            self.requests += 10
            for le, add in (("0.1", 8), ("0.5", 8), ("1", 9), ("2.5", 10), ("+Inf", 10)):
                self.buckets[le] += add
            self.flaky_errors += self.flaky_errors_per_scrape
            lines = [
                "# TYPE ish_chat_request_duration_seconds histogram",
                *(
                    f'ish_chat_request_duration_seconds_bucket{{provider_type="openai",le="{le}"}} {n}'
                    for le, n in self.buckets.items()
                ),
                f'ish_chat_request_duration_seconds_count{{provider_type="openai"}} {self.requests}',
                f'ish_chat_request_duration_seconds_sum{{provider_type="openai"}} {self.requests * 0.3:.1f}',
                "# TYPE ish_chat_requests_total counter",
                f'ish_chat_requests_total{{status="200",provider_type="openai"}} {self.requests}',
                'ish_chat_requests_total{status="500",provider_type="openai"} 0',
                f'ish_chat_requests_total{{status="500",provider_type="flaky"}} {self.flaky_errors}',
                "# TYPE ish_chat_instances_healthy gauge",
                *(f'ish_chat_instances_healthy{{provider_type="{p}"}} {v}' for p, v in self.healthy.items()),
                "# TYPE ish_chat_error_ratio gauge",
                'ish_chat_error_ratio{provider_type="openai"} 0.02',
                f'ish_chat_error_ratio{{provider_type="idle"}} {math.nan}',  # 0/0: no traffic
                "# TYPE ish_chat_scrapes gauge",
                f"ish_chat_scrapes {self.scrapes}",
            ]
        return "\n".join(lines) + "\n"


@dataclass
class PrometheusServer:
    server: Prometheus  # the lab's Prometheus process (runbook_lab.services)
    exporter: Exporter

    @property
    def url(self) -> str:
        return self.server.url

    def query(self, promql: str) -> list[dict[str, Any]]:
        """What Prometheus answers now (for waiting on a scrape; the tests check the actions)."""
        return self.server.query(promql)

    def value(self, promql: str) -> float | None:
        result = self.query(promql)
        return float(result[0]["value"][1]) if result else None


@pytest.fixture(scope="session")
def prometheus() -> Iterator[PrometheusServer]:
    exporter = Exporter().start()
    workdir = Path(tempfile.mkdtemp(prefix="obs-prometheus-"))
    server = Prometheus(workdir, "127.0.0.1", free_port())
    server.config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n"
        "  - job_name: ish-chat\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{exporter.port}']\n"
    )
    prometheus = PrometheusServer(server, exporter)
    try:
        server.start(30)
        # three scrapes, so rate() over a short window has points to work with
        wait_for(
            lambda: (prometheus.value("ish_chat_scrapes") or 0) >= 3, 30, "the first scrapes", ignoring=(Exception,)
        )
        yield prometheus
    finally:
        server.stop()
        exporter.stop()
        shutil.rmtree(workdir, ignore_errors=True)


# -- the Docker engine --------------------------------------------------------------------------------------


@dataclass
class DockerEngine:
    host: str
    client: Any
    label: str  # every object the tests make carries it, so a prune only ever touches those
    own_daemon: bool
    made: list[str] = field(default_factory=list)
    _names: Iterator[int] = field(default_factory=itertools.count)

    def name(self, stem: str) -> str:
        return f"obs-{stem}-{os.getpid()}-{next(self._names)}"

    def run(self, stem: str, script: str, labelled: bool = True, **kwargs: Any) -> Any:
        """A busybox container running `sh -c script`, detached, without a network."""
        labels = {self.label: "1"} if labelled else {}
        container = self.client.containers.run(
            IMAGE,
            ["sh", "-c", script],
            name=self.name(stem),
            detach=True,
            network_mode="none",
            labels=labels,
            **kwargs,
        )
        self.made.append(container.id)
        return container

    def attrs(self, name: str) -> dict[str, Any]:
        return dict(self.client.containers.get(name).attrs)

    def remove_all(self) -> None:
        for cid in self.made:
            with contextlib.suppress(docker.errors.NotFound):
                self.client.api.remove_container(cid, force=True)
        self.made.clear()


def _answers(host: str) -> bool:
    try:
        client = docker.DockerClient(base_url=host, timeout=3)
    except docker.errors.DockerException:
        return False
    try:
        return bool(client.ping())
    except Exception:
        return False
    finally:
        client.close()


def _busybox_tar() -> bytes:
    """A root filesystem holding the host's static busybox, its applets and /bin/sh."""
    applets = subprocess.run([str(BUSYBOX), "--list"], capture_output=True, text=True, check=True).stdout.split()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for directory in ("bin", "tmp", "proc", "sys", "dev", "etc"):
            info = tarfile.TarInfo(directory)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if directory == "tmp" else 0o755
            tar.addfile(info)
        tar.add(str(BUSYBOX), arcname="bin/busybox")
        for applet in {*applets, "sh"} - {"busybox"}:
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type, link.linkname, link.mode = tarfile.SYMTYPE, "busybox", 0o777
            tar.addfile(link)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[DockerEngine]:
    label = f"runbook-operator-test-{uuid.uuid4().hex[:8]}"
    with docker_host(_answers, "obs-docker-") as (host, own):
        client = docker.DockerClient(base_url=host, timeout=60)
        try:
            client.api.import_image_from_data(_busybox_tar(), repository=IMAGE.split(":")[0], tag=IMAGE.split(":")[1])
            engine = DockerEngine(host, client, label, own_daemon=own)
            try:
                yield engine
            finally:
                engine.remove_all()
        finally:
            client.close()


@pytest.fixture
def engine(docker_engine: DockerEngine) -> Iterator[DockerEngine]:
    """The session's engine; the containers a test makes are removed after it."""
    yield docker_engine
    docker_engine.remove_all()
