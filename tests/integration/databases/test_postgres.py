"""postgres.* against a real PostgreSQL 15: each action's effect, its failures and its timeout."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import psycopg
import pytest

from runbook_operator.domain.lifecycle import StepCall
from runbook_operator.domain.model import Stage, Step
from runbook_operator.engine.executor import Executor
from tests.fixtures.common import wait_for
from tests.integration.databases.conftest import PG_PASSWORD, WRONG_PASSWORD, PostgresServer, run, services
from tests.unit.builders import REGISTRY, incident

ACTIONS = {
    "postgres.ping": {},
    "postgres.connections": {},
    "postgres.slowQueries": {},
    "postgres.blockingLocks": {},
    "postgres.databaseSize": {},
    "postgres.analyze": {},
    "postgres.reindex": {},
    "postgres.terminateBackend": {"pid": 4242},
}
EVERY = pytest.mark.parametrize(("name", "extra"), list(ACTIONS.items()), ids=list(ACTIONS))


def scalar(conn: psycopg.Connection[Any], query: str, *args: Any) -> Any:
    row = conn.execute(query, args).fetchone()
    assert row is not None
    return row[0]


# -- postgres.ping --------------------------------------------------------------------


async def test_ping_runs_select_1(postgres: PostgresServer) -> None:
    result = await run("postgres.ping", postgres.params())
    assert result.ok, result.message
    assert "SELECT 1 in" in result.message and result.output["serverVersion"].startswith("15.")


# -- postgres.connections -------------------------------------------------------------


async def test_connections_counts_client_backends_against_max_connections(postgres: PostgresServer) -> None:
    before = await run("postgres.connections", postgres.params())
    assert before.ok, before.message
    assert before.output["max"] == 40
    extra = [postgres.connect() for _ in range(3)]
    try:
        after = await run("postgres.connections", postgres.params())
    finally:
        for conn in extra:
            conn.close()
    assert after.ok, after.message
    assert after.output["used"] >= before.output["used"] + 3
    assert after.output["ratio"] == round(after.output["used"] / 40, 3)
    assert f"{after.output['used']}/40 connections in use" in after.message


async def test_connections_fails_above_max_ratio(postgres: PostgresServer) -> None:
    result = await run("postgres.connections", postgres.params(maxRatio=0.01))
    assert not result.ok
    assert result.message.endswith("above 0.01") and result.output["used"] >= 1


# -- postgres.slowQueries -------------------------------------------------------------


async def test_slow_queries_reports_statements_above_the_threshold(
    postgres: PostgresServer, pg: psycopg.Connection[Any]
) -> None:
    pg.execute("SELECT pg_sleep(0.25)")
    result = await run("postgres.slowQueries", postgres.params(minMeanMs=200))
    assert not result.ok, "slow statements are a finding"
    queries = [s["query"] for s in result.output["statements"]]
    assert any("pg_sleep" in q for q in queries), queries
    assert all(s["meanMs"] > 200 for s in result.output["statements"])
    assert "average above 200ms" in result.message


async def test_slow_queries_limits_the_list_and_passes_when_none_is_slow(
    postgres: PostgresServer, pg: psycopg.Connection[Any]
) -> None:
    pg.execute("SELECT pg_sleep(0.01)")
    pg.execute("SELECT 2")
    top = await run("postgres.slowQueries", postgres.params(minMeanMs=0, limit=1))
    assert top.output["count"] == 1 and len(top.output["statements"]) == 1
    quiet = await run("postgres.slowQueries", postgres.params(minMeanMs=10_000_000))
    assert quiet.ok, quiet.message
    assert quiet.output["count"] == 0 and "no statement averages above 1e+07ms" in quiet.message


async def test_slow_queries_says_when_pg_stat_statements_is_not_installed(postgres: PostgresServer) -> None:
    result = await run("postgres.slowQueries", postgres.params(dbname=postgres.plain))
    assert not result.ok
    assert "pg_stat_statements is not installed in database 'plain'" in result.message
    assert result.output == {"installed": False}


# -- postgres.blockingLocks and postgres.terminateBackend -----------------------------


async def test_a_real_lock_is_found_and_its_holder_terminated(postgres: PostgresServer, table: str) -> None:
    holder = await postgres.aconnect(autocommit=False)
    waiter = await postgres.aconnect()
    blocked: asyncio.Task[Any] | None = None
    try:
        await holder.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")  # the transaction stays open
        holder_pid, waiter_pid = holder.info.backend_pid, waiter.info.backend_pid
        blocked = asyncio.create_task(waiter.execute(f"SELECT count(*) FROM {table}"))

        async def waiting() -> bool:
            result = await run("postgres.blockingLocks", postgres.params())
            return waiter_pid in result.output["blockedPids"]

        for _ in range(100):
            if await waiting():
                break
            await asyncio.sleep(0.05)
        found = await run("postgres.blockingLocks", postgres.params())
        assert not found.ok, "blocked sessions are a finding"
        assert found.output["blockedPids"] == [waiter_pid]
        assert found.output["blockingPids"] == [holder_pid]
        assert found.output["blocked"][0]["blockedBy"] == [holder_pid]
        assert f"blocked by pid {holder_pid}" in found.message and "LOCK TABLE" in found.message

        killed = await run("postgres.terminateBackend", postgres.params(pid=str(holder_pid)))  # as a template renders
        assert killed.ok, killed.message
        assert killed.output["terminated"] and f"terminated pid {holder_pid}" in killed.message

        with postgres.connect() as check:
            gone = scalar(check, "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", holder_pid)
        assert gone == 0
        assert f"[{holder_pid}] FATAL:  terminating connection due to administrator command" in postgres.log()
        await asyncio.wait_for(blocked, 5)  # the waiter got its lock
        cleared = await run("postgres.blockingLocks", postgres.params())
        assert cleared.ok and cleared.output["blockedPids"] == [], cleared.message
    finally:
        if blocked is not None and not blocked.done():
            blocked.cancel()
        await holder.close()
        await waiter.close()


async def test_blocking_locks_passes_when_nothing_waits(postgres: PostgresServer) -> None:
    result = await run("postgres.blockingLocks", postgres.params())
    assert result.ok and result.output == {"blockedPids": [], "blockingPids": []}
    assert "no session waits on a lock" in result.message


async def test_terminate_backend_refuses_its_own_connection(
    postgres: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    own = await postgres.aconnect()
    pid = own.info.backend_pid

    async def hand_over(*args: Any, **kwargs: Any) -> psycopg.AsyncConnection[Any]:
        return own  # the step's connection is one whose pid the test knows

    monkeypatch.setattr(psycopg.AsyncConnection, "connect", hand_over)
    result = await run("postgres.terminateBackend", postgres.params(pid=pid))
    monkeypatch.undo()
    assert not result.ok
    assert f"pid {pid} is this step's own connection; not terminating it" in result.message
    assert f"[{pid}] FATAL:  terminating connection due to administrator command" not in postgres.log()


async def test_terminate_backend_fails_for_an_unknown_pid(postgres: PostgresServer) -> None:
    result = await run("postgres.terminateBackend", postgres.params(pid=2_000_000_000))
    assert not result.ok and "no backend with pid 2000000000" in result.message


async def test_terminate_backend_reports_a_refusal_by_the_server(postgres: PostgresServer) -> None:
    with postgres.connect(superuser=True) as su:  # a role may not end a superuser's session
        pid = su.info.backend_pid
        result = await run("postgres.terminateBackend", postgres.params(pid=pid))
        assert scalar(su, "SELECT 1") == 1  # still alive
    assert not result.ok
    assert "InsufficientPrivilege" in result.message and "superuser" in result.message


# -- postgres.databaseSize ------------------------------------------------------------


async def test_database_size_grows_with_the_data(postgres: PostgresServer, pg: psycopg.Connection[Any]) -> None:
    before = await run("postgres.databaseSize", postgres.params())
    assert before.ok, before.message
    assert before.output["bytes"] == scalar(pg, "SELECT pg_database_size('app')")
    assert before.output["pretty"] == scalar(pg, "SELECT pg_size_pretty(%s::bigint)", before.output["bytes"])
    pg.execute("CREATE TABLE size_probe AS SELECT g, repeat('x', 1000) AS pad FROM generate_series(1, 3000) g")
    try:
        after = await run("postgres.databaseSize", postgres.params())
    finally:
        pg.execute("DROP TABLE size_probe")
    assert after.output["bytes"] >= before.output["bytes"] + 2_000_000
    assert f"database 'app' is {after.output['pretty']}" in after.message


async def test_database_size_fails_above_max_bytes(postgres: PostgresServer) -> None:
    result = await run("postgres.databaseSize", postgres.params(maxBytes="1MB"))
    assert not result.ok and result.message.endswith("above the limit of 1048576 bytes")
    assert (await run("postgres.databaseSize", postgres.params(maxBytes="1TB"))).ok


# -- postgres.analyze -----------------------------------------------------------------


def last_analyze(pg: psycopg.Connection[Any], table: str, schema: str = "public") -> Any:
    return scalar(
        pg, "SELECT last_analyze FROM pg_stat_user_tables WHERE schemaname = %s AND relname = %s", schema, table
    )


async def test_analyze_one_table_updates_its_statistics(
    postgres: PostgresServer, pg: psycopg.Connection[Any], table: str
) -> None:
    assert last_analyze(pg, table) is None
    result = await run("postgres.analyze", postgres.params(table=table))
    assert result.ok, result.message
    assert f"analyzed table '{table}'" in result.message
    wait_for(lambda: last_analyze(pg, table), 5, "last_analyze")
    assert scalar(pg, "SELECT count(*) FROM pg_stats WHERE tablename = %s", table) > 0


async def test_analyze_the_whole_database(postgres: PostgresServer, pg: psycopg.Connection[Any], table: str) -> None:
    result = await run("postgres.analyze", postgres.params())
    assert result.ok, result.message
    assert "analyzed database 'app'" in result.message
    wait_for(lambda: last_analyze(pg, table), 5, "last_analyze")


async def test_analyze_quotes_schema_and_table_names(postgres: PostgresServer, pg: psycopg.Connection[Any]) -> None:
    pg.execute('CREATE SCHEMA "Odd Schema"')
    pg.execute('CREATE TABLE "Odd Schema"."Mixed ""Case""; DROP" (id int)')
    pg.execute('INSERT INTO "Odd Schema"."Mixed ""Case""; DROP" SELECT generate_series(1, 50)')
    try:
        result = await run("postgres.analyze", postgres.params(schema="Odd Schema", table='Mixed "Case"; DROP'))
        assert result.ok, result.message
        wait_for(lambda: last_analyze(pg, 'Mixed "Case"; DROP', "Odd Schema"), 5, "last_analyze")
    finally:
        pg.execute('DROP SCHEMA "Odd Schema" CASCADE')


async def test_analyze_of_a_missing_table_fails_clearly(postgres: PostgresServer) -> None:
    result = await run("postgres.analyze", postgres.params(table="no_such_table"))
    assert not result.ok
    assert 'UndefinedTable: relation "no_such_table" does not exist' in result.message


# -- postgres.reindex -----------------------------------------------------------------


def index_file(pg: psycopg.Connection[Any], table: str) -> Any:
    return scalar(pg, "SELECT pg_relation_filenode(%s::regclass)", f"{table}_pkey")


@pytest.mark.parametrize("concurrently", [False, True])
async def test_reindex_rebuilds_the_indexes(
    postgres: PostgresServer, pg: psycopg.Connection[Any], table: str, concurrently: bool
) -> None:
    before = index_file(pg, table)
    result = await run("postgres.reindex", postgres.params(concurrently=concurrently))
    assert result.ok, result.message
    assert "reindexed database 'app'" in result.message
    assert index_file(pg, table) != before  # a rebuilt index lives in a new file
    assert scalar(pg, f"SELECT count(*) FROM {table} WHERE id = 7") == 1


async def test_reindex_of_a_missing_database_fails_clearly(postgres: PostgresServer) -> None:
    result = await run("postgres.reindex", postgres.params(dbname="no_such_db"))
    assert not result.ok
    assert 'database "no_such_db" does not exist' in result.message


# -- failures every action shares -----------------------------------------------------


@EVERY
async def test_a_server_that_is_down(
    postgres: PostgresServer, closed_port: int, name: str, extra: dict[str, Any]
) -> None:
    result = await run(name, postgres.params(port=closed_port, **extra))
    assert not result.ok
    assert f"postgres runbook@127.0.0.1:{closed_port}/app:" in result.message
    assert "Connection refused; Is the server running on that host" in result.message


@EVERY
async def test_a_wrong_password(postgres: PostgresServer, name: str, extra: dict[str, Any]) -> None:
    result = await run(name, postgres.params(passwordSecretRef={"name": "pg-wrong", "key": "password"}, **extra))
    assert not result.ok
    assert 'password authentication failed for user "runbook"' in result.message
    assert WRONG_PASSWORD not in result.message


@EVERY
async def test_a_server_that_never_answers(silent_port: int, name: str, extra: dict[str, Any]) -> None:
    params = {"host": "127.0.0.1", "port": silent_port, "dbname": "app", "user": "runbook"}
    started = time.monotonic()
    result = await run(name, {**params, "passwordSecretRef": {"name": "pg", "key": "password"}, **extra}, timeout=0.5)
    assert time.monotonic() - started < 2
    assert not result.ok
    assert result.message == f"postgres runbook@127.0.0.1:{silent_port}/app: no answer within 0.5s"


async def test_a_missing_secret_is_named(postgres: PostgresServer) -> None:
    result = await run("postgres.ping", postgres.params(passwordSecretRef={"name": "nope", "key": "pw"}))
    assert not result.ok
    assert "cannot read the password from Secret 'nope' key 'pw': secret ns/nope has no key 'pw'" in result.message


async def test_a_statement_is_bounded_by_the_step_timeout(postgres: PostgresServer, table: str) -> None:
    holder = await postgres.aconnect(autocommit=False)
    try:
        await holder.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        result = await run("postgres.analyze", postgres.params(table=table), timeout=0.5)
        assert time.monotonic() - started < 2
        assert not result.ok
        assert result.message.endswith("not finished within 0.5s; the statement was cancelled"), result.message
        with postgres.connect() as check:  # the server gave up on it too
            waiting = "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'ANALYZE%%' AND pid <> pg_backend_pid()"
            wait_for(lambda: scalar(check, waiting) == 0, 5, "the ANALYZE to be cancelled")
    finally:
        await holder.close()


async def test_a_statement_cancelled_on_the_server_is_reported(postgres: PostgresServer, table: str) -> None:
    holder = await postgres.aconnect(autocommit=False)
    try:
        await holder.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        step = asyncio.create_task(run("postgres.analyze", postgres.params(table=table)))
        with postgres.connect(superuser=True) as su:
            find = "SELECT pid FROM pg_stat_activity WHERE application_name = 'runbook-operator' AND wait_event_type = 'Lock'"
            for _ in range(100):  # let the step run meanwhile
                await asyncio.sleep(0.05)
                if row := su.execute(find).fetchone():
                    break
            assert row, "the ANALYZE never waited on the lock"
            pid = row[0]
            su.execute("SELECT pg_cancel_backend(%s)", (pid,))
        result = await asyncio.wait_for(step, 5)
        assert not result.ok
        assert result.message.endswith("/app: cancelled: canceling statement due to user request"), result.message
    finally:
        await holder.close()


# -- the executor: secrets never leave a step -----------------------------------------


@pytest.mark.parametrize(
    ("user", "ref"),
    [
        ("runbook", "pg"),  # succeeds
        ("runbook", "pg-wrong"),  # the server refuses
        (PG_PASSWORD, "pg"),  # the server's message names the user, which here is the password
    ],
)
async def test_the_executor_scrubs_the_password_from_results(postgres: PostgresServer, user: str, ref: str) -> None:
    params = postgres.params(user=user, passwordSecretRef={"name": ref, "key": "password"})
    step = Step("db-up", Stage.DIAGNOSE, "postgres.ping", params)
    result = await Executor(REGISTRY, services=services()).run(incident(), StepCall(step, 1, params))
    assert result.ok == (user == "runbook" and ref == "pg"), result.message
    text = result.message + json.dumps(dict(result.output))
    assert PG_PASSWORD not in text and WRONG_PASSWORD not in text
    if user == PG_PASSWORD:
        assert 'password authentication failed for user "***"' in result.message


# -- parameters -----------------------------------------------------------------------


BASE = {"host": "db", "dbname": "app", "user": "runbook", "passwordSecretRef": {"name": "pg", "key": "password"}}


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("postgres.ping", {k: v for k, v in BASE.items() if k != "host"}, "host: Field required"),
        (
            "postgres.ping",
            {k: v for k, v in BASE.items() if k != "passwordSecretRef"},
            "passwordSecretRef: Field required",
        ),
        ("postgres.ping", {**BASE, "password": "hunter2"}, "password: Extra inputs are not permitted"),
        ("postgres.ping", {**BASE, "passwordSecretRef": {"name": "pg"}}, "passwordSecretRef.key: Field required"),
        ("postgres.ping", {**BASE, "port": 0}, "port: Input should be greater than or equal to 1"),
        ("postgres.ping", {**BASE, "host": ""}, "host: String should have at least 1 character"),
        ("postgres.ping", {**BASE, "sslmode": "maybe"}, "sslmode: Input should be 'disable', 'allow', 'prefer'"),
        ("postgres.connections", {**BASE, "maxRatio": 0}, "maxRatio: Input should be greater than 0"),
        ("postgres.connections", {**BASE, "maxRatio": 1.5}, "maxRatio: Input should be less than or equal to 1"),
        ("postgres.slowQueries", {**BASE, "limit": 0}, "limit: Input should be greater than or equal to 1"),
        ("postgres.slowQueries", {**BASE, "minMeanMs": -1}, "minMeanMs: Input should be greater than or equal to 0"),
        ("postgres.databaseSize", {**BASE, "maxBytes": "lots"}, "maxBytes: Value error, invalid size 'lots'"),
        ("postgres.databaseSize", {**BASE, "maxBytes": 0}, "maxBytes: Input should be greater than 0"),
        ("postgres.analyze", {**BASE, "schema": "public"}, "Value error, schema is set but table is not"),
        ("postgres.analyze", {**BASE, "table": ""}, "table: String should have at least 1 character"),
        ("postgres.reindex", {**BASE, "concurrently": "sometimes"}, "concurrently: Input should be a valid boolean"),
        ("postgres.terminateBackend", BASE, "pid: Field required"),
        ("postgres.terminateBackend", {**BASE, "pid": -5}, "pid: Input should be greater than 0"),
        ("postgres.terminateBackend", {**BASE, "pid": "abc"}, "pid: Input should be a valid integer"),
        ("postgres.blockingLocks", {**BASE, "limit": 3}, "limit: Extra inputs are not permitted"),
    ],
)
def test_parameters_are_validated_with_precise_messages(name: str, params: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        REGISTRY.check(name, params)


def test_templated_values_wait_and_strings_are_coerced() -> None:
    traits = REGISTRY.check("postgres.terminateBackend", {**BASE, "pid": "{{ steps.locks.output.blockingPids[0] }}"})
    assert traits.destructive
    assert REGISTRY.parse("postgres.terminateBackend", {**BASE, "pid": "123"}).pid == 123  # type: ignore[attr-defined]
    assert REGISTRY.parse("postgres.databaseSize", {**BASE, "maxBytes": "10GB"}).max_bytes == 10 * 1024**3  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("name", "destructive", "read_only"),
    [
        ("postgres.ping", False, True),
        ("postgres.connections", False, True),
        ("postgres.slowQueries", False, True),
        ("postgres.blockingLocks", False, True),
        ("postgres.databaseSize", False, True),
        ("postgres.analyze", False, False),
        ("postgres.reindex", True, False),
        ("postgres.terminateBackend", True, False),
    ],
)
def test_traits(name: str, destructive: bool, read_only: bool) -> None:
    traits = REGISTRY.check(name, {**BASE, "pid": 1} if name.endswith("terminateBackend") else BASE)
    assert (traits.destructive, traits.read_only) == (destructive, read_only)


async def test_every_call_closes_its_connection(postgres: PostgresServer, pg: psycopg.Connection[Any]) -> None:
    await run("postgres.ping", postgres.params())
    await run("postgres.analyze", postgres.params(table="no_such_table"))
    await run("postgres.terminateBackend", postgres.params(pid=2_000_000_000))
    ours = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'runbook-operator'"
    wait_for(lambda: scalar(pg, ours) == 0, 5, "the steps' sessions to end")


async def test_a_host_that_does_not_resolve() -> None:
    params = {"host": "no-such-host.invalid", "dbname": "app", "user": "runbook"}
    result = await run("postgres.ping", {**params, "passwordSecretRef": {"name": "pg", "key": "password"}})
    assert not result.ok
    assert result.message.startswith("postgres runbook@no-such-host.invalid:5432/app: ")
    assert "failed to resolve host 'no-such-host.invalid'" in result.message
