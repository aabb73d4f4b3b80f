"""redis.*: the runbook's Redis checks and cache clearing, over redis.asyncio.

Connection details come from the policy, a password only from a Secret. Each call opens
one client and closes it before returning; the step's timeout bounds the whole call.
Keys are found with SCAN, never KEYS, so a large keyspace does not stall the server.
The client library is imported when a redis step first runs, not with the parameter models.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any

import pydantic

from runbook_operator.actions.api import Action, ActionContext, ActionFailure, Language, Params, SecretRef, StepResult

if TYPE_CHECKING:
    import redis.asyncio

    Client = redis.asyncio.Redis
    Work = Callable[[Client], Awaitable[StepResult]]


class ServerParams(Params):
    host: Annotated[str, Language.LITERAL] = pydantic.Field(
        min_length=1, max_length=253, description="server host name or IP address"
    )
    port: Annotated[int, Language.LITERAL] = pydantic.Field(6379, ge=1, le=65535, description="server port")
    db: Annotated[int, Language.LITERAL] = pydantic.Field(0, ge=0, description="database number")
    username: Annotated[str | None, Language.LITERAL] = pydantic.Field(
        None, min_length=1, description="ACL user (default: the default user)"
    )
    password_secret_ref: SecretRef | None = pydantic.Field(
        None, alias="passwordSecretRef", description="Secret key holding the password (never written in the policy)"
    )

    def where(self) -> str:
        return f"redis {self.host}:{self.port}/{self.db}"


class MemoryParams(ServerParams):
    max_ratio: float | None = pydantic.Field(
        None, alias="maxRatio", gt=0, le=1, description="fail when used_memory / maxmemory exceeds it"
    )


class DbsizeParams(ServerParams):
    max_keys: int | None = pydantic.Field(
        None, alias="maxKeys", ge=0, description="fail when the database holds more keys"
    )


class DeleteParams(ServerParams):
    pattern: Annotated[str, Language.GLOB] = pydantic.Field(
        min_length=1, description="glob of the keys to delete, e.g. session:*"
    )
    batch: int = pydantic.Field(500, ge=1, le=10000, description="keys per SCAN page and per UNLINK")
    max_keys: int = pydantic.Field(
        100000, alias="maxKeys", ge=1, description="stop after deleting this many keys (run again for more)"
    )


class FlushParams(ServerParams):
    asynchronous: bool = pydantic.Field(
        False, alias="async", description="FLUSHALL ASYNC: free the memory in the background"
    )


def _reason(err: BaseException) -> str:
    """The operating system's words ("Connection refused") when redis-py's wrap an OSError."""
    cause: BaseException | None = err
    while cause is not None:
        if isinstance(cause, socket.gaierror):
            return f"cannot resolve the host: {cause.strerror}"
        if isinstance(cause, OSError) and cause.errno and cause.errno > 0:
            return os.strerror(cause.errno)
        cause = cause.__cause__ or cause.__context__
    return str(err)


async def _session(
    params: ServerParams, ctx: ActionContext, work: Work, progress: Callable[[], str] = lambda: ""
) -> StepResult:
    """Open a client, run ``work`` and close it; every expected failure is an ActionFailure saying where."""
    import redis.asyncio
    import redis.exceptions
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    where = params.where()
    password = None
    if params.password_secret_ref is not None:
        password = await ctx.secret(params.password_secret_ref, where, "the password")
    budget = ctx.timeout
    client = redis.asyncio.Redis(
        host=params.host,
        port=params.port,
        db=params.db,
        username=params.username,
        password=password,
        socket_timeout=budget,
        socket_connect_timeout=budget,
        retry=Retry(NoBackoff(), 0),  # the step's retries are the policy's to choose
    )
    try:
        async with asyncio.timeout(budget):
            async with client:
                return await work(client)
    except (TimeoutError, redis.exceptions.TimeoutError):
        raise ActionFailure(f"{where}: no answer within {budget:g}s{progress()}") from None
    except redis.exceptions.AuthenticationError as err:
        if password is None:
            raise ActionFailure(
                f"{where}: authentication failed: the server wants a password (passwordSecretRef)"
            ) from None
        raise ActionFailure(ctx.redact(f"{where}: authentication failed: {err}")) from None
    except redis.exceptions.ConnectionError as err:
        raise ActionFailure(ctx.redact(f"{where}: cannot connect: {_reason(err)}{progress()}")) from None
    except redis.exceptions.RedisError as err:
        raise ActionFailure(ctx.redact(f"{where}: {type(err).__name__}: {err}{progress()}")) from None
    finally:
        await client.aclose()  # idempotent; also when the timeout struck inside the block


async def ping(params: ServerParams, ctx: ActionContext) -> StepResult:
    async def work(client: Client) -> StepResult:
        started = time.perf_counter()
        pong = await client.ping()
        elapsed = time.perf_counter() - started
        output = {"latencySeconds": round(elapsed, 3)}
        if not pong:
            return StepResult(False, f"{params.where()}: PING got no PONG", output)
        return StepResult(True, f"{params.where()}: PONG in {elapsed:.3f}s", output)

    return await _session(params, ctx, work)


async def memory(params: MemoryParams, ctx: ActionContext) -> StepResult:
    async def work(client: Client) -> StepResult:
        info = await client.info("memory")
        used, most = int(info["used_memory"]), int(info.get("maxmemory", 0))
        output: dict[str, Any] = {
            "usedMemory": used,
            "usedMemoryHuman": str(info.get("used_memory_human", used)),
            "maxMemory": most,
            "maxMemoryHuman": str(info.get("maxmemory_human", most)),
            "ratio": round(used / most, 3) if most else None,
            "policy": str(info.get("maxmemory_policy", "")),
        }
        text = f"{params.where()}: used {output['usedMemoryHuman']}"
        if not most:
            return StepResult(True, f"{text}; no maxmemory limit", output)
        text += f" of {output['maxMemoryHuman']} (ratio {output['ratio']:g}, policy {output['policy']})"
        if params.max_ratio is not None and output["ratio"] > params.max_ratio:
            return StepResult(False, f"{text}, above {params.max_ratio:g}", output)
        return StepResult(True, text, output)

    return await _session(params, ctx, work)


async def dbsize(params: DbsizeParams, ctx: ActionContext) -> StepResult:
    async def work(client: Client) -> StepResult:
        keys = await client.dbsize()
        text = f"{params.where()}: {keys} key(s)"
        if params.max_keys is not None and keys > params.max_keys:
            return StepResult(False, f"{text}, more than {params.max_keys}", {"keys": keys})
        return StepResult(True, text, {"keys": keys})

    return await _session(params, ctx, work)


async def delete_by_pattern(params: DeleteParams, ctx: ActionContext) -> StepResult:
    deleted = 0

    def so_far() -> str:
        return f" (deleted {deleted} key(s) before that)" if deleted else ""

    async def work(client: Client) -> StepResult:
        nonlocal deleted
        queued, cursor, limited = 0, 0, False
        pending: list[Any] = []
        while True:
            cursor, keys = await client.scan(cursor=cursor, match=params.pattern, count=params.batch)
            for key in keys:
                if queued >= params.max_keys:
                    limited = True  # keys left on this page
                    break
                pending.append(key)
                queued += 1
                if len(pending) >= params.batch:
                    deleted += await client.unlink(*pending)
                    pending = []
            if cursor == 0 or limited:
                break
            if queued >= params.max_keys:
                limited = True  # the scan is not finished: more may match
                break
        if pending:
            deleted += await client.unlink(*pending)
        output = {"pattern": params.pattern, "deleted": deleted, "complete": not limited}
        text = f"{params.where()}: deleted {deleted} key(s) matching {params.pattern!r}"
        if limited:
            text += f"; stopped at maxKeys={params.max_keys}, more keys may match (run again)"
        return StepResult(True, text, output)

    return await _session(params, ctx, work, so_far)


async def flush_all(params: FlushParams, ctx: ActionContext) -> StepResult:
    async def work(client: Client) -> StepResult:
        keyspace = await client.info("keyspace")
        before = sum(int(v.get("keys", 0)) for v in keyspace.values() if isinstance(v, dict))
        await client.flushall(asynchronous=params.asynchronous)
        mode = " ASYNC" if params.asynchronous else ""
        output = {"flushedKeys": before, "asynchronous": params.asynchronous}
        return StepResult(True, f"{params.where()}: FLUSHALL{mode} removed {before} key(s) from all databases", output)

    return await _session(params, ctx, work)


ACTIONS: tuple[Action[Any], ...] = (
    Action("redis.ping", ServerParams, ping, "PING the server (redis-cli ping)", 5.0, read_only=True),
    Action(
        "redis.memory",
        MemoryParams,
        memory,
        "INFO memory: used_memory against maxmemory (redis-cli info memory)",
        10.0,
        read_only=True,
    ),
    Action(
        "redis.dbsize", DbsizeParams, dbsize, "number of keys in the database (redis-cli dbsize)", 10.0, read_only=True
    ),
    Action(
        "redis.deleteByPattern",
        DeleteParams,
        delete_by_pattern,
        "delete the keys matching a glob: SCAN and UNLINK in batches, never KEYS",
        120.0,
        destructive=True,
    ),
    Action(
        "redis.flushAll",
        FlushParams,
        flush_all,
        "FLUSHALL: delete every key of every database",
        30.0,
        destructive=True,
    ),
)
