"""docker.*: the runbook's ``docker-compose ps/logs/restart``, ``docker stats`` and ``docker system prune``.

The Docker SDK is blocking: every call runs in the engine's thread pool
(``ctx.services.run_blocking``, or a thread when there is none) with a fresh client
that is closed afterwards, and is bounded by the step's timeout. The SDK is imported
when a docker step first runs: an operator whose policies use no docker.* action does
not carry it. Containers are named as ``docker ps`` shows them
(docker-compose's ``container_name``, e.g. ``ish-chat-instance-manager``) or by ID.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Iterator
from typing import Annotated, Any, TypeVar
from urllib.parse import urlsplit

import httpx
import pydantic

from runbook_operator.actions import api, egress
from runbook_operator.actions.api import Action, ActionContext, ActionFailure, Params, StepResult
from runbook_operator.domain.wire import clipped

T = TypeVar("T")
TAIL_CHARS = 1800  # characters of log tail kept in the output (the Incident status keeps ~2 KiB a step)
MAX_LISTED = 10  # names/IDs listed per kind in a prune's output
_LINE = 200  # characters of one quoted log line or health-check output
_EXPLAINED = 300  # characters of the engine's error message quoted
DOCKER_PORT = 2375  # the engine's plain-HTTP port, when tcp:// names none (as docker's own client assumes)
_HOST = re.compile(r"^(unix://.+|tcp://[^/\s]+)$")
_NAME = r"^/?[a-zA-Z0-9][a-zA-Z0-9_.-]*$"
_LABEL = re.compile(r"^[^=\s]+(=.*)?$")


class _Engine(Params):
    host: Annotated[str | None, api.Language.LITERAL] = pydantic.Field(
        None,
        description="Docker engine: unix:///path/to/docker.sock or tcp://host:port "
        "(default: DOCKER_HOST, else the local socket)",
    )

    @pydantic.field_validator("host")
    @classmethod
    def _known_scheme(cls, value: str | None) -> str | None:
        if value is not None and not _HOST.match(value):
            raise ValueError(f"expected unix:///path/to/docker.sock or tcp://host:port, got {value!r}")
        return value

    def where(self) -> str:
        return self.host or "the default engine"


class _Container(_Engine):
    container: Annotated[str, api.Language.NAME] = pydantic.Field(
        min_length=1, max_length=253, pattern=_NAME, description="container name or ID, as `docker ps` shows it"
    )


class StatusParams(_Container):
    pass


class RestartParams(_Container):
    timeout: int = pydantic.Field(
        10,
        ge=0,
        le=600,
        description="seconds to wait for the container to stop before it is killed (docker restart -t)",
    )
    settle: api.Duration | None = pydantic.Field(
        None, description="wait this long after the restart, then check it still runs (catches a crash loop), e.g. 5s"
    )


class LogsParams(_Container, api.ErrorScan):
    tail: int = pydantic.Field(200, ge=1, le=10_000, description="lines read from the end of the log")
    since: api.Duration | None = pydantic.Field(None, description="only lines written in this last period, e.g. 5m")


class StatsParams(_Container):
    max_cpu: float | None = pydantic.Field(
        None,
        alias="maxCpuPercent",
        gt=0,
        allow_inf_nan=False,
        description="fail when CPU use is above this percent (100 = one full core, as docker stats counts)",
    )
    max_memory: float | None = pydantic.Field(
        None,
        alias="maxMemoryPercent",
        gt=0,
        le=100,
        description="fail when memory use is above this percent of the container's limit",
    )


class PruneParams(_Engine):
    all_images: bool = pydantic.Field(
        False, alias="all", description="remove every unused image, not just dangling ones (docker system prune -a)"
    )
    volumes: bool = pydantic.Field(False, description="also remove unused volumes (docker system prune --volumes)")
    labels: Annotated[list[str], api.Language.NAME] = pydantic.Field(
        default_factory=list,
        max_length=20,
        description="only remove objects carrying all these labels, key or key=value (--filter label=...)",
    )

    @pydantic.field_validator("labels")
    @classmethod
    def _label_filters(cls, value: list[str]) -> list[str]:
        for label in value:
            if not _LABEL.match(label):
                raise ValueError(f"label filter {label!r}: expected key or key=value")
        return value


# -- the engine, through a short-lived client in the thread pool -----------------------------------------


def _chain(err: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _explain(err: BaseException, what: str, params: _Engine, budget: float) -> ActionFailure:
    import docker.errors
    import requests

    causes = list(_chain(err))
    if isinstance(err, TimeoutError) or any(isinstance(e, requests.exceptions.Timeout) for e in causes):
        return ActionFailure(f"{what}: docker engine at {params.where()} gave no answer within {budget:g}s")
    if isinstance(err, docker.errors.NotFound):
        name = getattr(params, "container", "")
        return ActionFailure(f"{what}: no such container {name!r} on {params.where()}")
    api_error = next((e for e in causes if isinstance(e, docker.errors.APIError)), None)
    if api_error is not None:  # also one met while the client asked the engine's API version
        return ActionFailure(f"{what}: docker engine error {api_error.status_code}: {_explanation(api_error)}")
    if any(isinstance(e, (requests.exceptions.ConnectionError, OSError)) for e in causes):
        root = causes[-1]
        reason = root.strerror if isinstance(root, OSError) and root.strerror else str(root)
        return ActionFailure(f"{what}: cannot reach the docker engine at {params.where()}: {reason}")
    return ActionFailure(f"{what}: {type(err).__name__}: {err}")


def _explanation(err: Any) -> str:
    """The engine's ``message``; an answer that is not the engine's JSON (``host`` may lead to
    something that is not a docker engine) is not quoted: its content type only."""
    response = getattr(err, "response", None)
    if response is not None and not egress.is_json(response.headers):
        return f"an answer of {egress.content_type(response.headers)}, not shown"
    return clipped(" ".join(str(err.explanation or err).split()), _EXPLAINED)


async def _pinned(params: _Engine, what: str) -> str | None:
    """The engine's address for the client: a ``tcp://`` host checked as every HTTP action's is
    (no link-local, metadata or unspecified address) and pinned to the address checked."""
    if params.host is None or not params.host.startswith("tcp://"):
        return params.host
    split = urlsplit(params.host)
    try:
        host, port = split.hostname, split.port or DOCKER_PORT
    except ValueError:
        raise ActionFailure(f"{what}: {params.host!r} has no valid port") from None
    if not host:
        raise ActionFailure(f"{what}: {params.host!r} names no host")
    try:
        address = await egress.checked_address(host, port)
    except egress.EgressRefused as err:
        raise ActionFailure(f"{what}: {err}") from None
    except httpx.ConnectError as err:
        raise ActionFailure(f"{what}: cannot reach the docker engine at {params.where()}: {err}") from None
    return f"tcp://[{address}]:{port}" if ":" in address else f"tcp://{address}:{port}"


async def _blocking(ctx: ActionContext, fn: Callable[[], T]) -> T:
    if ctx.services is not None:
        return await ctx.services.run_blocking(fn)
    return await asyncio.to_thread(fn)


async def _engine(params: _Engine, ctx: ActionContext, what: str, budget: float, fn: Callable[[Any], T]) -> T:
    """Run ``fn(client)`` in a thread with a client made for this call; failures are an ActionFailure."""

    def work(base_url: str | None) -> T:
        import docker  # in the thread: the first step's import (~0.2 s) does not hold the event loop

        if base_url is None:
            client = docker.from_env(timeout=budget)
        else:
            client = docker.DockerClient(base_url=base_url, timeout=budget)
        try:
            return fn(client)
        finally:
            client.close()

    async def call() -> T:
        base_url = await _pinned(params, what)
        return await _blocking(ctx, lambda: work(base_url))

    try:
        async with asyncio.timeout(budget):
            return await call()
    except _failures() as err:
        raise _explain(err, what, params, budget) from None


def _failures() -> tuple[type[BaseException], ...]:
    """What a call to the engine may raise: an ``except`` evaluates it only when something was raised."""
    import docker.errors
    import requests

    return TimeoutError, docker.errors.DockerException, requests.exceptions.RequestException, OSError


def _state(attrs: dict[str, Any]) -> dict[str, Any]:
    state = attrs.get("State") or {}
    health = state.get("Health") or {}
    return {
        "state": state.get("Status"),
        "health": health.get("Status"),
        "restartCount": attrs.get("RestartCount", 0),
        "startedAt": state.get("StartedAt"),
        "exitCode": state.get("ExitCode"),
        "oomKilled": bool(state.get("OOMKilled")),
    }


def _not_running(name: str, out: dict[str, Any]) -> str:
    detail = f"exit code {out['exitCode']}" + (", killed for lack of memory" if out["oomKilled"] else "")
    return f"container {name} is {out['state']} ({detail})"


def _last_check(attrs: dict[str, Any]) -> str:
    log = ((attrs.get("State") or {}).get("Health") or {}).get("Log") or []
    if not log:
        return ""
    last = log[-1]
    text = " ".join(str(last.get("Output") or "").split())[:_LINE]
    return f"; last check exited {last.get('ExitCode')}" + (f": {text}" if text else "")


# -- docker.status --------------------------------------------------------------------------------------


async def status(params: StatusParams, ctx: ActionContext) -> StepResult:
    what = f"docker.status {params.container}"
    attrs = await _engine(params, ctx, what, ctx.timeout, lambda c: c.containers.get(params.container).attrs)
    out = _state(attrs)
    if out["state"] != "running":
        return StepResult(False, _not_running(params.container, out), out)
    if out["health"] == "unhealthy":
        streak = ((attrs.get("State") or {}).get("Health") or {}).get("FailingStreak")
        return StepResult(
            False,
            f"container {params.container} is running but unhealthy (failing streak {streak}){_last_check(attrs)}",
            out,
        )
    health = f", {out['health']}" if out["health"] else ""
    return StepResult(
        True,
        f"container {params.container} is running{health} since {out['startedAt']} ({out['restartCount']} restarts)",
        out,
    )


# -- docker.restart -------------------------------------------------------------------------------------


async def restart(params: RestartParams, ctx: ActionContext) -> StepResult:
    what = f"docker.restart {params.container}"
    deadline = time.monotonic() + ctx.timeout

    def do(client: Any) -> tuple[str, dict[str, Any]]:
        container = client.containers.get(params.container)
        before = str((container.attrs.get("State") or {}).get("StartedAt"))
        container.restart(timeout=params.timeout)
        container.reload()
        return before, container.attrs

    done = await _engine(params, ctx, what, ctx.timeout, do)
    before, attrs = done
    if params.settle is not None:
        await asyncio.sleep(min(params.settle, max(deadline - time.monotonic() - 0.5, 0)))
        budget = max(deadline - time.monotonic(), 0.5)
        attrs = await _engine(params, ctx, what, budget, lambda c: c.containers.get(params.container).attrs)
    out = {**_state(attrs), "previousStartedAt": before}
    if out["startedAt"] == before:
        return StepResult(False, f"container {params.container} was not restarted (still started at {before})", out)
    if out["state"] != "running":
        settled = f" {params.settle:g}s after the restart" if params.settle is not None else " after the restart"
        return StepResult(False, _not_running(params.container, out) + settled, out)
    return StepResult(True, f"restarted container {params.container}: running since {out['startedAt']}", out)


# -- docker.logs ----------------------------------------------------------------------------------------


def _tail(lines: list[str], limit: int = TAIL_CHARS) -> str:
    kept: list[str] = []
    size = 0
    for line in reversed(lines):
        if size + len(line) + 1 > limit:
            if not kept:
                kept.append(line[-limit:])
            break
        kept.append(line)
        size += len(line) + 1
    return "\n".join(reversed(kept))


async def logs(params: LogsParams, ctx: ActionContext) -> StepResult:
    what = f"docker.logs {params.container}"
    since = int(time.time() - params.since) if params.since is not None else None

    def read(client: Any) -> bytes:
        container = client.containers.get(params.container)
        data: bytes = container.logs(stdout=True, stderr=True, tail=params.tail, since=since, timestamps=False)
        return data

    data = await _engine(params, ctx, what, ctx.timeout, read)
    lines, matching = await params.scan(data.decode("utf-8", errors="replace"), ctx)
    out = {"lines": len(lines), "matches": len(matching), "tail": _tail(lines)}
    counted = f"{len(matching)} of the last {len(lines)} lines match {params.error_pattern!r}"
    last = f"; last: {matching[-1].strip()[:_LINE]!r}" if matching else ""
    if params.max_errors is not None and len(matching) > params.max_errors:
        return StepResult(False, f"container {params.container}: {counted}, more than {params.max_errors}{last}", out)
    return StepResult(True, f"container {params.container}: {counted}{last}", out)


# -- docker.stats ---------------------------------------------------------------------------------------


def cpu_percent(stats: dict[str, Any]) -> float:
    """CPU use as `docker stats` computes it: 100 is one full core."""
    cpu, pre = stats.get("cpu_stats") or {}, stats.get("precpu_stats") or {}
    cpu_delta = (cpu.get("cpu_usage") or {}).get("total_usage", 0) - (pre.get("cpu_usage") or {}).get("total_usage", 0)
    system_delta = (cpu.get("system_cpu_usage") or 0) - (pre.get("system_cpu_usage") or 0)
    online = cpu.get("online_cpus") or len((cpu.get("cpu_usage") or {}).get("percpu_usage") or [])
    if system_delta > 0 and cpu_delta > 0:
        return float(cpu_delta) / float(system_delta) * float(online) * 100.0
    return 0.0


def memory_use(stats: dict[str, Any]) -> tuple[int, int, float]:
    """(used, limit, percent) as `docker stats` computes them: usage minus the inactive page cache."""
    memory = stats.get("memory_stats") or {}
    usage, limit = int(memory.get("usage") or 0), int(memory.get("limit") or 0)
    detail = memory.get("stats") or {}
    inactive = detail.get("total_inactive_file")  # cgroup v1
    if inactive is None:
        inactive = detail.get("inactive_file", 0)  # cgroup v2
    used = usage - int(inactive) if int(inactive) < usage else usage
    return used, limit, (used / limit * 100.0 if limit else 0.0)


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.4g}{unit}"
        n /= 1024
    return f"{n:.4g}TiB"


async def stats(params: StatsParams, ctx: ActionContext) -> StepResult:
    what = f"docker.stats {params.container}"

    def sample(client: Any) -> tuple[dict[str, Any], dict[str, Any] | None]:
        container = client.containers.get(params.container)
        if (container.attrs.get("State") or {}).get("Status") != "running":
            return container.attrs, None
        return container.attrs, container.stats(stream=False)  # two samples a second apart, like --no-stream

    got = await _engine(params, ctx, what, ctx.timeout, sample)
    attrs, numbers = got
    if numbers is None:
        out = _state(attrs)
        return StepResult(False, _not_running(params.container, out) + ": no stats", out)
    cpu = cpu_percent(numbers)
    used, limit, mem = memory_use(numbers)
    out = {
        "cpuPercent": round(cpu, 2),
        "memoryUsage": used,
        "memoryLimit": limit,
        "memoryPercent": round(mem, 2),
        "pids": (numbers.get("pids_stats") or {}).get("current"),
    }
    seen = f"CPU {cpu:.2f}%, memory {_size(used)} / {_size(limit)} ({mem:.2f}%)"
    over = []
    if params.max_cpu is not None and cpu > params.max_cpu:
        over.append(f"CPU above {params.max_cpu:g}%")
    if params.max_memory is not None and mem > params.max_memory:
        over.append(f"memory above {params.max_memory:g}%")
    if over:
        return StepResult(False, f"container {params.container}: {' and '.join(over)}: {seen}", out)
    return StepResult(True, f"container {params.container}: {seen}", out)


# -- docker.prune ---------------------------------------------------------------------------------------


async def prune(params: PruneParams, ctx: ActionContext) -> StepResult:
    what = f"docker.prune on {params.where()}"
    by_label: dict[str, Any] = {"label": params.labels} if params.labels else {}

    def sweep(client: Any) -> dict[str, dict[str, Any]]:
        # the order of `docker system prune`: images last, so those only the removed containers used go too
        done = {
            "containers": client.containers.prune(filters=by_label or None) or {},
            "networks": client.networks.prune(filters=by_label or None) or {},
        }
        if params.volumes:
            done["volumes"] = client.volumes.prune(filters=by_label or None) or {}
        done["images"] = client.images.prune(filters={"dangling": not params.all_images, **by_label}) or {}
        return done

    done = await _engine(params, ctx, what, ctx.timeout, sweep)
    containers = [str(c)[:12] for c in done["containers"].get("ContainersDeleted") or []]
    networks = [str(n) for n in done["networks"].get("NetworksDeleted") or []]
    volumes = [str(v) for v in done.get("volumes", {}).get("VolumesDeleted") or []]
    images = [
        str(i.get("Deleted"))[:19]
        for i in done["images"].get("ImagesDeleted") or []
        if isinstance(i, dict) and i.get("Deleted")
    ]
    reclaimed = sum(int(part.get("SpaceReclaimed") or 0) for part in done.values())
    out = {
        "spaceReclaimed": reclaimed,
        "containers": len(containers),
        "images": len(images),
        "networks": len(networks),
        "volumes": len(volumes) if params.volumes else None,
        "containersDeleted": containers[:MAX_LISTED],
        "imagesDeleted": images[:MAX_LISTED],
        "networksDeleted": networks[:MAX_LISTED],
        "volumesDeleted": volumes[:MAX_LISTED],
    }
    removed = [f"{len(containers)} containers", f"{len(images)} images", f"{len(networks)} networks"]
    if params.volumes:
        removed.append(f"{len(volumes)} volumes")
    return StepResult(True, f"pruned {', '.join(removed)}; reclaimed {_size(reclaimed)}", out)


ACTIONS: tuple[Action[Any], ...] = (
    Action(
        "docker.status",
        StatusParams,
        status,
        "a container's state, health and restart count (docker-compose ps); fails when not running or unhealthy",
        10.0,
        read_only=True,
    ),
    Action(
        "docker.restart",
        RestartParams,
        restart,
        "restart a container (docker-compose restart) and check it runs again",
        60.0,
    ),
    Action(
        "docker.logs",
        LogsParams,
        logs,
        "read the tail of a container's log and count the error lines (docker-compose logs)",
        15.0,
        read_only=True,
    ),
    Action(
        "docker.stats",
        StatsParams,
        stats,
        "one sample of a container's CPU and memory use (docker stats --no-stream), with optional limits",
        15.0,
        read_only=True,
    ),
    Action(
        "docker.prune",
        PruneParams,
        prune,
        "remove stopped containers, unused networks, dangling (or all unused) images and optionally volumes "
        "(docker system prune)",
        120.0,
        destructive=True,
    ),
)
