"""postgres.*: the runbook's PostgreSQL checks and fixes, over psycopg 3 (async).

Connection details come from the policy; the password only from a Secret. Every value
is a bound parameter and every name a quoted identifier; no policy text is pasted into SQL.
A step's timeout bounds the connection and, as ``statement_timeout``, the server's work.
psycopg is imported when a postgres step first runs, not with the parameter models.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any, Literal

import pydantic

from runbook_operator.actions.api import Action, ActionContext, ActionFailure, Language, Params, SecretRef, StepResult

if TYPE_CHECKING:
    import psycopg
    from psycopg import sql

    Connection = psycopg.AsyncConnection[Any]
    Work = Callable[[Connection], Awaitable[StepResult]]
_EXCERPT = 120  # characters of a query's text kept in output (status output is small)
_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def _parse_size(value: Any) -> Any:
    """``10GB``, ``512MiB``, ``1.5 TB`` -> bytes (1024-based, as pg_size_pretty prints); ints pass."""
    if not isinstance(value, str):
        return value
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", value, re.IGNORECASE)
    if match is None:
        raise ValueError(f"invalid size {value!r}: use bytes or e.g. 512MB, 10GB")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


Size = Annotated[int, pydantic.BeforeValidator(_parse_size), pydantic.Field(gt=0)]


class ServerParams(Params):
    host: Annotated[str, Language.LITERAL] = pydantic.Field(
        min_length=1, max_length=253, description="server host name or IP address"
    )
    port: Annotated[int, Language.LITERAL] = pydantic.Field(5432, ge=1, le=65535, description="server port")
    dbname: Annotated[str, Language.LITERAL] = pydantic.Field(
        min_length=1, max_length=63, description="database to connect to"
    )
    user: Annotated[str, Language.LITERAL] = pydantic.Field(
        min_length=1, max_length=63, description="role to log in as"
    )
    password_secret_ref: SecretRef = pydantic.Field(
        alias="passwordSecretRef", description="Secret key holding the role's password (never written in the policy)"
    )
    sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] = pydantic.Field(
        "prefer", description="libpq sslmode"
    )

    def where(self) -> str:
        return f"postgres {self.user}@{self.host}:{self.port}/{self.dbname}"


class ConnectionsParams(ServerParams):
    max_ratio: float = pydantic.Field(
        0.9, alias="maxRatio", gt=0, le=1, description="fail when client connections / max_connections exceeds it"
    )


class SlowQueriesParams(ServerParams):
    limit: int = pydantic.Field(10, ge=1, le=50, description="report at most this many statements")
    min_mean_ms: float = pydantic.Field(
        100.0, alias="minMeanMs", ge=0, description="report statements whose mean execution time exceeds it (ms)"
    )


class DatabaseSizeParams(ServerParams):
    max_bytes: Size | None = pydantic.Field(
        None, alias="maxBytes", description="fail above this size: bytes or e.g. 10GB (1024-based)"
    )


class AnalyzeParams(ServerParams):
    table: Annotated[str | None, Language.NAME] = pydantic.Field(
        None, min_length=1, max_length=63, description="analyze only this table (default: the whole database)"
    )
    table_schema: Annotated[str | None, Language.NAME] = pydantic.Field(
        None, alias="schema", min_length=1, max_length=63, description="the table's schema (default: search_path)"
    )

    @pydantic.model_validator(mode="after")
    def _schema_needs_table(self) -> AnalyzeParams:
        if self.table_schema is not None and self.table is None:
            raise ValueError("schema is set but table is not")
        return self


class ReindexParams(ServerParams):
    concurrently: bool = pydantic.Field(
        False, description="REINDEX DATABASE CONCURRENTLY: no write locks, skips system catalogs"
    )


class TerminateParams(ServerParams):
    pid: int = pydantic.Field(gt=0, description="backend process id, e.g. a blocking pid from postgres.blockingLocks")


def _one_line(err: BaseException) -> str:
    lines = (" ".join(line.split()) for line in str(err).splitlines())
    return "; ".join(line for line in lines if line) or type(err).__name__


def _excerpt(query: str | None) -> str:
    text = " ".join((query or "").split())
    return text if len(text) <= _EXCERPT else text[: _EXCERPT - 1] + "…"


async def _session(params: ServerParams, ctx: ActionContext, work: Work) -> StepResult:
    """Connect, run ``work`` and close; every expected failure is an ActionFailure saying where."""
    import psycopg

    where = params.where()
    password = await ctx.secret(params.password_secret_ref, where, "the password")
    budget = ctx.timeout
    connected = False
    try:
        async with asyncio.timeout(budget):
            conn = await psycopg.AsyncConnection.connect(
                host=params.host,
                port=params.port,
                dbname=params.dbname,
                user=params.user,
                password=password,
                sslmode=params.sslmode,
                connect_timeout=max(2, math.ceil(budget)),  # libpq's floor is 2s; asyncio bounds it exactly
                application_name="runbook-operator",
                autocommit=True,
            )
            connected = True
            async with conn:
                # the server gives up too, should this client vanish (set here, not as a startup
                # option, which poolers such as PgBouncer refuse)
                await conn.execute(
                    "SELECT set_config('statement_timeout', %s, false)", (f"{max(1, int(budget * 1000))}ms",)
                )
                return await work(conn)
    except (TimeoutError, psycopg.errors.ConnectionTimeout):
        if connected:  # psycopg cancels the statement on the server when its task is cancelled
            raise ActionFailure(f"{where}: not finished within {budget:g}s; the statement was cancelled") from None
        raise ActionFailure(f"{where}: no answer within {budget:g}s") from None
    except psycopg.errors.QueryCanceled as err:
        raise ActionFailure(ctx.redact(f"{where}: cancelled: {_one_line(err)}")) from None
    except psycopg.OperationalError as err:
        raise ActionFailure(ctx.redact(f"{where}: {_one_line(err)}")) from None
    except psycopg.Error as err:
        raise ActionFailure(ctx.redact(f"{where}: {type(err).__name__}: {_one_line(err)}")) from None


async def _rows(
    conn: Connection, query: sql.SQL | sql.Composed | str, args: tuple[Any, ...] = ()
) -> list[tuple[Any, ...]]:
    cur = await conn.execute(query, args)
    return await cur.fetchall()


async def ping(params: ServerParams, ctx: ActionContext) -> StepResult:
    async def work(conn: Connection) -> StepResult:
        started = time.perf_counter()
        rows = await _rows(conn, "SELECT 1")
        elapsed = time.perf_counter() - started
        version = conn.info.parameter_status("server_version")
        output = {"latencySeconds": round(elapsed, 3), "serverVersion": version}
        if rows != [(1,)]:
            return StepResult(False, f"{params.where()}: SELECT 1 returned {rows!r}", output)
        return StepResult(
            True, f"{params.where()}: SELECT 1 in {elapsed:.3f}s (server {output['serverVersion']})", output
        )

    return await _session(params, ctx, work)


async def connections(params: ConnectionsParams, ctx: ActionContext) -> StepResult:
    async def work(conn: Connection) -> StepResult:
        # background workers, autovacuum and WAL senders have slots of their own
        [(used,)] = await _rows(conn, "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'")
        [(limit,)] = await _rows(conn, "SHOW max_connections")
        most = int(limit)
        ratio = round(used / most, 3)
        output = {"used": used, "max": most, "ratio": ratio}
        text = f"{params.where()}: {used}/{most} connections in use (ratio {ratio:g})"
        if ratio > params.max_ratio:
            return StepResult(False, f"{text}, above {params.max_ratio:g}", output)
        return StepResult(True, text, output)

    return await _session(params, ctx, work)


async def slow_queries(params: SlowQueriesParams, ctx: ActionContext) -> StepResult:
    from psycopg import sql

    async def work(conn: Connection) -> StepResult:
        where = params.where()
        found = await _rows(
            conn,
            "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace"
            " WHERE e.extname = 'pg_stat_statements'",
        )
        if not found:
            return StepResult(
                False,
                f"{where}: pg_stat_statements is not installed in database {params.dbname!r} "
                "(CREATE EXTENSION pg_stat_statements; it must also be in shared_preload_libraries)",
                {"installed": False},
            )
        new = (conn.info.server_version or 0) >= 130000  # mean_time became mean_exec_time in 13
        mean, total = ("mean_exec_time", "total_exec_time") if new else ("mean_time", "total_time")
        query = sql.SQL(
            "SELECT left(query, 1000), calls, {mean}, {total} FROM {view}"
            " WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) AND {mean} > %s"
            " ORDER BY {mean} DESC LIMIT %s"
        ).format(
            mean=sql.Identifier(mean),
            total=sql.Identifier(total),
            view=sql.Identifier(found[0][0], "pg_stat_statements"),
        )
        rows = await _rows(conn, query, (params.min_mean_ms, params.limit))
        statements = [
            {"query": _excerpt(q), "calls": calls, "meanMs": round(m, 1), "totalMs": round(t, 1)}
            for q, calls, m, t in rows
        ]
        output = {"installed": True, "count": len(statements), "statements": statements}
        if not statements:
            return StepResult(True, f"{where}: no statement averages above {params.min_mean_ms:g}ms", output)
        top = statements[0]
        return StepResult(
            False,
            f"{where}: {len(statements)} statement(s) average above {params.min_mean_ms:g}ms; slowest "
            f"{top['meanMs']}ms over {top['calls']} call(s): {top['query']}",
            output,
        )

    return await _session(params, ctx, work)


async def blocking_locks(params: ServerParams, ctx: ActionContext) -> StepResult:
    async def work(conn: Connection) -> StepResult:
        where = params.where()
        blocked_rows = await _rows(
            conn,
            "SELECT pid, usename, left(query, 1000), pg_blocking_pids(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND cardinality(pg_blocking_pids(pid)) > 0 ORDER BY pid",
        )
        if not blocked_rows:
            return StepResult(True, f"{where}: no session waits on a lock", {"blockedPids": [], "blockingPids": []})
        blocking_pids = sorted({pid for row in blocked_rows for pid in row[3]})
        blocking_rows = await _rows(
            conn,
            "SELECT pid, usename, state, left(query, 1000) FROM pg_stat_activity WHERE pid = ANY(%s) ORDER BY pid",
            (blocking_pids,),
        )
        blocked = [{"pid": p, "user": u, "query": _excerpt(q), "blockedBy": list(by)} for p, u, q, by in blocked_rows]
        blocking = [{"pid": p, "user": u, "state": s, "query": _excerpt(q)} for p, u, s, q in blocking_rows]
        output = {
            "blockedPids": [b["pid"] for b in blocked],
            "blockingPids": blocking_pids,
            "blocked": blocked,
            "blocking": blocking,
        }
        culprits = "; ".join(f"pid {b['pid']} ({b['user']}, {b['state']}): {b['query']}" for b in blocking)
        return StepResult(False, f"{where}: {len(blocked)} session(s) blocked by {culprits or blocking_pids}", output)

    return await _session(params, ctx, work)


async def database_size(params: DatabaseSizeParams, ctx: ActionContext) -> StepResult:
    async def work(conn: Connection) -> StepResult:
        [(size, pretty)] = await _rows(
            conn, "SELECT pg_database_size(current_database()), pg_size_pretty(pg_database_size(current_database()))"
        )
        output = {"database": params.dbname, "bytes": size, "pretty": pretty}
        text = f"{params.where()}: database {params.dbname!r} is {pretty} ({size} bytes)"
        if params.max_bytes is not None and size > params.max_bytes:
            return StepResult(False, f"{text}, above the limit of {params.max_bytes} bytes", output)
        return StepResult(True, text, output)

    return await _session(params, ctx, work)


async def analyze(params: AnalyzeParams, ctx: ActionContext) -> StepResult:
    from psycopg import sql

    async def work(conn: Connection) -> StepResult:
        if params.table is None:
            target, statement = f"database {params.dbname!r}", sql.Composed([sql.SQL("ANALYZE")])
        else:
            parts = (params.table,) if params.table_schema is None else (params.table_schema, params.table)
            target = f"table {'.'.join(parts)!r}"
            statement = sql.SQL("ANALYZE {}").format(sql.Identifier(*parts))
        started = time.perf_counter()
        await conn.execute(statement)
        elapsed = time.perf_counter() - started
        output = {"target": target, "seconds": round(elapsed, 3)}
        return StepResult(True, f"{params.where()}: analyzed {target} in {elapsed:.3f}s", output)

    return await _session(params, ctx, work)


async def reindex(params: ReindexParams, ctx: ActionContext) -> StepResult:
    from psycopg import sql

    async def work(conn: Connection) -> StepResult:
        how = sql.SQL("CONCURRENTLY ") if params.concurrently else sql.SQL("")
        started = time.perf_counter()
        await conn.execute(sql.SQL("REINDEX DATABASE {}{}").format(how, sql.Identifier(params.dbname)))
        elapsed = time.perf_counter() - started
        mode = " concurrently" if params.concurrently else ""
        output = {"database": params.dbname, "concurrently": params.concurrently, "seconds": round(elapsed, 3)}
        return StepResult(
            True, f"{params.where()}: reindexed database {params.dbname!r}{mode} in {elapsed:.3f}s", output
        )

    return await _session(params, ctx, work)


async def terminate_backend(params: TerminateParams, ctx: ActionContext) -> StepResult:
    async def work(conn: Connection) -> StepResult:
        where, pid = params.where(), params.pid
        if pid == conn.info.backend_pid:
            return StepResult(False, f"{where}: pid {pid} is this step's own connection; not terminating it")
        found = await _rows(
            conn,
            "SELECT usename, datname, state, backend_type, left(query, 1000) FROM pg_stat_activity WHERE pid = %s",
            (pid,),
        )
        if not found:
            return StepResult(False, f"{where}: no backend with pid {pid}", {"pid": pid, "terminated": False})
        user, database, state, kind, query = found[0]
        output = {"pid": pid, "user": user, "database": database, "state": state, "query": _excerpt(query)}
        if (conn.info.server_version or 0) >= 140000:  # wait (bounded) until the backend is really gone
            wait_ms = max(1, int(min(ctx.timeout / 2, 5.0) * 1000))
            [(done,)] = await _rows(conn, "SELECT pg_terminate_backend(%s, %s)", (pid, wait_ms))
        else:
            [(done,)] = await _rows(conn, "SELECT pg_terminate_backend(%s)", (pid,))
        described = f"pid {pid} ({kind}, {user or '-'}, {state or '-'})"
        if not done:
            return StepResult(False, f"{where}: {described} did not terminate", {**output, "terminated": False})
        return StepResult(True, f"{where}: terminated {described}", {**output, "terminated": True})

    return await _session(params, ctx, work)


ACTIONS: tuple[Action[Any], ...] = (
    Action("postgres.ping", ServerParams, ping, "connect and run SELECT 1 (psql -c 'SELECT 1')", 10.0, read_only=True),
    Action(
        "postgres.connections",
        ConnectionsParams,
        connections,
        "client connections in pg_stat_activity against max_connections",
        10.0,
        read_only=True,
    ),
    Action(
        "postgres.slowQueries",
        SlowQueriesParams,
        slow_queries,
        "the slowest statements by mean time from pg_stat_statements; fails when any exceed minMeanMs",
        15.0,
        read_only=True,
    ),
    Action(
        "postgres.blockingLocks",
        ServerParams,
        blocking_locks,
        "sessions of the database waiting on locks and the pids blocking them; fails when there are any",
        15.0,
        read_only=True,
    ),
    Action(
        "postgres.databaseSize",
        DatabaseSizeParams,
        database_size,
        "pg_database_size of the database, optionally against a limit",
        10.0,
        read_only=True,
    ),
    Action("postgres.analyze", AnalyzeParams, analyze, "ANALYZE the database or one table (update statistics)", 300.0),
    Action(
        "postgres.reindex", ReindexParams, reindex, "REINDEX DATABASE (rebuild its indexes)", 600.0, destructive=True
    ),
    Action(
        "postgres.terminateBackend",
        TerminateParams,
        terminate_backend,
        "pg_terminate_backend of one backend pid (never the step's own)",
        15.0,
        destructive=True,
    ),
)
