"""The lab's real servers: PostgreSQL, Redis, Prometheus and Alertmanager as child processes.

Each binds the address the lab gives it (a loopback address of its own, on the port the
ISH Chat pack uses), writes its data and log under the lab's directory, and is stopped by
its own pid. :class:`Server` is the shared part: start, readiness, stop; the subclasses say
what to run. The lab stops and starts PostgreSQL and Redis to inject faults, and the lab's
kubelet starts them again when a rollout restart of their StatefulSet asks for it.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
import redis

PG_BIN = Path(os.environ.get("RUNBOOK_LAB_PG_BIN", "/usr/lib/postgresql/15/bin"))


class ServerError(RuntimeError):
    """A lab server did not start; the message carries the end of its log."""


class Server:
    """One child process with a log file; ``start`` returns once ``ready`` says so."""

    name = "server"
    stop_signal = signal.SIGTERM

    def __init__(self, root: Path, host: str, port: int) -> None:
        self.root, self.host, self.port = root, host, port
        self.proc: subprocess.Popen[bytes] | None = None
        root.mkdir(parents=True, exist_ok=True)

    @property
    def log_path(self) -> Path:
        return self.root / f"{self.name}.log"

    def command(self) -> list[str]:
        raise NotImplementedError

    def ready(self) -> bool:
        raise NotImplementedError

    def popen_options(self) -> dict[str, Any]:
        return {}

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 60.0) -> None:
        if self.running:
            return
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.command(), cwd=self.root, stdout=log, stderr=subprocess.STDOUT, **self.popen_options()
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerError(f"{self.name} exited ({self.proc.returncode}): {self.tail()}")
            with contextlib.suppress(Exception):
                if self.ready():
                    return
            time.sleep(0.2)
        self.stop()
        raise ServerError(f"{self.name} was not ready on {self.host}:{self.port} within {timeout:.0f}s: {self.tail()}")

    def stop(self, grace: float = 15.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        os.kill(proc.pid, self.stop_signal)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)

    def tail(self, chars: int = 1500) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"


def _owner() -> tuple[str, int, int]:
    """Who runs PostgreSQL: `postgres` when we are root (it refuses root), else ourselves."""
    entry = pwd.getpwnam("postgres") if os.geteuid() == 0 else pwd.getpwuid(os.geteuid())
    return entry.pw_name, entry.pw_uid, entry.pw_gid


class Postgres(Server):
    """PostgreSQL 15 with pg_stat_statements; ``superuser`` connects over the unix socket."""

    name = "postgres"
    stop_signal = signal.SIGINT  # fast shutdown: ends the sessions, then exits

    def __init__(self, root: Path, host: str, port: int = 5432, clients: tuple[str, ...] = ()) -> None:
        """``clients``: networks besides loopback whose connections authenticate by password (a real
        node's pods: their traffic reaches the loopback address through a DNAT rule, from their own IP)."""
        super().__init__(root, host, port)
        self.data = root / "data"
        self.clients = clients
        self.user, self.uid, self.gid = _owner()

    def popen_options(self) -> dict[str, Any]:
        if os.geteuid() != 0:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}

    def init(self, database: str, role: str, password: str) -> None:
        """initdb, start, and create the role and its database with pg_stat_statements."""
        if not (self.data / "PG_VERSION").exists():
            os.chown(self.root, self.uid, self.gid)
            os.chmod(self.root, 0o700)
            args = [str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "-E", "UTF8", "--locale=C"]
            args += ["--auth-host=scram-sha-256", "--auth-local=trust", "--no-sync", "--no-instructions"]
            done = subprocess.run(
                args, cwd=self.root, capture_output=True, timeout=120, check=False, **self.popen_options()
            )
            if done.returncode:
                raise ServerError(f"initdb failed: {done.stderr.decode(errors='replace')[-1500:]}")
            with (self.data / "pg_hba.conf").open("a") as hba:
                hba.writelines(f"host all all {network} scram-sha-256\n" for network in self.clients)
        self.start()
        role_sql, db_sql = psycopg.sql.Identifier(role), psycopg.sql.Identifier(database)
        with self.superuser() as admin:
            exists = admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
            verb = "ALTER" if exists else "CREATE"
            admin.execute(
                psycopg.sql.SQL(verb + " ROLE {} LOGIN PASSWORD {}").format(role_sql, psycopg.sql.Literal(password))
            )
            if not admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone():
                admin.execute(psycopg.sql.SQL("CREATE DATABASE {} OWNER {}").format(db_sql, role_sql))
        with self.superuser(database) as admin:
            admin.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")

    def command(self) -> list[str]:
        args = [str(PG_BIN / "postgres"), "-D", str(self.data), "-p", str(self.port), "-k", str(self.root)]
        settings = (
            f"listen_addresses={self.host}",
            "shared_preload_libraries=pg_stat_statements",
            "max_connections=40",
            "fsync=off",  # a throwaway cluster: speed over durability
            "synchronous_commit=off",
            "full_page_writes=off",
        )
        return args + [arg for setting in settings for arg in ("-c", setting)]

    def superuser(self, dbname: str = "postgres") -> psycopg.Connection[Any]:
        return psycopg.connect(
            host=str(self.root), port=self.port, user="postgres", dbname=dbname, autocommit=True, connect_timeout=3
        )

    def ready(self) -> bool:
        self.superuser().close()
        return True


class Redis(Server):
    name = "redis"

    def __init__(self, root: Path, host: str, port: int = 6379, password: str | None = None) -> None:
        super().__init__(root, host, port)
        self.password = password

    def command(self) -> list[str]:
        args = [
            shutil.which("redis-server") or "/usr/bin/redis-server",
            *("--bind", self.host, "--port", str(self.port), "--save", "", "--appendonly", "no"),
            *("--dir", str(self.root), "--daemonize", "no"),
        ]
        return args + (["--requirepass", self.password] if self.password else [])

    def client(self) -> redis.Redis:
        return redis.Redis(
            host=self.host, port=self.port, password=self.password, socket_timeout=3, socket_connect_timeout=3
        )

    def ready(self) -> bool:
        with contextlib.closing(self.client()) as client:
            return bool(client.ping())


class _HttpServer(Server):
    health_path = "/-/ready"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def ready(self) -> bool:
        return httpx.get(self.url + self.health_path, timeout=1).status_code == 200


class Prometheus(_HttpServer):
    name = "prometheus"

    def __init__(self, root: Path, host: str, port: int = 9090) -> None:
        super().__init__(root, host, port)
        self.config = root / "prometheus.yml"

    def command(self) -> list[str]:
        return [
            shutil.which("prometheus") or "/usr/bin/prometheus",
            f"--config.file={self.config}",
            f"--storage.tsdb.path={self.root / 'data'}",
            f"--web.listen-address={self.host}:{self.port}",
            "--log.level=warn",
        ]

    def query(self, promql: str) -> list[dict[str, Any]]:
        answer = httpx.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=5).json()
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def firing(self) -> set[str]:
        """The names of the alerts Prometheus has firing now."""
        answer = httpx.get(f"{self.url}/api/v1/alerts", timeout=5).json()
        return {a["labels"]["alertname"] for a in answer["data"]["alerts"] if a["state"] == "firing"}


class Alertmanager(_HttpServer):
    name = "alertmanager"

    def __init__(self, root: Path, host: str, port: int = 9093) -> None:
        super().__init__(root, host, port)
        self.config = root / "alertmanager.yml"

    def command(self) -> list[str]:
        return [
            shutil.which("prometheus-alertmanager") or "/usr/bin/prometheus-alertmanager",
            f"--config.file={self.config}",
            f"--storage.path={self.root / 'data'}",
            f"--web.listen-address={self.host}:{self.port}",
            "--cluster.listen-address=",  # no gossip
            "--log.level=warn",
        ]
