"""docker.* against a real Docker engine running busybox containers without a network (conftest.py)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
import tarfile
from collections.abc import Callable
from typing import Any, TypeVar

import docker.errors
import pytest

from runbook_operator.actions import ActionContext
from runbook_operator.actions.docker import cpu_percent, memory_use
from runbook_operator.domain.lifecycle import OUTPUT_LIMIT
from tests.fixtures.common import wait_for
from tests.fixtures.listeners import Listener
from tests.integration.observability.conftest import IMAGE, DockerEngine, run
from tests.unit.builders import REGISTRY

T = TypeVar("T")
TICKER = "echo started; trap 'exit 0' TERM; while true; do echo tick; sleep 1 & wait $!; done"
STUBBORN = "echo started; while true; do sleep 1; done"  # PID 1 without a TERM handler: ignores `docker stop`


def state(engine: DockerEngine, name: str) -> dict[str, Any]:
    return dict(engine.attrs(name)["State"])


def logged(engine: DockerEngine, name: str, text: str) -> bool:
    return text in engine.client.containers.get(name).logs().decode()


def started(engine: DockerEngine, script: str = TICKER, **kwargs: Any) -> str:
    container = engine.run("c", script, **kwargs)
    wait_for(lambda: logged(engine, container.name, "started"), 15, f"{container.name} to start")
    return str(container.name)


def exited(engine: DockerEngine, script: str = "echo bye; exit 3", labelled: bool = True) -> str:
    container = engine.run("x", script, labelled=labelled)
    wait_for(lambda: state(engine, container.name)["Status"] == "exited", 15, f"{container.name} to exit")
    return str(container.name)


NO_ENGINE = "unix:///nonexistent/runbook-operator/docker.sock"  # the engine is down: its socket is gone


# -- docker.status ----------------------------------------------------------------------------------------


async def test_status_of_a_running_container(engine: DockerEngine) -> None:
    name = started(engine)
    result = await run("docker.status", {"host": engine.host, "container": name})
    assert result.ok, result.message
    assert result.output["state"] == "running" and result.output["health"] is None
    assert result.output["restartCount"] == 0
    assert result.output["startedAt"] == state(engine, name)["StartedAt"]
    assert result.message.startswith(f"container {name} is running since ")


async def test_status_of_a_healthy_container(engine: DockerEngine) -> None:
    name = started(engine, healthcheck={"test": ["CMD-SHELL", "true"], "interval": 200_000_000, "retries": 1})
    wait_for(lambda: state(engine, name)["Health"]["Status"] == "healthy", 15, "the healthcheck to pass")
    result = await run("docker.status", {"host": engine.host, "container": name})
    assert result.ok, result.message
    assert result.output["health"] == "healthy"
    assert f"container {name} is running, healthy since" in result.message


async def test_status_of_an_unhealthy_container(engine: DockerEngine) -> None:
    check = {"test": ["CMD-SHELL", "echo backend unreachable; exit 1"], "interval": 200_000_000, "retries": 1}
    name = started(engine, healthcheck=check)
    wait_for(lambda: state(engine, name)["Health"]["Status"] == "unhealthy", 15, "the healthcheck to fail")
    result = await run("docker.status", {"host": engine.host, "container": name})
    assert not result.ok
    assert result.output["state"] == "running" and result.output["health"] == "unhealthy"
    assert re.match(
        rf"container {name} is running but unhealthy \(failing streak \d+\); last check exited 1: backend unreachable$",
        result.message,
    ), result.message


async def test_status_of_a_stopped_container(engine: DockerEngine) -> None:
    name = exited(engine)
    result = await run("docker.status", {"host": engine.host, "container": name})
    assert not result.ok
    assert result.message == f"container {name} is exited (exit code 3)"
    assert result.output["exitCode"] == 3


async def test_status_of_a_missing_container(engine: DockerEngine) -> None:
    result = await run("docker.status", {"host": engine.host, "container": "ish-chat-nowhere"})
    assert not result.ok
    assert result.message == f"docker.status ish-chat-nowhere: no such container 'ish-chat-nowhere' on {engine.host}"


async def test_status_with_the_engine_down(engine: DockerEngine) -> None:
    host = NO_ENGINE
    result = await run("docker.status", {"host": host, "container": "api"})
    assert not result.ok
    assert result.message == f"docker.status api: cannot reach the docker engine at {host}: No such file or directory"


async def test_status_engine_refusing_tcp(closed_port: int) -> None:
    result = await run("docker.status", {"host": f"tcp://127.0.0.1:{closed_port}", "container": "api"})
    assert not result.ok
    assert result.message == (
        f"docker.status api: cannot reach the docker engine at tcp://127.0.0.1:{closed_port}: Connection refused"
    )


async def test_status_timeout(silent_port: int) -> None:
    host = f"tcp://127.0.0.1:{silent_port}"
    result = await run("docker.status", {"host": host, "container": "api"}, timeout=0.5)
    assert not result.ok
    assert result.message == f"docker.status api: docker engine at {host} gave no answer within 0.5s"


async def test_a_metadata_address_is_refused_before_connecting() -> None:
    result = await run("docker.status", {"host": "tcp://169.254.169.254:2375", "container": "api"}, timeout=2.0)
    assert not result.ok
    assert result.message == (
        "docker.status api: 169.254.169.254 is a link-local or cloud metadata address: refused "
        "(start the operator with --allow-link-local to allow it)"
    )


async def test_an_answer_that_is_not_the_engine_s_is_not_quoted() -> None:
    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY"
    server = Listener(answer=(404, "text/plain", f"no such page; SecretAccessKey={secret}".encode())).start()
    try:
        result = await run("docker.status", {"host": server.url.replace("http://", "tcp://"), "container": "api"})
    finally:
        server.stop()
    assert not result.ok
    assert result.message == "docker.status api: docker engine error 404: an answer of text/plain, not shown"
    assert secret not in str(result)


# -- docker.restart ---------------------------------------------------------------------------------------


async def test_restart_really_restarts(engine: DockerEngine) -> None:
    name = started(engine)
    before = state(engine, name)["StartedAt"]
    result = await run("docker.restart", {"host": engine.host, "container": name, "timeout": 5})
    assert result.ok, result.message
    after = state(engine, name)
    assert after["Running"] and after["StartedAt"] != before
    assert result.output["previousStartedAt"] == before and result.output["startedAt"] == after["StartedAt"]
    assert result.message == f"restarted container {name}: running since {after['StartedAt']}"
    wait_for(lambda: engine.client.containers.get(name).logs().decode().count("started") == 2, 10, "a second start")


async def test_restart_starts_a_stopped_container(engine: DockerEngine) -> None:
    name = exited(engine, f"if [ -e /tmp/ran ]; then {TICKER}; else touch /tmp/ran; exit 1; fi")
    result = await run("docker.restart", {"host": engine.host, "container": name, "timeout": 1, "settle": "500ms"})
    assert result.ok, result.message
    assert state(engine, name)["Running"]


async def test_restart_of_a_crashing_container_fails_after_settling(engine: DockerEngine) -> None:
    name = exited(engine, "echo crash; exit 7")
    result = await run("docker.restart", {"host": engine.host, "container": name, "timeout": 1, "settle": "1s"})
    assert not result.ok
    assert result.message == f"container {name} is exited (exit code 7) 1s after the restart"
    assert result.output["startedAt"] != result.output["previousStartedAt"]
    assert logged(engine, name, "crash\ncrash")  # it did run twice


async def test_restart_of_a_missing_container(engine: DockerEngine) -> None:
    result = await run("docker.restart", {"host": engine.host, "container": "ish-chat-nowhere"})
    assert not result.ok
    assert "no such container 'ish-chat-nowhere'" in result.message


async def test_restart_timeout_while_the_container_will_not_stop(engine: DockerEngine) -> None:
    """PID 1 ignores SIGTERM: the engine waits the whole stop timeout, longer than the step may take."""
    name = started(engine, STUBBORN)
    result = await run("docker.restart", {"host": engine.host, "container": name, "timeout": 5}, timeout=1.0)
    assert not result.ok
    assert result.message == f"docker.restart {name}: docker engine at {engine.host} gave no answer within 1s"


async def test_restart_with_the_engine_down(engine: DockerEngine) -> None:
    result = await run("docker.restart", {"host": NO_ENGINE, "container": "api"})
    assert not result.ok and "cannot reach the docker engine" in result.message


# -- docker.logs ------------------------------------------------------------------------------------------


NOISY = (
    "echo started; echo 'INFO ready'; echo 'ERROR db timeout after 30s'; echo 'all good'; "
    "echo 'java.lang.NullPointerException' >&2; sleep 0.3; echo 'FATAL: out of workers'; "
    "while true; do sleep 1 & wait $!; done"
)


async def test_logs_count_error_lines(engine: DockerEngine) -> None:
    name = started(engine, NOISY)
    wait_for(lambda: logged(engine, name, "FATAL"), 10, "the last line")
    result = await run("docker.logs", {"host": engine.host, "container": name})
    assert result.ok, result.message
    assert result.output["lines"] == 6 and result.output["matches"] == 3  # stderr counts too
    assert result.output["tail"].splitlines()[-1] == "FATAL: out of workers"
    assert result.message == (
        f"container {name}: 3 of the last 6 lines match '(?i)error|exception|fatal'; last: 'FATAL: out of workers'"
    )


async def test_logs_fail_above_max_errors(engine: DockerEngine) -> None:
    name = started(engine, NOISY)
    wait_for(lambda: logged(engine, name, "FATAL"), 10, "the last line")
    result = await run("docker.logs", {"host": engine.host, "container": name, "maxErrors": 2})
    assert not result.ok
    assert "3 of the last 6 lines match" in result.message and "more than 2" in result.message
    custom = await run(
        "docker.logs", {"host": engine.host, "container": name, "errorPattern": "^ERROR ", "maxErrors": 1}
    )
    assert custom.ok and custom.output["matches"] == 1


LONG = "echo started; i=0; while [ $i -lt 300 ]; do echo \"line $i $(printf '%080d' 0)\"; i=$((i+1)); done; sleep 1000 & wait"


async def test_logs_tail_is_bounded(engine: DockerEngine) -> None:
    name = started(engine, LONG)
    wait_for(lambda: logged(engine, name, "line 299"), 10, "300 lines")
    result = await run("docker.logs", {"host": engine.host, "container": name, "tail": 250})
    assert result.ok
    assert result.output["lines"] == 250 and result.output["matches"] == 0
    tail = result.output["tail"]
    assert len(tail) <= 1800 and tail.endswith("line 299 " + "0" * 80)
    assert tail.splitlines()[0].startswith("line ")  # whole lines only
    assert sum(len(k) + len(str(v)) for k, v in result.output.items()) <= OUTPUT_LIMIT  # fits in the status
    short = await run("docker.logs", {"host": engine.host, "container": name, "tail": 2})
    assert short.output["tail"].splitlines() == ["line 298 " + "0" * 80, "line 299 " + "0" * 80]


async def test_logs_of_a_missing_container(engine: DockerEngine) -> None:
    result = await run("docker.logs", {"host": engine.host, "container": "ish-chat-nowhere"})
    assert not result.ok and "no such container 'ish-chat-nowhere'" in result.message


async def test_logs_with_the_engine_down(engine: DockerEngine) -> None:
    result = await run("docker.logs", {"host": NO_ENGINE, "container": "api"})
    assert not result.ok and "cannot reach the docker engine" in result.message


async def test_logs_timeout(silent_port: int) -> None:
    result = await run("docker.logs", {"host": f"tcp://127.0.0.1:{silent_port}", "container": "api"}, timeout=0.3)
    assert not result.ok and result.message.endswith("gave no answer within 0.3s")


# -- docker.stats -----------------------------------------------------------------------------------------


async def test_stats_of_a_busy_container(engine: DockerEngine) -> None:
    name = started(engine, "echo started; while true; do :; done")
    result = await run("docker.stats", {"host": engine.host, "container": name, "maxCpuPercent": 10})
    assert not result.ok
    assert result.output["cpuPercent"] > 30, result.output  # about one core: 100%
    assert re.match(rf"container {name}: CPU above 10%: CPU \d+\.\d\d%, memory ", result.message), result.message


async def test_stats_memory_against_the_limit(engine: DockerEngine) -> None:
    hold = "x=$(head -c 16000000 /dev/zero | tr '\\0' a); echo started; sleep 1000 & wait"
    name = started(engine, hold, mem_limit="128m")
    result = await run("docker.stats", {"host": engine.host, "container": name, "maxMemoryPercent": 90})
    assert result.ok, result.message
    out = result.output
    assert out["memoryLimit"] == 128 * 1024 * 1024
    assert 16_000_000 < out["memoryUsage"] < out["memoryLimit"]
    assert out["memoryPercent"] == pytest.approx(out["memoryUsage"] / out["memoryLimit"] * 100, abs=0.01)
    assert out["cpuPercent"] < 20 and out["pids"] >= 1
    tight = await run("docker.stats", {"host": engine.host, "container": name, "maxMemoryPercent": 5})
    assert not tight.ok and "memory above 5%" in tight.message and "/ 128MiB" in tight.message


async def test_stats_of_a_stopped_container(engine: DockerEngine) -> None:
    name = exited(engine)
    result = await run("docker.stats", {"host": engine.host, "container": name})
    assert not result.ok
    assert result.message == f"container {name} is exited (exit code 3): no stats"


async def test_stats_with_the_engine_down(engine: DockerEngine) -> None:
    result = await run("docker.stats", {"host": NO_ENGINE, "container": "api"})
    assert not result.ok and "cannot reach the docker engine" in result.message


async def test_stats_timeout(silent_port: int) -> None:
    result = await run("docker.stats", {"host": f"tcp://127.0.0.1:{silent_port}", "container": "api"}, timeout=0.3)
    assert not result.ok and result.message.endswith("gave no answer within 0.3s")


def test_cpu_and_memory_are_computed_as_docker_stats_does() -> None:
    sample = {
        "cpu_stats": {"cpu_usage": {"total_usage": 3_000, "percpu_usage": [2_000, 1_000]}, "system_cpu_usage": 20_000},
        "precpu_stats": {"cpu_usage": {"total_usage": 1_000}, "system_cpu_usage": 10_000},
        "memory_stats": {"usage": 1000, "limit": 4000, "stats": {"total_inactive_file": 200}},
    }
    assert cpu_percent(sample) == pytest.approx(2_000 / 10_000 * 2 * 100)  # percpu_usage counts CPUs
    assert memory_use(sample) == (800, 4000, 20.0)  # cgroup v1: the inactive page cache is not counted
    v2 = {"memory_stats": {"usage": 1000, "limit": 0, "stats": {"inactive_file": 100}}}
    assert memory_use(v2) == (900, 0, 0.0) and cpu_percent(v2) == 0.0


# -- docker.prune -----------------------------------------------------------------------------------------


def _gone(engine: DockerEngine, name: str) -> bool:
    try:
        engine.client.containers.get(name)
    except docker.errors.NotFound:
        return True
    return False


def _image_tar(content: bytes) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("payload")
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


async def test_prune_removes_stopped_containers_and_dangling_images(engine: DockerEngine) -> None:
    stopped = exited(engine)
    stopped_id = engine.attrs(stopped)["Id"][:12]
    running = started(engine)
    unlabelled = exited(engine, labelled=False)
    # a dangling image: imported, then its tag moved to another import
    api, repo, label = engine.client.api, "local/obs-dangling", f"LABEL {engine.label}=1"
    api.import_image_from_data(_image_tar(b"one" * 1000), repository=repo, tag="1", changes=[label])
    api.import_image_from_data(_image_tar(b"two"), repository=repo, tag="1", changes=[label])
    assert engine.client.images.list(filters={"dangling": True, "label": engine.label})
    try:
        result = await run("docker.prune", {"host": engine.host, "labels": [engine.label]})
    finally:
        engine.client.images.remove(f"{repo}:1", force=True)
    assert result.ok, result.message
    assert _gone(engine, stopped)
    assert not _gone(engine, running) and not _gone(engine, unlabelled)  # running, or not ours: kept
    assert result.output["containers"] == 1 and result.output["images"] >= 1
    assert result.output["containersDeleted"] == [stopped_id]
    assert result.output["spaceReclaimed"] >= 3000
    assert not engine.client.images.list(filters={"dangling": True, "label": engine.label})
    assert engine.client.images.get(IMAGE)  # tagged and unlabelled: kept
    assert re.match(r"pruned 1 containers, \d+ images, 0 networks; reclaimed ", result.message), result.message


async def test_prune_volumes_only_when_asked(engine: DockerEngine) -> None:
    volume = engine.client.volumes.create(name=engine.name("vol"), labels={engine.label: "1"})
    try:
        kept = await run("docker.prune", {"host": engine.host, "labels": [f"{engine.label}=1"]})
        assert kept.ok and kept.output["volumes"] is None
        assert engine.client.volumes.get(volume.name)
        swept = await run("docker.prune", {"host": engine.host, "labels": [f"{engine.label}=1"], "volumes": True})
        assert swept.ok, swept.message
        assert swept.output["volumes"] == 1 and swept.output["volumesDeleted"] == [volume.name]
        assert "1 volumes" in swept.message
        with pytest.raises(docker.errors.NotFound):
            engine.client.volumes.get(volume.name)
    finally:
        with contextlib.suppress(docker.errors.NotFound):
            volume.remove(force=True)


async def test_prune_with_the_engine_down(engine: DockerEngine) -> None:
    host = NO_ENGINE
    result = await run("docker.prune", {"host": host})
    assert not result.ok
    assert result.message == (
        f"docker.prune on {host}: cannot reach the docker engine at {host}: No such file or directory"
    )


async def test_prune_timeout(silent_port: int) -> None:
    host = f"tcp://127.0.0.1:{silent_port}"
    result = await run("docker.prune", {"host": host}, timeout=0.3)
    assert not result.ok
    assert result.message == f"docker.prune on {host}: docker engine at {host} gave no answer within 0.3s"


class PoolServices:
    """The part of the engine's Services that docker.* uses: its thread pool for blocking clients."""

    def __init__(self) -> None:
        self.calls = 0

    async def read_secret(self, namespace: str, name: str, key: str, policy: str | None) -> str:
        raise AssertionError("docker.* reads no secrets")

    async def rest(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("docker.* needs no cluster")

    async def run_blocking(self, fn: Callable[..., T], *args: Any) -> T:
        self.calls += 1
        return await asyncio.to_thread(fn, *args)


async def test_blocking_calls_go_through_the_engines_thread_pool(engine: DockerEngine) -> None:
    name = started(engine)
    services = PoolServices()
    ctx = ActionContext("ns", "inc", timeout=10.0, services=services)
    action = REGISTRY.get("docker.status")
    result = await action.run(REGISTRY.parse("docker.status", {"host": engine.host, "container": name}), ctx)
    assert result.ok, result.message
    assert services.calls == 1


# -- parameters and traits --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("docker.status", {}, "container: Field required"),
        ("docker.status", {"container": ""}, "container: String should have at least 1 character"),
        ("docker.status", {"container": "bad name"}, "container: String should match pattern"),
        ("docker.status", {"container": "api", "host": "http://docker:2375"}, "host: Value error, expected unix:///path/to/docker.sock or tcp://host:port, got 'http://docker:2375'"),
        ("docker.status", {"container": "api", "host": "unix://"}, "host: Value error, expected unix:///path/to/docker.sock"),
        ("docker.status", {"container": "api", "image": "x"}, "image: Extra inputs are not permitted"),
        ("docker.restart", {"container": "api", "timeout": -1}, "timeout: Input should be greater than or equal to 0"),
        ("docker.restart", {"container": "api", "timeout": "10s"}, "timeout: Input should be a valid integer"),
        ("docker.restart", {"container": "api", "settle": "a while"}, "settle: Value error, invalid duration 'a while'"),
        ("docker.logs", {"container": "api", "tail": 0}, "tail: Input should be greater than or equal to 1"),
        ("docker.logs", {"container": "api", "tail": 20000}, "tail: Input should be less than or equal to 10000"),
        ("docker.logs", {"container": "api", "errorPattern": "(unclosed"}, "errorPattern: Value error, invalid regular expression '(unclosed': missing ): (unclosed (errorPattern runs on RE2"),
        ("docker.logs", {"container": "api", "maxErrors": -1}, "maxErrors: Input should be greater than or equal to 0"),
        ("docker.logs", {"container": "api", "since": "yesterday"}, "since: Value error, invalid duration 'yesterday'"),
        ("docker.stats", {"container": "api", "maxCpuPercent": 0}, "maxCpuPercent: Input should be greater than 0"),
        ("docker.stats", {"container": "api", "maxMemoryPercent": 150}, "maxMemoryPercent: Input should be less than or equal to 100"),
        ("docker.prune", {"all": "sometimes"}, "all: Input should be a valid boolean"),
        ("docker.prune", {"labels": ["=x"]}, "labels: Value error, label filter '=x': expected key or key=value"),
        ("docker.prune", {"labels": "app=ish"}, "labels: Input should be a valid list"),
        ("docker.prune", {"container": "api"}, "container: Extra inputs are not permitted"),
    ],
)  # fmt: skip
def test_parameters_are_validated_with_precise_messages(name: str, params: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        REGISTRY.check(name, params)


def test_traits() -> None:
    assert REGISTRY.check("docker.prune", {"all": True}).destructive
    for name in ("docker.status", "docker.logs", "docker.stats"):
        traits = REGISTRY.check(name, {"container": "ish-chat-instance-manager"})
        assert traits.read_only and not traits.destructive
    restart = REGISTRY.check("docker.restart", {"container": "{{ incident.labels.container }}"})
    assert not restart.read_only and not restart.destructive
