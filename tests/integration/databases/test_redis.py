"""redis.* against a real redis-server: each action's effect, its failures and its timeout."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import redis

from runbook_operator.actions.api import languages
from runbook_operator.domain.expressions import render
from runbook_operator.domain.lifecycle import StepCall
from runbook_operator.domain.model import Stage, Step
from runbook_operator.engine.executor import Executor
from tests.integration.databases.conftest import REDIS_PASSWORD, WRONG_PASSWORD, RedisServer, run, services
from tests.unit.builders import REGISTRY, incident

ACTIONS = {
    "redis.ping": {},
    "redis.memory": {},
    "redis.dbsize": {},
    "redis.deleteByPattern": {"pattern": "session:*"},
    "redis.flushAll": {},
}
EVERY = pytest.mark.parametrize(("name", "extra"), list(ACTIONS.items()), ids=list(ACTIONS))


def clients(redis_server: RedisServer) -> int:
    """Connections the server has open, not counting the one asking."""
    with redis_server.client() as client:
        return int(client.info("clients")["connected_clients"]) - 1


# -- redis.ping -----------------------------------------------------------------------


async def test_ping_gets_pong_and_closes_its_connection(redis_server: RedisServer, rd: redis.Redis) -> None:
    before = clients(redis_server)
    result = await run("redis.ping", redis_server.params())
    assert result.ok, result.message
    assert "PONG in" in result.message and result.output["latencySeconds"] >= 0
    assert clients(redis_server) == before


# -- redis.memory ---------------------------------------------------------------------


async def test_memory_without_a_limit(redis_server: RedisServer, rd: redis.Redis) -> None:
    before = await run("redis.memory", redis_server.params(maxRatio=0.5))
    assert before.ok, before.message
    assert before.message.endswith("; no maxmemory limit")
    assert before.output["maxMemory"] == 0 and before.output["ratio"] is None
    rd.set("big", b"x" * 2_000_000)
    after = await run("redis.memory", redis_server.params())
    assert after.output["usedMemory"] >= before.output["usedMemory"] + 2_000_000
    assert after.output["usedMemoryHuman"].endswith("M")


async def test_memory_against_maxmemory(redis_server: RedisServer, rd: redis.Redis) -> None:
    rd.config_set("maxmemory", 64 * 1024 * 1024)
    result = await run("redis.memory", redis_server.params(maxRatio=0.9))
    assert result.ok, result.message
    assert result.output["maxMemory"] == 64 * 1024 * 1024 and result.output["maxMemoryHuman"] == "64.00M"
    assert 0 < result.output["ratio"] < 0.9
    assert "of 64.00M (ratio" in result.message and "policy noeviction" in result.message
    rd.set("big", b"x" * 8 * 1024 * 1024)
    rd.config_set("maxmemory", int(int(rd.info("memory")["used_memory"]) / 0.95))
    full = await run("redis.memory", redis_server.params(maxRatio=0.9))
    assert not full.ok
    assert full.output["ratio"] > 0.9 and full.message.endswith("above 0.9")


# -- redis.dbsize ---------------------------------------------------------------------


async def test_dbsize_counts_the_keys_of_its_database(redis_server: RedisServer, rd: redis.Redis) -> None:
    with redis_server.client(db=2) as other:
        other.mset({"a": 1, "b": 2, "c": 3})
    rd.set("in-db-0", 1)
    result = await run("redis.dbsize", redis_server.params(db=2, maxKeys=3))
    assert result.ok and result.output == {"keys": 3}, result.message
    over = await run("redis.dbsize", redis_server.params(db=2, maxKeys=2))
    assert not over.ok and over.message.endswith("3 key(s), more than 2")


# -- redis.deleteByPattern ------------------------------------------------------------


async def test_delete_by_pattern_removes_only_the_matching_keys(redis_server: RedisServer, rd: redis.Redis) -> None:
    rd.mset({f"session:{i}": i for i in range(1234)})
    rd.mset({"keep:1": 1, "sessions": 2, "user:session:1": 3})
    with redis_server.client(db=1) as other:
        other.set("session:other-db", 1)
        result = await run("redis.deleteByPattern", redis_server.params(pattern="session:*", batch=100))
        assert other.exists("session:other-db") == 1  # another database is untouched
    assert result.ok, result.message
    assert result.output == {"pattern": "session:*", "deleted": 1234, "complete": True}
    assert "deleted 1234 key(s) matching 'session:*'" in result.message
    assert not list(rd.scan_iter(match="session:*"))
    assert sorted(rd.scan_iter()) == [b"keep:1", b"sessions", b"user:session:1"]


async def test_a_label_cannot_widen_the_pattern_the_policy_wrote(redis_server: RedisServer, rd: redis.Redis) -> None:
    """The attack: `user=*` in `session:{{ incident.labels.user }}` used to delete every session."""
    rd.mset({"session:alice": 1, "session:bob": 2, "session:*": 3, "session:[ab]*": 4})
    template = {**redis_server.params(), "pattern": "session:{{ incident.labels.user }}"}
    kinds = languages(REGISTRY.get("redis.deleteByPattern").params)
    for hostile in ("*", "[ab]*"):
        params = render(template, {"incident": {"labels": {"user": hostile}}}, kinds)
        result = await run("redis.deleteByPattern", params)
        assert result.ok and result.output["deleted"] == 1, result.message  # the key named so, nothing else
    assert sorted(rd.scan_iter()) == [b"session:alice", b"session:bob"]


async def test_delete_by_pattern_stops_at_max_keys_and_says_so(redis_server: RedisServer, rd: redis.Redis) -> None:
    rd.mset({f"cache:{i}": i for i in range(1000)})
    result = await run("redis.deleteByPattern", redis_server.params(pattern="cache:*", batch=64, maxKeys=250))
    assert result.ok, result.message
    assert result.output["deleted"] == 250 and result.output["complete"] is False
    assert "stopped at maxKeys=250, more keys may match (run again)" in result.message
    assert rd.dbsize() == 750
    rest = await run("redis.deleteByPattern", redis_server.params(pattern="cache:*", maxKeys=750))
    assert rest.output["deleted"] == 750 and rd.dbsize() == 0


async def test_delete_by_pattern_with_nothing_matching(redis_server: RedisServer, rd: redis.Redis) -> None:
    rd.set("keep", 1)
    result = await run("redis.deleteByPattern", redis_server.params(pattern="nothing:*"))
    assert result.ok and result.output["deleted"] == 0 and result.output["complete"] is True
    assert rd.exists("keep") == 1


async def test_delete_by_pattern_never_uses_keys(redis_server: RedisServer, rd: redis.Redis) -> None:
    rd.mset({f"session:{i}": i for i in range(10)})
    rd.config_resetstat()
    assert (await run("redis.deleteByPattern", redis_server.params(pattern="session:*"))).ok
    stats = rd.info("commandstats")
    assert "cmdstat_keys" not in stats and "cmdstat_scan" in stats and "cmdstat_unlink" in stats


# -- redis.flushAll -------------------------------------------------------------------


@pytest.mark.parametrize("asynchronous", [False, True])
async def test_flush_all_empties_every_database(redis_server: RedisServer, rd: redis.Redis, asynchronous: bool) -> None:
    rd.mset({"a": 1, "b": 2})
    with redis_server.client(db=3) as other:
        other.set("c", 3)
        result = await run("redis.flushAll", redis_server.params(**{"async": asynchronous}))
        assert other.dbsize() == 0
    assert result.ok, result.message
    assert result.output == {"flushedKeys": 3, "asynchronous": asynchronous}
    assert rd.dbsize() == 0
    assert f"FLUSHALL{' ASYNC' if asynchronous else ''} removed 3 key(s) from all databases" in result.message


# -- failures every action shares -----------------------------------------------------


@EVERY
async def test_a_server_that_is_down(closed_port: int, name: str, extra: dict[str, Any]) -> None:
    result = await run(name, {"host": "127.0.0.1", "port": closed_port, **extra})
    assert not result.ok
    assert result.message == f"redis 127.0.0.1:{closed_port}/0: cannot connect: Connection refused"


@EVERY
async def test_a_wrong_password(redis_server: RedisServer, rd: redis.Redis, name: str, extra: dict[str, Any]) -> None:
    rd.set("session:1", 1)
    result = await run(name, redis_server.params(passwordSecretRef={"name": "redis-wrong", "key": "password"}, **extra))
    assert not result.ok
    assert "authentication failed: invalid username-password pair" in result.message
    assert WRONG_PASSWORD not in result.message
    assert rd.exists("session:1") == 1


@EVERY
async def test_no_password_for_a_server_that_wants_one(
    redis_server: RedisServer, rd: redis.Redis, name: str, extra: dict[str, Any]
) -> None:
    result = await run(name, {"host": "127.0.0.1", "port": redis_server.port, **extra})
    assert not result.ok
    assert result.message.endswith("authentication failed: the server wants a password (passwordSecretRef)")


@EVERY
async def test_a_server_that_never_answers(
    redis_server: RedisServer, silent_port: int, name: str, extra: dict[str, Any]
) -> None:
    started = time.monotonic()
    result = await run(name, {**redis_server.params(**extra), "port": silent_port}, timeout=0.5)
    assert time.monotonic() - started < 2
    assert not result.ok
    assert result.message == f"redis 127.0.0.1:{silent_port}/0: no answer within 0.5s"


async def test_a_missing_secret_is_named(redis_server: RedisServer) -> None:
    result = await run("redis.ping", redis_server.params(passwordSecretRef={"name": "nope", "key": "pw"}))
    assert not result.ok
    assert "cannot read the password from Secret 'nope' key 'pw': secret ns/nope has no key 'pw'" in result.message


async def test_a_failed_call_closes_its_connection(redis_server: RedisServer, rd: redis.Redis) -> None:
    before = clients(redis_server)
    for _ in range(5):
        bad = await run("redis.ping", redis_server.params(passwordSecretRef={"name": "redis-wrong", "key": "password"}))
        assert not bad.ok
    assert clients(redis_server) == before


# -- the executor: secrets never leave a step -----------------------------------------


@pytest.mark.parametrize(("ref", "ok"), [("redis", True), ("redis-wrong", False)])
async def test_the_executor_scrubs_the_password_from_results(
    redis_server: RedisServer, rd: redis.Redis, ref: str, ok: bool
) -> None:
    params = redis_server.params(passwordSecretRef={"name": ref, "key": "password"})
    step = Step("cache-up", Stage.DIAGNOSE, "redis.ping", params)
    result = await Executor(REGISTRY, services=services()).run(incident(), StepCall(step, 1, params))
    assert result.ok is ok, result.message
    text = result.message + json.dumps(dict(result.output))
    assert REDIS_PASSWORD not in text and WRONG_PASSWORD not in text


async def test_the_executor_scrubs_a_password_the_server_echoes(redis_server: RedisServer, rd: redis.Redis) -> None:
    rd.set(REDIS_PASSWORD, 1)  # a key named like the password: the pattern and the message would carry it
    params = redis_server.params(pattern=f"{REDIS_PASSWORD}*")
    step = Step("clear", Stage.REMEDIATE, "redis.deleteByPattern", params)
    result = await Executor(REGISTRY, services=services()).run(incident(), StepCall(step, 1, params))
    assert result.ok, result.message
    assert REDIS_PASSWORD not in result.message + json.dumps(dict(result.output))
    assert "matching '***" in result.message and result.output["pattern"] == "***" + "*"
    assert rd.exists(REDIS_PASSWORD) == 0


# -- parameters -----------------------------------------------------------------------


BASE = {"host": "cache"}


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("redis.ping", {}, "host: Field required"),
        ("redis.ping", {**BASE, "password": "hunter2"}, "password: Extra inputs are not permitted"),
        ("redis.ping", {**BASE, "passwordSecretRef": {"key": "password"}}, "passwordSecretRef.name: Field required"),
        ("redis.ping", {**BASE, "port": 70000}, "port: Input should be less than or equal to 65535"),
        ("redis.ping", {**BASE, "db": -1}, "db: Input should be greater than or equal to 0"),
        ("redis.memory", {**BASE, "maxRatio": 2}, "maxRatio: Input should be less than or equal to 1"),
        ("redis.dbsize", {**BASE, "maxKeys": -1}, "maxKeys: Input should be greater than or equal to 0"),
        ("redis.deleteByPattern", BASE, "pattern: Field required"),
        ("redis.deleteByPattern", {**BASE, "pattern": ""}, "pattern: String should have at least 1 character"),
        (
            "redis.deleteByPattern",
            {**BASE, "pattern": "a*", "batch": 0},
            "batch: Input should be greater than or equal to 1",
        ),
        (
            "redis.deleteByPattern",
            {**BASE, "pattern": "a*", "maxKeys": 0},
            "maxKeys: Input should be greater than or equal to 1",
        ),
        ("redis.flushAll", {**BASE, "async": "later"}, "async: Input should be a valid boolean"),
        ("redis.flushAll", {**BASE, "pattern": "a*"}, "pattern: Extra inputs are not permitted"),
    ],
)
def test_parameters_are_validated_with_precise_messages(name: str, params: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        REGISTRY.check(name, params)


@pytest.mark.parametrize(
    ("name", "destructive", "read_only"),
    [
        ("redis.ping", False, True),
        ("redis.memory", False, True),
        ("redis.dbsize", False, True),
        ("redis.deleteByPattern", True, False),
        ("redis.flushAll", True, False),
    ],
)
def test_traits(name: str, destructive: bool, read_only: bool) -> None:
    traits = REGISTRY.check(name, {**BASE, "pattern": "a*"} if name.endswith("Pattern") else BASE)
    assert (traits.destructive, traits.read_only) == (destructive, read_only)


async def test_a_host_that_does_not_resolve() -> None:
    result = await run("redis.ping", {"host": "no-such-host.invalid"})
    assert not result.ok
    assert result.message.startswith("redis no-such-host.invalid:6379/0: cannot connect: cannot resolve the host: ")
