"""Real PostgreSQL 15 and Redis servers on free loopback ports, started once per session.

Both run as child processes of the test run, are stopped by pid at the end and leave no
files behind. PostgreSQL refuses to run as root, so it runs as the ``postgres`` user.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

from runbook_lab.controlplane import free_port
from runbook_lab.services import Postgres, Redis, ServerError
from runbook_operator.actions import ActionContext
from runbook_operator.domain.results import StepResult
from runbook_operator.engine.executor import run_action
from tests.unit.builders import REGISTRY

PG_PASSWORD = "pg-Pa55-7f3c1e9b"  # distinctive, so a leak in a result cannot hide
REDIS_PASSWORD = "rd-Pa55-2b8d4a61"
WRONG_PASSWORD = "wrong-Pa55-0c4d"


class FakeServices:
    """Secrets by (name, key); the real Secret read is covered by the e2e tests."""

    def __init__(self, secrets: dict[tuple[str, str], str]) -> None:
        self.secrets = secrets

    async def read_secret(self, namespace: str, name: str, key: str, policy: str | None) -> str:
        try:
            return self.secrets[(name, key)]
        except KeyError:
            raise LookupError(f"secret {namespace}/{name} has no key {key!r}") from None

    async def rest(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    async def run_blocking(self, fn: Callable[..., Any], *args: Any) -> Any:
        return fn(*args)


SECRETS = {
    ("pg", "password"): PG_PASSWORD,
    ("pg-wrong", "password"): WRONG_PASSWORD,
    ("redis", "password"): REDIS_PASSWORD,
    ("redis-wrong", "password"): WRONG_PASSWORD,
}


def services() -> FakeServices:
    return FakeServices(SECRETS)


def context(timeout: float = 10.0) -> ActionContext:
    """A fresh context per call: it remembers the secrets it revealed."""
    return ActionContext("ns", "inc", timeout=timeout, services=services())


async def run(name: str, params: dict[str, Any], timeout: float = 10.0) -> StepResult:
    """Parse like a policy apply does, then run the action itself (no step timeout, no redaction)."""
    return await run_action(REGISTRY.get(name), REGISTRY.parse(name, params), context(timeout))


@dataclass
class PostgresServer:
    server: Postgres  # the lab's PostgreSQL process (runbook_lab.services)
    user: str = "runbook"
    database: str = "app"  # has pg_stat_statements
    plain: str = "plain"  # has not
    password: str = PG_PASSWORD

    @property
    def port(self) -> int:
        return self.server.port

    def params(self, **extra: Any) -> dict[str, Any]:
        """The `with:` of a postgres step against this server, as a policy would write it."""
        return {
            "host": "127.0.0.1",
            "port": self.port,
            "dbname": self.database,
            "user": self.user,
            "passwordSecretRef": {"name": "pg", "key": "password"},
            **extra,
        }

    def conninfo(self, dbname: str | None = None, superuser: bool = False) -> dict[str, Any]:
        """How the tests themselves connect: as the role over TCP, or as postgres over the socket."""
        if superuser:
            return {
                "host": str(self.server.root),
                "port": self.port,
                "user": "postgres",
                "dbname": dbname or "postgres",
            }
        return {
            "host": "127.0.0.1",
            "port": self.port,
            "user": self.user,
            "password": self.password,
            "dbname": dbname or self.database,
        }

    def log(self) -> str:
        return self.server.log_path.read_text(errors="replace")

    def connect(self, dbname: str | None = None, superuser: bool = False) -> psycopg.Connection[Any]:
        return psycopg.connect(**self.conninfo(dbname, superuser), autocommit=True)

    async def aconnect(
        self, dbname: str | None = None, superuser: bool = False, autocommit: bool = True
    ) -> psycopg.AsyncConnection[Any]:
        return await psycopg.AsyncConnection.connect(**self.conninfo(dbname, superuser), autocommit=autocommit)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    root = Path(tempfile.mkdtemp(prefix="rbo-pg-"))
    server: Postgres | None = None
    try:
        for _ in range(3):  # a free port can be taken between finding it and binding it
            server = Postgres(root, "127.0.0.1", free_port())  # init() hands root to the postgres user
            try:
                server.init(PostgresServer.database, PostgresServer.user, PG_PASSWORD)
                break
            except ServerError:
                server.stop()
        else:
            raise AssertionError(f"postgres did not start: {server.tail() if server else ''}")
        with server.superuser() as admin:
            admin.execute(f"CREATE DATABASE {PostgresServer.plain} OWNER {PostgresServer.user}")
        yield PostgresServer(server)
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pg(postgres: PostgresServer) -> Iterator[psycopg.Connection[Any]]:
    """A connection as the role to the database with pg_stat_statements, for setup and checks."""
    with postgres.connect() as conn:
        yield conn


@pytest.fixture
def table(pg: psycopg.Connection[Any]) -> Iterator[str]:
    """A fresh table with rows and an index, dropped afterwards."""
    name = f"t_{os.urandom(4).hex()}"
    pg.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, body text)")
    pg.execute(f"INSERT INTO {name} SELECT g, md5(g::text) FROM generate_series(1, 500) g")
    yield name
    pg.execute(f"DROP TABLE IF EXISTS {name}")


# -- Redis -----------------------------------------------------------------------------


@dataclass
class RedisServer:
    port: int
    password: str = REDIS_PASSWORD

    def params(self, **extra: Any) -> dict[str, Any]:
        return {
            "host": "127.0.0.1",
            "port": self.port,
            "passwordSecretRef": {"name": "redis", "key": "password"},
            **extra,
        }

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, db=db, password=self.password)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    root = Path(tempfile.mkdtemp(prefix="rbo-redis-"))
    server: Redis | None = None
    try:
        for _ in range(3):
            server = Redis(root, "127.0.0.1", free_port(), password=REDIS_PASSWORD)
            try:
                server.start(15)
                break
            except ServerError:
                server.stop()
        else:
            raise AssertionError(f"redis did not start: {server.tail() if server else ''}")
        yield RedisServer(server.port)
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def rd(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """An admin client; every test starts from an empty server without a memory limit."""
    with contextlib.closing(redis_server.client()) as client:
        client.flushall()
        client.config_set("maxmemory", 0)
        yield client
