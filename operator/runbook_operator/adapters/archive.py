"""An optional PostgreSQL archive of finished incidents, for history and MTTA/MTTR reports.

``Archive`` talks to the database (psycopg 3, async): versioned, idempotent schema
migrations, an UPSERT per incident keyed by its uid, and per-alert statistics
computed in SQL. ``ArchiveWriter`` sits between the reconciler and the archive:
``enqueue`` never blocks an incident task; one background task drains a bounded
queue, and while the database is down it keeps the records, logs one warning per
outage and retries with a capped backoff.

The DSN carries a password, so it never reaches a log line or an error message:
only ``host:port/dbname`` is shown (see ``where``) and database errors are redacted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # psycopg (~10 MB) is imported only when an archive is configured
    import psycopg

from runbook_operator.adapters.metrics import ArchiveMetrics
from runbook_operator.domain.model import Incident, Policy
from runbook_operator.domain.resources import API_VERSION
from runbook_operator.domain.status import Phase, Status, parse_timestamp, timestamp
from runbook_operator.domain.wire import plain

log = logging.getLogger(__name__)

TERMINAL = (Phase.RESOLVED.value, Phase.ESCALATED.value)
TABLE = "incident_archive"
POLICIES = "policy_archive"  # each version of a policy that drove an archived incident, by its spec's digest
CONNECT_TIMEOUT = 5  # seconds; a database that does not answer counts as down
_ROLE = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_LOCK = 0x72626F61  # pg_advisory_xact_lock key: two operators migrating at once take turns

# (version, statements): append only; a database at version N runs the ones above N, once.
MIGRATIONS: tuple[tuple[int, tuple[str, ...]], ...] = (
    (
        1,
        (
            f"""CREATE TABLE {TABLE} (
                uid text PRIMARY KEY,
                namespace text NOT NULL,
                name text NOT NULL,
                alert text NOT NULL,
                severity text,
                policy text,
                phase text NOT NULL,
                reason text,
                started_at timestamptz,
                acknowledged_at timestamptz,
                resolved_at timestamptz,
                attempts integer NOT NULL DEFAULT 0,
                findings jsonb NOT NULL DEFAULT '[]',
                steps jsonb NOT NULL DEFAULT '[]',
                timeline jsonb NOT NULL DEFAULT '[]',
                escalation jsonb NOT NULL DEFAULT '{{}}',
                archived_at timestamptz NOT NULL DEFAULT now()
            )""",
        ),
    ),
    (
        2,
        (
            f"CREATE INDEX {TABLE}_started_at ON {TABLE} (started_at)",
            f"CREATE INDEX {TABLE}_alert ON {TABLE} (alert, started_at)",
        ),
    ),
    (
        3,  # what a replay needs (issue 25); a row archived before has no spec: not replayable, never guessed
        (
            f"ALTER TABLE {TABLE} ADD COLUMN spec jsonb",
            f"ALTER TABLE {TABLE} ADD COLUMN created_at timestamptz",
            f"ALTER TABLE {TABLE} ADD COLUMN policy_generation integer",
            f"ALTER TABLE {TABLE} ADD COLUMN policy_digest text",
            f"""CREATE TABLE {POLICIES} (
                digest text PRIMARY KEY,
                namespace text NOT NULL,
                name text NOT NULL,
                generation integer NOT NULL,
                spec jsonb NOT NULL,
                archived_at timestamptz NOT NULL DEFAULT now()
            )""",
        ),
    ),
)
SCHEMA_VERSION = MIGRATIONS[-1][0]

_COLUMNS = (
    "uid", "namespace", "name", "alert", "severity", "policy", "phase", "reason", "started_at",
    "acknowledged_at", "resolved_at", "attempts", "findings", "steps", "timeline", "escalation", "archived_at",
    "spec", "created_at", "policy_generation", "policy_digest",
)  # fmt: skip
_JSON = ("findings", "steps", "timeline", "escalation", "spec")
_POLICY_COLUMNS = ("digest", "namespace", "name", "generation", "spec")
_POLICY_INSERT = (
    f"INSERT INTO {POLICIES} ({', '.join(_POLICY_COLUMNS)}) VALUES ({', '.join(f'%({c})s' for c in _POLICY_COLUMNS)}) "
    "ON CONFLICT (digest) DO NOTHING"
)
_UPSERT = (
    f"INSERT INTO {TABLE} ({', '.join(_COLUMNS)}) VALUES ({', '.join(f'%({c})s' for c in _COLUMNS)}) "
    f"ON CONFLICT (uid) DO UPDATE SET {', '.join(f'{c} = EXCLUDED.{c}' for c in _COLUMNS if c != 'uid')}"
)
_STATS = f"""
SELECT alert,
       count(*) AS incidents,
       count(*) FILTER (WHERE phase = %(resolved)s) AS resolved,
       count(*) FILTER (WHERE phase = %(escalated)s) AS escalated,
       count(*) FILTER (WHERE phase <> %(resolved)s AND phase <> %(escalated)s) AS other,
       avg(tta), percentile_cont(0.5) WITHIN GROUP (ORDER BY tta), percentile_cont(0.9) WITHIN GROUP (ORDER BY tta),
       avg(ttr), percentile_cont(0.5) WITHIN GROUP (ORDER BY ttr), percentile_cont(0.9) WITHIN GROUP (ORDER BY ttr)
FROM (
    SELECT alert, phase,
           EXTRACT(EPOCH FROM acknowledged_at - started_at)::float8 AS tta,
           CASE WHEN phase = %(resolved)s THEN EXTRACT(EPOCH FROM resolved_at - started_at)::float8 END AS ttr
    FROM {TABLE}
    WHERE coalesce(started_at, archived_at) >= now() - %(since)s
) AS finished
GROUP BY alert
ORDER BY incidents DESC, alert
"""


@dataclass(frozen=True)
class ArchiveRecord:
    """One row of the archive: an incident as it finished (or as far as it got)."""

    uid: str
    namespace: str
    name: str
    alert: str
    severity: str | None
    policy: str | None
    phase: str
    reason: str | None
    started_at: datetime | None
    acknowledged_at: datetime | None
    resolved_at: datetime | None
    attempts: int
    findings: Sequence[Any]
    steps: Sequence[Any]
    timeline: Sequence[Any]
    escalation: dict[str, Any]
    archived_at: datetime
    spec: dict[str, Any] | None = None  # the Incident's spec as it was
    created_at: datetime | None = None
    policy_generation: int | None = None
    policy_digest: str | None = None  # the policy_archive row of the version that drove it
    policy_row: ArchivedPolicy | None = field(default=None, compare=False)  # that row, written with this one

    @classmethod
    def of(
        cls, uid: str, incident: Incident, status: Status, now: datetime, policy: Policy | None = None
    ) -> ArchiveRecord:
        """``policy``: the one that drove it (``status.policy``), when the operator still has it."""
        raw = status.to_dict()
        driven = policy if policy is not None and policy.name == status.policy else None
        row = ArchivedPolicy.of(driven) if driven is not None else None  # its digest: one sha256 of the spec
        condition = status.condition(status.phase) if status.phase else None
        return cls(
            uid=uid,
            namespace=incident.namespace,
            name=incident.name,
            alert=incident.alert,
            severity=status.severity or incident.severity,
            policy=status.policy,
            phase=status.phase or Phase.PENDING.value,
            reason=condition.reason if condition is not None else None,
            started_at=_time(status.startedAt),
            acknowledged_at=_time(status.acknowledgedAt),
            resolved_at=_time(status.resolvedAt),
            attempts=status.attempts,
            findings=raw["findings"],
            steps=raw["steps"],
            timeline=raw["timeline"],
            escalation=raw["escalation"],
            archived_at=now,
            spec=plain(incident.spec),
            created_at=_time(incident.created),
            policy_generation=status.policyGeneration,
            policy_digest=row.digest if row is not None else None,
            policy_row=row,
        )

    def params(self) -> dict[str, Any]:
        from psycopg.types.json import Jsonb

        values = {c: getattr(self, c) for c in _COLUMNS}
        for key in _JSON:
            values[key] = Jsonb(values[key]) if values[key] is not None else None
        return values


@dataclass(frozen=True)
class ArchivedPolicy:
    """One version of a policy, kept once by its spec's digest: a replay's default baseline."""

    digest: str
    namespace: str
    name: str
    generation: int
    spec: dict[str, Any]

    @classmethod
    def of(cls, policy: Policy) -> ArchivedPolicy:
        return cls(policy.digest, policy.namespace, policy.name, policy.generation, plain(policy.spec))

    def params(self) -> dict[str, Any]:
        from psycopg.types.json import Jsonb

        return {c: Jsonb(self.spec) if c == "spec" else getattr(self, c) for c in _POLICY_COLUMNS}


_REPLAYABLE = f"""
SELECT i.uid, i.namespace, i.name, i.spec, i.phase, i.policy, i.policy_generation, i.steps,
       i.started_at, i.created_at, p.digest, p.namespace, p.name, p.generation, p.spec
FROM {TABLE} i LEFT JOIN {POLICIES} p ON p.digest = i.policy_digest
WHERE i.spec IS NOT NULL AND {{where}}
ORDER BY coalesce(i.started_at, i.archived_at), i.uid
"""
_NOT_REPLAYABLE = f"SELECT count(*) FROM {TABLE} i WHERE i.spec IS NULL AND {{where}}"


@dataclass(frozen=True)
class ArchivedIncident:
    """An archived incident as a replay reads it: its spec, its steps, the policy version that drove it."""

    uid: str
    namespace: str
    name: str
    spec: dict[str, Any]
    phase: str
    policy: str | None
    policy_generation: int | None
    steps: list[dict[str, Any]]
    started_at: datetime | None
    created_at: datetime | None
    policy_row: ArchivedPolicy | None  # None: no policy drove it, or it was archived without one

    def body(self) -> dict[str, Any]:
        """The Incident with its status, as ``kubectl get inc -o yaml`` shows one."""
        status = {"phase": self.phase, "policy": self.policy, "policyGeneration": self.policy_generation,
                  "steps": self.steps, "startedAt": _stamp(self.started_at)}  # fmt: skip
        metadata = {"name": self.name, "namespace": self.namespace, "uid": self.uid,
                    "creationTimestamp": _stamp(self.created_at)}  # fmt: skip
        return {"apiVersion": API_VERSION, "kind": "Incident", "metadata": metadata, "spec": self.spec,
                "status": {k: v for k, v in status.items() if v is not None}}  # fmt: skip


def _stamp(value: datetime | None) -> str | None:
    return timestamp(value) if value is not None else None


@dataclass(frozen=True)
class AlertStats:
    """Per alert: how many incidents and how they ended; MTTA / MTTR in seconds (None: no data)."""

    alert: str
    incidents: int
    resolved: int
    escalated: int
    other: int
    mtta: float | None
    mtta_p50: float | None
    mtta_p90: float | None
    mttr: float | None
    mttr_p50: float | None
    mttr_p90: float | None


def _time(text: str | None) -> datetime | None:
    return parse_timestamp(text) if text else None


def check_role(role: str) -> None:
    """A role name ``grant_read_only`` takes: ValueError, saying why, for any other."""
    if not _ROLE.fullmatch(role):
        raise ValueError(f"invalid role name {role!r}: lowercase letters, digits and _, at most 63")


def where(dsn: str) -> str:
    """``host:port/dbname`` of a DSN, for logs: never the user or the password."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        parts = conninfo_to_dict(dsn)
    except Exception:  # the parser's message may quote the DSN
        return "<unparsable DSN>"
    host = str(parts.get("host") or parts.get("hostaddr") or "localhost")
    port = f":{parts['port']}" if parts.get("port") else ""
    return f"{host}{port}/{parts.get('dbname') or '-'}"


class Archive:
    """The archive database. Keeps one connection, opened on first use and again after an error."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self.where = where(dsn)
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._secrets = [s for s in (dsn, _password(dsn)) if s]

    def redact(self, err: BaseException) -> str:
        """An error's first line without the DSN or its password."""
        text = str(err).splitlines()[0] if str(err) else type(err).__name__
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text[:300]

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        import psycopg

        if self._conn is None or self._conn.closed:
            try:
                self._conn = await psycopg.AsyncConnection.connect(
                    self._dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT
                )
            except psycopg.Error:
                raise
            except Exception as err:  # e.g. an unparsable DSN: the message could quote it
                raise psycopg.OperationalError(f"cannot connect to {self.where}: {type(err).__name__}") from None
        return self._conn

    async def _run(self, fn: Any) -> Any:
        """Run ``fn(conn)``; on any error drop the connection so the next call opens a fresh one."""
        conn = await self._connection()
        try:
            return await fn(conn)
        except BaseException:
            await self.close()
            raise

    async def migrate(self) -> int:
        """Bring the schema to SCHEMA_VERSION; return the version found before. Safe to run any number of times."""

        async def go(conn: psycopg.AsyncConnection[Any]) -> int:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
                await conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_version ("
                    "version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
                )
                cur = await conn.execute("SELECT coalesce(max(version), 0) FROM schema_version")
                row = await cur.fetchone()
                found = int(row[0]) if row else 0
                for version, statements in MIGRATIONS:
                    if version <= found:
                        continue
                    for statement in statements:
                        await conn.execute(statement)
                    await conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (version,))
                    log.info("archive %s: schema migrated to version %d", self.where, version)
                return found

        return int(await self._run(go))

    async def write(self, record: ArchiveRecord) -> None:
        await self.write_many([record])

    async def write_many(self, records: Iterable[ArchiveRecord]) -> None:
        """UPSERT by uid, all in one transaction: archiving an incident again updates its row. The
        policy versions that drove them are kept once each, by digest."""
        records = list(records)
        params = [r.params() for r in records]
        if not params:
            return
        policies = {r.policy_row.digest: r.policy_row.params() for r in records if r.policy_row is not None}

        async def go(conn: psycopg.AsyncConnection[Any]) -> None:
            async with conn.transaction(), conn.cursor() as cur:
                if policies:
                    await cur.executemany(_POLICY_INSERT, list(policies.values()))
                await cur.executemany(_UPSERT, params)

        await self._run(go)

    async def stats(self, since: timedelta) -> list[AlertStats]:
        """Per alert, incidents started within ``since``: counts by outcome, MTTA and MTTR (avg, p50, p90)."""

        async def go(conn: psycopg.AsyncConnection[Any]) -> list[AlertStats]:
            params = {"since": since, "resolved": Phase.RESOLVED.value, "escalated": Phase.ESCALATED.value}
            cur = await conn.execute(_STATS, params)
            return [AlertStats(*row) for row in await cur.fetchall()]

        result: list[AlertStats] = await self._run(go)
        return result

    async def replayable(
        self,
        since: timedelta | None = None,
        alerts: Sequence[str] = (),
        namespace: str | None = None,
        names: Sequence[str] = (),
    ) -> tuple[list[ArchivedIncident], int]:
        """The archived incidents a replay can use, oldest first, and how many it cannot (archived
        before the archive kept their spec), both under the same filters."""
        clauses, params = ["true"], dict[str, Any]()
        if since is not None:
            clauses.append("coalesce(i.started_at, i.archived_at) >= now() - %(since)s")
            params["since"] = since
        if alerts:
            clauses.append("i.alert = ANY(%(alerts)s)")
            params["alerts"] = list(alerts)
        if namespace is not None:
            clauses.append("i.namespace = %(namespace)s")
            params["namespace"] = namespace
        if names:
            clauses.append("i.name = ANY(%(names)s)")
            params["names"] = list(names)
        where = " AND ".join(clauses)

        async def go(conn: psycopg.AsyncConnection[Any]) -> tuple[list[ArchivedIncident], int]:
            cur = await conn.execute(_REPLAYABLE.format(where=where), params)  # the clauses are ours; values bound
            found = []
            for row in await cur.fetchall():
                (uid, ns, name, spec, phase, policy, generation, steps, started, created, digest, p_ns, p_name,
                 p_generation, p_spec) = row  # fmt: skip
                row_policy = ArchivedPolicy(digest, p_ns, p_name, p_generation, p_spec) if digest else None
                found.append(ArchivedIncident(uid, ns, name, spec, phase, policy, generation, steps, started,
                                              created, row_policy))  # fmt: skip
            cur = await conn.execute(_NOT_REPLAYABLE.format(where=where), params)
            counted = await cur.fetchone()
            return found, int(counted[0]) if counted else 0

        result: tuple[list[ArchivedIncident], int] = await self._run(go)
        return result

    async def grant_read_only(self, role: str) -> bool:
        """Create ``role`` (NOLOGIN; a person or a CI job is then granted it) able to read the archive
        and nothing else, for replays before a merge; True when it was created, False when it existed
        (its grants are made again). Needs a DSN allowed to create roles and to grant on the tables."""
        from psycopg import sql

        check_role(role)

        async def go(conn: psycopg.AsyncConnection[Any]) -> bool:
            name = sql.Identifier(role)
            async with conn.transaction():
                cur = await conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,))
                created = await cur.fetchone() is None
                if created:
                    await conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(name))
                await conn.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(name))
                tables = sql.SQL(", ").join(sql.Identifier(t) for t in (TABLE, POLICIES, "schema_version"))
                await conn.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(tables, name))
                return created

        result: bool = await self._run(go)
        return result

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()


def _password(dsn: str) -> str | None:
    from psycopg.conninfo import conninfo_to_dict

    try:
        password = conninfo_to_dict(dsn).get("password")
        return str(password) if password else None
    except Exception:
        match = re.search(r"://[^:/@]*:([^@]*)@", dsn)
        return match.group(1) if match else None


class Store(Protocol):
    """What the writer needs of an Archive (tests may pass a fake)."""

    where: str

    def redact(self, err: BaseException) -> str: ...
    async def migrate(self) -> int: ...
    async def write_many(self, records: Iterable[ArchiveRecord]) -> None: ...
    async def close(self) -> None: ...


class ArchiveWriter:
    """A bounded, de-duplicating queue in front of the archive, drained by one background task.

    Records are keyed by uid, so an incident archived twice before the queue drains is
    written once, in its latest state. Past ``limit`` the oldest record is dropped (and
    counted). While the database is down: one warning per outage, ``runbook_archive_up``
    0, a failure counted per attempt, and retries after ``min(initial * 2^n, max)`` seconds.
    """

    def __init__(
        self,
        archive: Store,
        metrics: ArchiveMetrics | None = None,
        limit: int = 10_000,
        batch: int = 200,
        initial_backoff: float = 0.5,
        max_backoff: float = 30.0,
    ) -> None:
        self.archive, self._metrics = archive, metrics
        self._limit, self._batch = limit, batch
        self._initial, self._max = initial_backoff, max_backoff
        self._pending: OrderedDict[str, ArchiveRecord] = OrderedDict()
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()  # set after every attempt, for flush()
        self._task: asyncio.Task[None] | None = None
        self._migrated = False
        self.up: bool | None = None  # None until the first attempt
        self.dropped = 0
        self.written = 0

    @property
    def pending(self) -> int:
        return len(self._pending)

    def start(self) -> None:
        """Start draining (and migrate the schema); needs a running event loop. Idempotent."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._drain(), name="archive-writer")

    def enqueue(self, record: ArchiveRecord) -> None:
        """Queue a record for writing; never blocks, never raises for the database's sake."""
        self._pending.pop(record.uid, None)
        self._pending[record.uid] = record
        while len(self._pending) > self._limit:
            self._pending.popitem(last=False)
            self.dropped += 1
            if self._metrics is not None:
                self._metrics.dropped.inc()
        self._gauge_pending()
        self._wakeup.set()
        self.start()

    async def flush(self, seconds: float) -> bool:
        """Wait until the schema is migrated and the queue is empty (True), or ``seconds`` pass (False)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                while self._pending or not self._migrated:
                    self._idle.clear()
                    await self._idle.wait()
                return True
        return False

    async def close(self, grace: float = 5.0) -> None:
        """Give a reachable database ``grace`` seconds to take what is queued, then stop."""
        if self._task is not None and not self._task.done() and self._pending and self.up is not False:
            await self.flush(grace)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._task = None
        await self.archive.close()
        if self._pending:
            log.warning("archive %s: %d finished incidents not archived at shutdown", self.archive.where, self.pending)

    async def _drain(self) -> None:
        delay = self._initial
        while True:
            if self._migrated and not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            try:
                if not self._migrated:
                    await self.archive.migrate()
                    self._migrated = True
                batch = list(self._pending.values())[: self._batch]
                await self.archive.write_many(batch)
            except asyncio.CancelledError:
                raise
            except Exception as err:
                self._failed(err, delay)
                self._idle.set()
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._max)
                continue
            delay = self._initial
            for record in batch:  # a newer version queued meanwhile stays for the next round
                if self._pending.get(record.uid) is record:
                    del self._pending[record.uid]
            self.written += len(batch)
            self._gauge_pending()
            self._succeeded()
            self._idle.set()

    def _failed(self, err: Exception, delay: float) -> None:
        if self._metrics is not None:
            self._metrics.failures.inc()
            self._metrics.up.set(0)
        if self.up is not False:  # the first failure of an outage: say it once
            log.warning(
                "archive %s unreachable, keeping %d records and retrying (up to every %gs): %s",
                self.archive.where,
                self.pending,
                self._max,
                self.archive.redact(err),
            )
        else:
            log.debug(
                "archive %s still unreachable, retry in %gs: %s", self.archive.where, delay, self.archive.redact(err)
            )
        self.up = False

    def _succeeded(self) -> None:
        if self.up is False:
            log.info("archive %s reachable again; catching up on %d records", self.archive.where, self.pending)
        self.up = True
        if self._metrics is not None:
            self._metrics.up.set(1)

    def _gauge_pending(self) -> None:
        if self._metrics is not None:
            self._metrics.pending.set(len(self._pending))


def stats_table(rows: Sequence[AlertStats]) -> str:
    """The ``runbook-operator stats`` table: counts, then MTTA and MTTR as avg (p50 / p90), humanized."""
    from runbook_operator.domain.durations import format_duration

    def human(avg: float | None, p50: float | None, p90: float | None) -> str:
        if avg is None:
            return "-"
        return f"{format_duration(avg)} ({format_duration(p50 or 0.0)} / {format_duration(p90 or 0.0)})"

    header = ("ALERT", "INCIDENTS", "RESOLVED", "ESCALATED", "OTHER", "MTTA avg (p50 / p90)", "MTTR avg (p50 / p90)")
    lines = [header] + [
        (
            r.alert,
            str(r.incidents),
            str(r.resolved),
            str(r.escalated),
            str(r.other),
            human(r.mtta, r.mtta_p50, r.mtta_p90),
            human(r.mttr, r.mttr_p50, r.mttr_p90),
        )
        for r in rows
    ]
    if not rows:
        return "no archived incidents in that period"
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("   ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in lines)
