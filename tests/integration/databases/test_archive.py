"""The incident archive against a real PostgreSQL 15: migrations, UPSERTs, statistics,
the writer through a real outage (the server stopped and started again), the reconciler
archiving an incident it resolves, and the ``stats`` command."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prometheus_client import CollectorRegistry

from runbook_lab.demo import DemoService
from runbook_operator.actions.catalog import default_registry
from runbook_operator.adapters.archive import SCHEMA_VERSION, Archive, ArchiveRecord, ArchiveWriter, where
from runbook_operator.adapters.metrics import Metrics
from runbook_operator.domain.model import Incident
from runbook_operator.domain.status import Condition, Finding, Status, timestamp
from runbook_operator.engine.executor import Executor
from runbook_operator.engine.reconciler import Reconciler
from runbook_operator.entrypoints import cli
from runbook_operator.entrypoints.cli import arguments
from tests.integration.databases.conftest import PG_PASSWORD, PostgresServer
from tests.unit.test_reconciler import MemoryCluster, demo_policy

NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture
def dsn(postgres: PostgresServer) -> Iterator[str]:
    """A fresh database owned by the role, dropped afterwards; its DSN carries the password."""
    name = f"archive_{os.urandom(4).hex()}"
    with postgres.connect(superuser=True) as admin:
        admin.execute(f"CREATE DATABASE {name} OWNER {postgres.user}")
    yield f"host=127.0.0.1 port={postgres.port} dbname={name} user={postgres.user} password={PG_PASSWORD}"
    with postgres.connect(superuser=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def rows(dsn: str, query: str = "SELECT uid, phase, attempts, reason FROM incident_archive ORDER BY uid") -> list[Any]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(query).fetchall()


def record(
    uid: str,
    alert: str = "InstanceManagerDown",
    phase: str = "Resolved",
    start: timedelta = timedelta(hours=-2),
    ack: float | None = None,
    resolve: float | None = None,
    attempts: int = 1,
) -> ArchiveRecord:
    """A finished incident that started ``start`` from now, acknowledged / resolved that many seconds later."""
    started = NOW + start
    status = Status(
        phase=phase,
        policy="restart",
        severity="Critical",
        attempts=attempts,
        startedAt=timestamp(started),
        acknowledgedAt=timestamp(started + timedelta(seconds=ack)) if ack is not None else None,
        resolvedAt=timestamp(started + timedelta(seconds=resolve)) if resolve is not None else None,
        conditions=(Condition(phase, "True", "Verified" if phase == "Resolved" else "RemediationExhausted", "", ""),),
        findings=(Finding("health", "503 from /health"),),
    )
    incident = Incident(namespace="ns", name=f"inc-{uid}", generation=1, alert=alert)
    return ArchiveRecord.of(uid, incident, status, NOW)


# -- Archive ----------------------------------------------------------------------------


async def test_migrate_twice_is_harmless(dsn: str) -> None:
    archive = Archive(dsn)
    try:
        assert await archive.migrate() == 0
        assert await archive.migrate() == SCHEMA_VERSION
    finally:
        await archive.close()
    assert rows(dsn, "SELECT version FROM schema_version ORDER BY version") == [
        (v,) for v in range(1, SCHEMA_VERSION + 1)
    ]
    assert rows(dsn) == []


async def test_rows_archived_before_version_3_stay_and_are_not_replayable(dsn: str) -> None:
    """The migration only adds: an incident archived by an older operator keeps its row, with no
    spec (a replay counts it as not replayable instead of guessing what it was)."""
    archive = Archive(dsn)
    try:
        await archive.migrate()
        with psycopg.connect(dsn) as conn:  # back to version 2, with a row as version 2 wrote it
            conn.execute("DELETE FROM schema_version WHERE version = 3")
            for column in ("spec", "created_at", "policy_generation", "policy_digest"):
                conn.execute(f"ALTER TABLE incident_archive DROP COLUMN {column}")
            conn.execute("DROP TABLE policy_archive")
            conn.execute(
                "INSERT INTO incident_archive (uid, namespace, name, alert, phase) VALUES ('old', 'ns', 'o', 'A', 'Resolved')"
            )
        assert await archive.migrate() == 2
        await archive.write(record("new"))
    finally:
        await archive.close()
    assert rows(dsn, "SELECT uid, spec IS NOT NULL FROM incident_archive ORDER BY uid") == [
        ("new", True), ("old", False)
    ]  # fmt: skip


async def test_write_again_updates_the_one_row(dsn: str) -> None:
    archive = Archive(dsn)
    try:
        await archive.migrate()
        await archive.write(record("u1", phase="Escalated", attempts=2))
        await archive.write(record("u1", phase="Escalated", attempts=2))
        assert rows(dsn) == [("u1", "Escalated", 2, "RemediationExhausted")]
        await archive.write(record("u1", phase="Resolved", attempts=3, resolve=600))
    finally:
        await archive.close()
    assert rows(dsn) == [("u1", "Resolved", 3, "Verified")]
    (row,) = rows(
        dsn,
        "SELECT namespace, name, alert, severity, policy, findings, escalation, resolved_at - started_at FROM incident_archive",
    )
    assert row == (
        "ns",
        "inc-u1",
        "InstanceManagerDown",
        "Critical",
        "restart",
        [{"step": "health", "message": "503 from /health"}],
        row[6],
        timedelta(minutes=10),
    )
    assert row[6]["fired"] == []


async def test_stats_counts_outcomes_and_computes_mtta_mttr_in_sql(dsn: str) -> None:
    archive = Archive(dsn)
    try:
        await archive.migrate()
        for r in (
            record("a1", ack=60, resolve=300),
            record("a2", ack=120, resolve=600),
            record("a3", ack=300, resolve=1500),
            record("a4", phase="Escalated", ack=600),  # no MTTR: it did not resolve
            record("a5", phase="Diagnosing"),
            record("old", start=timedelta(days=-30), ack=1, resolve=1),  # outside the window
            record("b1", alert="RedisDown", resolve=42),
        ):
            await archive.write(r)
        stats = {s.alert: s for s in await archive.stats(timedelta(days=7))}
        everything = {s.alert: s for s in await archive.stats(timedelta(days=60))}
    finally:
        await archive.close()
    im = stats["InstanceManagerDown"]
    assert (im.incidents, im.resolved, im.escalated, im.other) == (5, 3, 1, 1)
    assert im.mtta == pytest.approx((60 + 120 + 300 + 600) / 4)
    assert im.mtta_p50 == pytest.approx(210)  # between 120 and 300
    assert im.mtta_p90 == pytest.approx(300 + 0.7 * 300)  # 0.9 * 3 = 2.7 positions in
    assert im.mttr == pytest.approx(800)
    assert im.mttr_p50 == pytest.approx(600)
    assert im.mttr_p90 == pytest.approx(600 + 0.8 * 900)
    rd = stats["RedisDown"]
    assert (rd.incidents, rd.resolved, rd.mtta, rd.mttr, rd.mttr_p90) == (1, 1, None, 42, 42)
    assert everything["InstanceManagerDown"].incidents == 6
    assert list(stats) == ["InstanceManagerDown", "RedisDown"]


def test_where_and_errors_never_show_the_dsn(postgres: PostgresServer) -> None:
    bad = f"host=127.0.0.1 port={postgres.port} dbname=app user=runbook password={PG_PASSWORD}x"
    archive = Archive(bad)
    assert archive.where == f"127.0.0.1:{postgres.port}/app" == where(bad)
    with pytest.raises(psycopg.OperationalError) as caught:
        asyncio.run(archive.migrate())
    assert PG_PASSWORD not in archive.redact(caught.value)
    assert where("postgresql://u:secret@db.example:5433/archive") == "db.example:5433/archive"
    assert where("not a dsn secret") == "<unparsable DSN>"


# -- ArchiveWriter ----------------------------------------------------------------------


async def test_the_writer_keeps_records_through_a_real_outage(
    dsn: str, postgres: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = Metrics(CollectorRegistry()).archive()
    writer = ArchiveWriter(Archive(dsn), metrics, initial_backoff=0.05, max_backoff=0.3)
    writer.enqueue(record("before"))
    assert await writer.flush(10)
    assert writer.up is True and metrics.up._value.get() == 1

    postgres.server.stop()  # a real outage: the server goes away (fast shutdown)
    try:
        caplog.set_level(logging.WARNING, "runbook_operator.adapters.archive")
        for i in range(5):
            writer.enqueue(record(f"during-{i}"))
        writer.enqueue(record("during-0", attempts=7))  # the same incident again: one record, its latest state
        assert writer.pending == 5
        await _until(lambda: metrics.failures._value.get() >= 3)  # several retries...
        assert writer.up is False and metrics.up._value.get() == 0 and writer.pending == 5
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]  # ...one warning
        message = warnings[0].getMessage()
        assert "unreachable" in message and f"127.0.0.1:{postgres.port}/archive_" in message
        assert PG_PASSWORD not in caplog.text and "password=" not in caplog.text
    finally:
        await asyncio.to_thread(postgres.server.start)  # same port, same data

    await _until(lambda: writer.pending == 0, 15)
    assert writer.up is True and metrics.up._value.get() == 1 and metrics.pending._value.get() == 0
    await writer.close()
    assert [r[0] for r in rows(dsn)] == ["before", *(f"during-{i}" for i in range(5))]
    assert rows(dsn, "SELECT attempts FROM incident_archive WHERE uid = 'during-0'") == [(7,)]
    assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) == 1


async def test_a_full_queue_drops_the_oldest_and_counts_it(closed_port: int) -> None:
    metrics = Metrics(CollectorRegistry()).archive()
    writer = ArchiveWriter(Archive(f"host=127.0.0.1 port={closed_port} dbname=x user=x"), metrics, limit=3)
    for i in range(5):
        writer.enqueue(record(f"u{i}"))
    assert writer.pending == 3 and writer.dropped == 2 and metrics.dropped._value.get() == 2
    await writer.close(grace=0.1)


async def test_a_database_down_at_start_is_caught_up_on(dsn: str, closed_port: int) -> None:
    """Start against a closed port, then the live one (as a database that comes up late)."""
    archive = Archive(dsn.replace(f"port={dsn.split('port=')[1].split()[0]}", f"port={closed_port}"))
    writer = ArchiveWriter(archive, initial_backoff=0.05, max_backoff=0.2)
    writer.enqueue(record("late"))
    await _until(lambda: writer.up is False)
    archive._dsn = dsn  # the database is reachable now
    assert await writer.flush(10)
    await writer.close()
    assert [r[0] for r in rows(dsn)] == ["late"]


# -- Reconciler -------------------------------------------------------------------------


async def test_the_reconciler_archives_an_incident_it_resolves(dsn: str) -> None:
    service = DemoService(restart_seconds=0).start()
    try:
        cluster = MemoryCluster()
        writer = ArchiveWriter(Archive(dsn))
        reconciler = Reconciler(
            cluster, Executor(default_registry()), lambda ns: [demo_policy(service.url)], archive=writer
        )
        meta = {"name": "im-down", "namespace": "ns", "uid": "uid-1", "generation": 1}
        reconciler.observe({"metadata": meta, "spec": {"alert": "InstanceManagerDown", "severity": "Critical"}})
        await _until(lambda: cluster.writes and cluster.writes[-1]["phase"] == "Resolved")
        assert await writer.flush(10)
        # a restart: an incident seen already finished is archived again (and the UPSERT keeps one row)
        done = {"metadata": meta | {"uid": "uid-2", "name": "old"}, "spec": {"alert": "RedisDown"}}
        reconciler.observe(done | {"status": cluster.writes[-1]})
        await reconciler.stop()  # flushes the queue, closes the archive
    finally:
        service.stop()
    (row, old) = rows(
        dsn,
        "SELECT uid, name, alert, severity, policy, phase, reason, attempts, steps, resolved_at IS NOT NULL FROM incident_archive ORDER BY uid",
    )
    assert row[:8] == ("uid-1", "im-down", "InstanceManagerDown", "Critical", "p", "Resolved", "Verified", 1)
    assert [s["name"] for s in row[8]] == ["health", "restart", "again"] and row[9]
    assert old[:3] == ("uid-2", "old", "RedisDown")
    # what a replay needs (issue 25): the spec as it was, each call's digest and time, the policy's version
    ((spec, generation, digest),) = rows(
        dsn, "SELECT spec, policy_generation, policy_digest FROM incident_archive WHERE uid = 'uid-1'"
    )
    policy = demo_policy(service.url)
    assert spec == {"alert": "InstanceManagerDown", "severity": "Critical"}
    assert (generation, digest) == (policy.generation, policy.digest) and digest.startswith("sha256:")
    assert all(s["paramsDigest"].startswith("sha256:") and s["duration"] >= 0 for s in row[8])
    assert rows(dsn, "SELECT digest, name, generation, spec FROM policy_archive") == [
        (policy.digest, "p", policy.generation, dict(policy.spec))
    ]


async def _until(predicate: Any, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


# -- runbook-operator stats -------------------------------------------------------------


def test_the_stats_command_prints_a_table_per_alert(
    dsn: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async def fill() -> None:
        archive = Archive(dsn)
        await archive.migrate()
        for r in (
            record("a1", ack=60, resolve=300),
            record("a2", ack=180, resolve=900),
            record("a3", phase="Escalated", ack=30),
            record("b1", alert="RedisDown", start=timedelta(days=-3), resolve=5400),
            record("old", alert="Old", start=timedelta(days=-9), resolve=1),
        ):
            await archive.write(r)
        await archive.close()

    asyncio.run(fill())
    monkeypatch.setenv("TEST_ARCHIVE_DSN", dsn)
    assert cli.main(["stats", "--since", "7d", "--dsn-env", "TEST_ARCHIVE_DSN"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == [
        "ALERT",
        "INCIDENTS",
        "RESOLVED",
        "ESCALATED",
        "OTHER",
        "MTTA",
        "avg",
        "(p50",
        "/",
        "p90)",
        "MTTR",
        "avg",
        "(p50",
        "/",
        "p90)",
    ]
    assert out[1].split()[:5] == ["InstanceManagerDown", "3", "2", "1", "0"]
    assert "1m30s (1m / 2m36s)" in out[1]  # acks 60, 180, 30 s: avg 90, p50 60, p90 156
    assert "10m (10m / 14m)" in out[1]  # resolves 300, 900 s: avg 600, p50 600, p90 840
    assert out[2].split()[:6] == ["RedisDown", "1", "1", "0", "0", "-"] and out[2].endswith("1h30m (1h30m / 1h30m)")
    assert len(out) == 3  # "Old" is outside the week

    assert cli.main(["stats", "--since", "1h", "--dsn-env", "TEST_ARCHIVE_DSN"]) == 0
    assert capsys.readouterr().out.strip() == "no archived incidents in that period"


def test_the_stats_command_never_shows_the_dsn(
    postgres: PostgresServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(
        "BAD_DSN", f"host=127.0.0.1 port={postgres.port} dbname=app user=runbook password=wrong-{PG_PASSWORD}"
    )
    assert cli.main(["stats", "--dsn-env", "BAD_DSN"]) == 1
    err = capsys.readouterr().err
    assert f"archive 127.0.0.1:{postgres.port}/app:" in err and PG_PASSWORD not in err
    monkeypatch.delenv("UNSET_DSN", raising=False)
    assert cli.main(["stats", "--dsn-env", "UNSET_DSN"]) == 2
    assert "$UNSET_DSN is not set" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "seconds"), [("7d", 7 * 86400), ("1d12h", 36 * 3600), ("12h", 12 * 3600), ("90m", 5400), ("30s", 30)]
)
def test_stats_since_accepts_days(text: str, seconds: float) -> None:
    assert arguments.since(text) == seconds


@pytest.mark.parametrize("text", ["", "7", "d", "7d7d", "1w", "0d", "-1d"])
def test_stats_since_rejects_nonsense(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        arguments.since(text)


def test_run_reads_the_dsn_from_the_named_env_var() -> None:
    args = cli.build_parser().parse_args(["run"])
    assert args.archive_dsn_env == "RUNBOOK_ARCHIVE_DSN"
    assert cli.build_parser().parse_args(["run", "--archive-dsn-env", "X"]).archive_dsn_env == "X"


# -- replay from the archive (issue 25) ----------------------------------------------------------------


def test_replay_reads_the_archive_and_the_policy_version_that_drove_each_incident(
    dsn: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Incidents the reconciler archived, replayed with no --baseline: each under the policy version
    the archive kept for it. The same policy changes nothing; one whose restart now fails ends worse
    for the incident it drove; an incident archived by an older operator is counted, not guessed."""
    import yaml

    service = DemoService(restart_seconds=0).start()
    policy = demo_policy(service.url)

    async def archive_one() -> None:  # as the operator does: the reconciler resolves it, the writer archives it
        cluster = MemoryCluster()
        writer = ArchiveWriter(Archive(dsn))
        reconciler = Reconciler(cluster, Executor(default_registry()), lambda ns: [policy], archive=writer)
        meta = {"name": "im-down", "namespace": "ns", "uid": "uid-1", "generation": 1,
                "creationTimestamp": "2026-12-07T10:00:00Z"}  # fmt: skip
        reconciler.observe({"metadata": meta, "spec": {"alert": "InstanceManagerDown", "severity": "Critical"}})
        await _until(lambda: cluster.writes and cluster.writes[-1]["phase"] == "Resolved")
        await reconciler.stop()

    try:
        asyncio.run(archive_one())
    finally:
        service.stop()
    with psycopg.connect(dsn) as conn:  # one row as an operator before migration 3 wrote it
        conn.execute(
            "INSERT INTO incident_archive (uid, namespace, name, alert, phase) VALUES ('old', 'ns', 'o', 'A', 'Resolved')"
        )
    monkeypatch.setenv("TEST_ARCHIVE_DSN", dsn)
    same, changed = tmp_path / "same", tmp_path / "changed"
    same.mkdir(), changed.mkdir()
    body = {"apiVersion": "remediation.ishchat.io/v1alpha1", "kind": "RemediationPolicy",
            "metadata": {"name": "p", "namespace": "ns"}, "spec": dict(policy.spec)}  # fmt: skip
    (same / "p.yaml").write_text(yaml.safe_dump(body))
    restart = next(s for s in body["spec"]["remediate"] if s["name"] == "restart")
    moved = {**restart, "with": {**restart["with"], "url": restart["with"]["url"] + "?force=1"}}
    (changed / "p.yaml").write_text(yaml.safe_dump({**body, "spec": {**body["spec"], "remediate": [moved]}}))
    common = ["replay", "--archive", "--dsn-env", "TEST_ARCHIVE_DSN", "--output", "json", "--policies"]

    assert cli.main([*common, str(same), "--fail-on", "ended-worse,steps-changed,unknown-steps"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["summary"] == {"incidents": 1, "changed": 0, "notReplayable": 1,
                                   "kinds": {k: 0 for k in document["summary"]["kinds"]}}  # fmt: skip
    (only,) = document["incidents"]
    assert only["before"] == only["after"] and only["before"][0]["end"] == "Resolved"
    assert all(s["recorded"] for s in only["before"][0]["steps"])  # every call matched a recorded one

    assert cli.main([*common, str(changed), "--fail-on", "unknown-steps"]) == 1
    (only,) = json.loads(capsys.readouterr().out)["incidents"]
    assert only["changes"] == ["unknown-steps"] or "unknown-steps" in only["changes"]
    assert sorted(p["end"] for p in only["after"]) == ["Escalated", "Resolved"]  # the new call: both ways


def test_archive_role_reads_the_archive_and_nothing_else(
    dsn: str, postgres: PostgresServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The role a pull request's CI replays with: SELECT on the archive, no write, no other table."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    dbname = conninfo_to_dict(dsn)["dbname"]
    admin = make_conninfo(**postgres.conninfo(dbname, superuser=True))
    monkeypatch.setenv("ADMIN_DSN", admin)
    role = f"replay_{os.urandom(3).hex()}"
    with postgres.connect(dbname, superuser=True) as conn:
        conn.execute("CREATE TABLE other (x int)")  # not the archive's: must stay out of reach
    try:
        assert cli.main(["archive-role", role, "--dsn-env", "ADMIN_DSN"]) == 0
        assert f"role {role} created" in capsys.readouterr().out
        assert cli.main(["archive-role", role, "--dsn-env", "ADMIN_DSN"]) == 0  # again: harmless
        assert "exists; its grants made again" in capsys.readouterr().out
        with postgres.connect(dbname, superuser=True) as conn:
            conn.execute(f"SET ROLE {role}")
            assert conn.execute("SELECT count(*) FROM incident_archive").fetchone() == (0,)
            assert conn.execute("SELECT count(*) FROM policy_archive").fetchone() == (0,)
            for statement in ("DELETE FROM incident_archive", "INSERT INTO policy_archive (digest) VALUES ('x')",
                              "SELECT * FROM other"):  # fmt: skip
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(statement)
        assert cli.main(["archive-role", "Robert'); DROP TABLE x;--", "--dsn-env", "ADMIN_DSN"]) == 2
        assert "invalid role name" in capsys.readouterr().err
    finally:
        with postgres.connect(dbname, superuser=True) as conn:
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE IF EXISTS {role}")
