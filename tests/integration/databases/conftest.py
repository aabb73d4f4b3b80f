"""Real PostgreSQL 15 and Redis servers on free loopback ports, started once per session.

Both run as child processes of the test run, are stopped by pid at the end and leave no
files behind. PostgreSQL refuses to run as root, so it runs as the ``postgres`` user.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

from runbook_operator.actions import ActionContext
from runbook_operator.domain.lifecycle import StepResult
from runbook_operator.lab.controlplane import free_port
from tests.fixtures.common import wait_for
from tests.unit.builders import REGISTRY

PG_BIN = Path("/usr/lib/postgresql/15/bin")
REDIS_SERVER = "/usr/bin/redis-server"
PG_PASSWORD = "pg-Pa55-7f3c1e9b"  # distinctive, so a leak in a result cannot hide
REDIS_PASSWORD = "rd-Pa55-2b8d4a61"
WRONG_PASSWORD = "wrong-Pa55-0c4d"


class FakeServices:
    """Secrets by (name, key); the real Secret read is covered by the e2e tests."""

    def __init__(self, secrets: dict[tuple[str, str], str]) -> None:
        self.secrets = secrets

    async def read_secret(self, namespace: str, name: str, key: str) -> str:
        try:
            return self.secrets[(name, key)]
        except KeyError:
            raise LookupError(f"secret {namespace}/{name} has no key {key!r}") from None

    def api_client(self) -> Any:
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
    """Parse like a policy apply does, then run the action itself (no executor, no redaction)."""
    action = REGISTRY.get(name)
    return await action.run(REGISTRY.parse(name, params), context(timeout))


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    """Stop one child by its pid; kill it if it does not go in time."""
    if proc.poll() is None:
        os.kill(proc.pid, sig)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)


# -- PostgreSQL ------------------------------------------------------------------------


@dataclass
class PostgresServer:
    port: int
    socket_dir: Path
    user: str = "runbook"
    database: str = "app"  # has pg_stat_statements
    plain: str = "plain"  # has not
    password: str = PG_PASSWORD
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

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
            return {"host": str(self.socket_dir), "port": self.port, "user": "postgres", "dbname": dbname or "postgres"}
        return {
            "host": "127.0.0.1",
            "port": self.port,
            "user": self.user,
            "password": self.password,
            "dbname": dbname or self.database,
        }

    def log(self) -> str:
        return (self.socket_dir / "postgres.log").read_text(errors="replace")

    def connect(self, dbname: str | None = None, superuser: bool = False) -> psycopg.Connection[Any]:
        return psycopg.connect(**self.conninfo(dbname, superuser), autocommit=True)

    async def aconnect(
        self, dbname: str | None = None, superuser: bool = False, autocommit: bool = True
    ) -> psycopg.AsyncConnection[Any]:
        return await psycopg.AsyncConnection.connect(**self.conninfo(dbname, superuser), autocommit=autocommit)


def _as_postgres(args: list[str], cwd: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        args, cwd=cwd, user="postgres", group="postgres", extra_groups=[], capture_output=True, timeout=60, check=False
    )


SETTINGS = (
    "listen_addresses=127.0.0.1",
    "shared_preload_libraries=pg_stat_statements",
    "max_connections=40",
    "fsync=off",  # a throwaway cluster: speed over durability
    "synchronous_commit=off",
    "full_page_writes=off",
)


def _start_postgres(root: Path, data: Path) -> PostgresServer:
    for _ in range(3):  # a free port can be taken between finding it and binding it
        port = free_port()
        args = [str(PG_BIN / "postgres"), "-D", str(data), "-p", str(port), "-k", str(root)]
        args += [arg for setting in SETTINGS for arg in ("-c", setting)]
        with (root / "postgres.log").open("ab") as log:
            proc = subprocess.Popen(
                args, cwd=root, user="postgres", group="postgres", extra_groups=[], stdout=log, stderr=subprocess.STDOUT
            )
        server = PostgresServer(port, root, proc=proc)

        def ready(server: PostgresServer = server, proc: subprocess.Popen[bytes] = proc) -> bool:
            if proc.poll() is not None:
                return True  # exited: give up on this port
            try:
                server.connect(superuser=True).close()
                return True
            except psycopg.OperationalError:
                return False

        try:
            wait_for(ready, 30, "postgres to accept connections")
        except AssertionError:
            stop(proc, signal.SIGINT)
            raise
        if proc.poll() is None:
            return server
    raise AssertionError(f"postgres did not start: {(root / 'postgres.log').read_text()[-2000:]}")


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    entry = pwd.getpwnam("postgres")
    root = Path(tempfile.mkdtemp(prefix="rbo-pg-"))
    server: PostgresServer | None = None
    try:
        os.chown(root, entry.pw_uid, entry.pw_gid)
        os.chmod(root, 0o700)
        data = root / "data"
        initdb = [str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "-E", "UTF8", "--locale=C"]
        initdb += ["--auth-host=scram-sha-256", "--auth-local=trust", "--no-sync", "--no-instructions"]
        init = _as_postgres(initdb, root)
        assert init.returncode == 0, init.stderr.decode()
        server = _start_postgres(root, data)
        with server.connect(superuser=True) as admin:
            admin.execute(f"CREATE ROLE {server.user} LOGIN PASSWORD '{server.password}'")
            admin.execute(f"CREATE DATABASE {server.database} OWNER {server.user}")
            admin.execute(f"CREATE DATABASE {server.plain} OWNER {server.user}")
        with server.connect(server.database, superuser=True) as admin:
            admin.execute("CREATE EXTENSION pg_stat_statements")
        yield server
    finally:
        if server is not None and server.proc is not None:
            stop(server.proc, signal.SIGINT)  # fast shutdown: ends the sessions, then exits
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
    proc: subprocess.Popen[bytes] | None = None
    try:
        for _ in range(3):
            port = free_port()
            args = [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
            args += ["--requirepass", REDIS_PASSWORD, "--dir", str(root), "--daemonize", "no"]
            with (root / "redis.log").open("ab") as log:
                proc = subprocess.Popen(args, cwd=root, stdout=log, stderr=subprocess.STDOUT)
            server = RedisServer(port)

            def ready(server: RedisServer = server, proc: subprocess.Popen[bytes] = proc) -> bool:
                if proc.poll() is not None:
                    return True
                with contextlib.closing(server.client()) as client:
                    try:
                        return bool(client.ping())
                    except redis.ConnectionError:
                        return False

            wait_for(ready, 15, "redis to answer PING")
            if proc.poll() is None:
                break
        else:
            raise AssertionError(f"redis did not start: {(root / 'redis.log').read_text()[-2000:]}")
        yield server
    finally:
        if proc is not None:
            stop(proc)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def rd(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """An admin client; every test starts from an empty server without a memory limit."""
    with contextlib.closing(redis_server.client()) as client:
        client.flushall()
        client.config_set("maxmemory", 0)
        yield client
