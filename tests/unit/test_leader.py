"""The leader elector's state machine, on an in-memory Lease store and a manual clock.

Time only moves when a test says so (:meth:`FakeTime.advance`), and then from one
sleeper's wake-up to the next, so every figure below is exact and no test waits.
"""

from __future__ import annotations

import asyncio
import copy
import heapq
import itertools
import logging
import random
import re
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from runbook_operator.adapters import lease as leader
from runbook_operator.adapters.lease import JITTER, LeaderElector, LeaseConfig, LeaseConflict, default_identity
from runbook_operator.adapters.metrics import Metrics

NS, NAME = "runbook-operator", "runbook-operator"
FAR_FUTURE = "2100-01-01T00:00:00.000000Z"  # a holder whose wall clock runs 74 years ahead


class FakeTime:
    """A monotonic clock and a sleep that wakes only as :meth:`advance` passes its deadline."""

    def __init__(self) -> None:
        self.now = 1000.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        wake: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + seconds, next(self._order), wake))
        await wake

    async def advance(self, seconds: float) -> None:
        end = self.now + seconds
        await settle()
        while self._sleepers and self._sleepers[0][0] <= end:
            when, _, wake = heapq.heappop(self._sleepers)
            if not wake.done():  # a cancelled sleep (an attempt that won its race) is skipped
                self.now = max(self.now, when)
                wake.set_result(None)
                await settle()
        self.now = end
        await settle()

    async def until(self, condition: Callable[[], bool], limit: float) -> float:
        """Advance from one wake-up to the next until ``condition``; the time it took."""
        start = self.now
        while not condition():
            pending = [when for when, _, wake in self._sleepers if not wake.done()]
            assert pending and min(pending) - start <= limit, f"not within {limit} s"
            await self.advance(min(pending) - self.now)
        return self.now - start


async def settle() -> None:
    """Let every task run until it waits for time again (the fakes below never wait otherwise)."""
    for _ in range(50):
        await asyncio.sleep(0)


class FakeLeases:
    """Leases as the API server keeps them: a resourceVersion per write, 409 on a stale one."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.versions = itertools.count(1)
        self.writes: list[dict[str, Any]] = []  # every accepted spec, in order
        self.before_write: Callable[[], None] | None = None  # another writer that gets in first

    def put(self, spec: dict[str, Any]) -> None:
        """A write by someone else (another replica), straight into the store."""
        key = (NS, NAME)
        meta = {"name": NAME, "namespace": NS, "resourceVersion": str(next(self.versions))}
        self.objects[key] = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta, "spec": spec}

    @property
    def spec(self) -> dict[str, Any]:
        return dict(self.objects[(NS, NAME)]["spec"])

    async def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        found = self.objects.get((namespace, name))
        return copy.deepcopy(found) if found else None

    async def create(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        self._race()
        key = (namespace, body["metadata"]["name"])
        if key in self.objects:
            raise LeaseConflict(f"lease {namespace}/{key[1]} already exists")
        return self._store(key, body)

    async def replace(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        self._race()
        current = self.objects[(namespace, name)]
        if body["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
            raise LeaseConflict(f"lease {namespace}/{name} was modified")
        return self._store((namespace, name), body)

    def _race(self) -> None:
        if self.before_write is not None:
            self.before_write()

    def _store(self, key: tuple[str, str], body: dict[str, Any]) -> dict[str, Any]:
        stored = copy.deepcopy(body)
        stored["metadata"]["resourceVersion"] = str(next(self.versions))
        self.objects[key] = stored
        self.writes.append(dict(stored["spec"]))
        return copy.deepcopy(stored)


class Cut:
    """A replica's view of the store that can be cut off: every call fails, or hangs."""

    def __init__(self, leases: FakeLeases) -> None:
        self.leases = leases
        self.failing = False
        self.hanging = False

    def __getattr__(self, method: str) -> Any:
        async def call(*args: Any) -> Any:
            if self.hanging:
                await asyncio.Event().wait()
            if self.failing:
                raise ConnectionError("cannot reach the API server: connection refused")
            return await getattr(self.leases, method)(*args)

        return call


class Replica:
    """One elector, what its callbacks saw (as times on the fake clock), and its metrics."""

    def __init__(self, identity: str, leases: Any, time: FakeTime, **config: float) -> None:
        self.identity, self.time = identity, time
        self.started: list[float] = []
        self.stopped: list[float] = []
        self.registry = CollectorRegistry()
        self.elector = LeaderElector(
            leases, LeaseConfig(NS, identity, **config),
            on_started=lambda: self.started.append(time.now), on_stopped=self.on_stopped,
            metrics=Metrics(self.registry).leader(), clock=time.clock, sleep=time.sleep,
        )  # fmt: skip

    async def on_stopped(self) -> None:  # the callbacks may be coroutines too
        self.stopped.append(self.time.now)

    @property
    def leading(self) -> bool:
        return self.elector.leading

    def metric(self, name: str) -> float:
        return self.registry.get_sample_value(name) or 0.0


@asynccontextmanager
async def running(*replicas: Replica) -> AsyncIterator[dict[str, asyncio.Task[None]]]:
    """The replicas' run() tasks; cancelled (a graceful stop) at the end, in order."""
    tasks = {r.identity: asyncio.create_task(r.elector.run()) for r in replicas}
    await settle()
    try:
        yield tasks
    finally:
        for task in tasks.values():
            await stop(task, replicas[0].time)


async def stop(task: asyncio.Task[None], time: FakeTime) -> None:
    task.cancel()
    await time.advance(30)  # a release that hangs gives up after the renew deadline
    assert task.done()
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.fixture(autouse=True)
def seeded(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The acquire jitter from a seeded generator: the same waits every run."""
    monkeypatch.setattr(leader, "random", random.Random(14))
    yield


@pytest.fixture
def time() -> FakeTime:
    return FakeTime()


@pytest.fixture
def leases() -> FakeLeases:
    return FakeLeases()


def foreign(holder: str = "other_0001", **spec: Any) -> dict[str, Any]:
    return {"holderIdentity": holder, "leaseDurationSeconds": 15, "acquireTime": FAR_FUTURE,
            "renewTime": FAR_FUTURE, "leaseTransitions": 4, **spec}  # fmt: skip


# -- acquiring ------------------------------------------------------------------------


async def test_a_replica_creates_and_takes_a_missing_lease(
    time: FakeTime, leases: FakeLeases, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="runbook_operator.adapters.lease")
    a = Replica("a_00000001", leases, time)
    async with running(a):
        assert a.leading and a.started == [1000.0]
        spec = leases.spec
        assert spec["holderIdentity"] == "a_00000001"
        assert spec["leaseDurationSeconds"] == 15 and spec["leaseTransitions"] == 0
        assert spec["acquireTime"] == spec["renewTime"]
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", spec["renewTime"])  # a MicroTime
        assert a.metric("runbook_leader") == 1 and a.metric("runbook_leader_transitions_total") == 1
    assert "became leader of lease runbook-operator/runbook-operator (previous holder nobody (a new lease), " \
           "transitions 0)" in caplog.messages  # fmt: skip


async def test_a_valid_lease_of_another_holder_is_not_taken(time: FakeTime, leases: FakeLeases) -> None:
    leases.put(foreign())
    a = Replica("a_00000001", leases, time)
    async with running(a):
        await time.advance(14.9)
        assert not a.leading and a.started == []
        assert leases.spec == foreign()  # not written at all
        assert a.metric("runbook_leader") == 0


async def test_a_lease_expires_by_local_observation_even_if_its_renew_time_is_in_the_future(
    time: FakeTime, leases: FakeLeases, caplog: pytest.LogCaptureFixture
) -> None:
    """The holder stopped renewing; its renewTime is its own (skewed) wall clock, ignored."""
    caplog.set_level(logging.INFO, logger="runbook_operator.adapters.lease")
    leases.put(foreign())
    a = Replica("a_00000001", leases, time)
    async with running(a):
        took = await time.until(lambda: a.leading, limit=30)
        assert 15 <= took <= 15 + 2 * (1 + JITTER)  # expired 15 s after first seen; the next retry takes it
        spec = leases.spec
        assert spec["holderIdentity"] == "a_00000001" and spec["leaseTransitions"] == 5
        assert spec["acquireTime"] != FAR_FUTURE and spec["acquireTime"] == spec["renewTime"]
    assert any("previous holder other_0001, transitions 5" in m for m in caplog.messages)


@pytest.mark.parametrize("duration", [2147483647, 3600, "15s"])
async def test_a_foreign_lease_counts_for_at_most_our_own_lease_duration(
    time: FakeTime, leases: FakeLeases, duration: Any
) -> None:
    """Issue 22, finding 6: written once with a huge leaseDurationSeconds (or garbage), a Lease
    silenced every replica for as long as it said; a holder must renew like a real one."""
    leases.put(foreign(leaseDurationSeconds=duration))
    a = Replica("a_00000001", leases, time)
    async with running(a):
        took = await time.until(lambda: a.leading, limit=30)
        assert took <= 15 + 2 * (1 + JITTER)
        assert leases.spec["holderIdentity"] == "a_00000001" and leases.spec["leaseDurationSeconds"] == 15


async def test_a_holder_that_keeps_renewing_is_never_taken(time: FakeTime, leases: FakeLeases) -> None:
    leases.put(foreign())
    a = Replica("a_00000001", leases, time)
    async with running(a):
        for second in range(60):  # the other replica renews every 5 s (its wall clock: anything)
            if second % 5 == 0:
                leases.put(foreign(renewTime=f"2000-01-01T00:00:{second:02d}.000000Z"))
            await time.advance(1)
            assert not a.leading


async def test_a_released_lease_is_taken_at_the_next_retry(time: FakeTime, leases: FakeLeases) -> None:
    leases.put(foreign(holderIdentity="", leaseDurationSeconds=1))
    a = Replica("a_00000001", leases, time)
    async with running(a):
        assert a.leading  # at once: nobody holds it
        assert leases.spec["leaseTransitions"] == 5


# -- leading --------------------------------------------------------------------------


async def test_the_leader_renews_every_retry_period_keeping_acquire_time_and_transitions(
    time: FakeTime, leases: FakeLeases
) -> None:
    a = Replica("a_00000001", leases, time)
    async with running(a):
        first = leases.spec
        await time.advance(30)
        assert a.leading and a.started == [1000.0] and a.stopped == []
        assert len(leases.writes) == 1 + 15  # the creation, then one renewal every 2 s
        renewed = leases.spec
        assert renewed["acquireTime"] == first["acquireTime"] and renewed["leaseTransitions"] == 0
        assert renewed["renewTime"] > first["renewTime"]
        assert a.metric("runbook_leader_transitions_total") == 1  # renewals are no acquisitions


@pytest.mark.parametrize("outage", ["failing", "hanging"])
async def test_a_leader_that_cannot_renew_stops_before_another_can_take_over(
    time: FakeTime, leases: FakeLeases, outage: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A's API calls fail (or never answer); B sees the same store. A must stop leading
    within the renew deadline of its last renewal, and B start only after that."""
    caplog.set_level(logging.INFO, logger="runbook_operator.adapters.lease")
    view = Cut(leases)
    a, b = Replica("a_00000001", view, time), Replica("b_00000002", leases, time)
    async with running(a), running(b):
        await time.advance(7)
        assert a.leading and not b.leading
        last_renewal = time.now - 1  # A renews at 1000, 1002, ..., 1006: the last one sent at 1006
        setattr(view, outage, True)
        await time.until(lambda: b.leading, limit=30)
        assert a.stopped and a.stopped[0] <= last_renewal + 10  # the renew deadline
        assert b.started[0] >= last_renewal + 15 > a.stopped[0]  # the lease duration: no overlap
        assert a.metric("runbook_leader") == 0 and b.metric("runbook_leader") == 1
        assert leases.spec["holderIdentity"] == "b_00000002" and leases.spec["leaseTransitions"] == 1
        await time.advance(20)
        assert not a.leading and b.leading  # A keeps trying, and respects B's lease
    reason = "connection refused" if outage == "failing" else "did not answer"
    assert any(m.startswith("stopped leading lease runbook-operator/runbook-operator because it could not renew "
                            "the lease within 10 s") and reason in m for m in caplog.messages)  # fmt: skip


async def test_a_leader_whose_lease_was_taken_stops_at_its_next_renewal(
    time: FakeTime, leases: FakeLeases, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="runbook_operator.adapters.lease")
    a = Replica("a_00000001", leases, time)
    async with running(a):
        leases.put(foreign("intruder_01"))
        await time.advance(2)
        assert not a.leading and a.stopped == [1002.0]
        assert leases.spec["holderIdentity"] == "intruder_01"  # not overwritten
    assert ("stopped leading lease runbook-operator/runbook-operator because the lease is now held by intruder_01"
            in caplog.messages)  # fmt: skip


async def test_a_conflict_is_a_lost_race_not_an_error(
    time: FakeTime, leases: FakeLeases, caplog: pytest.LogCaptureFixture
) -> None:
    """Between A's read and its write, B takes the released lease: A's write is refused (409)."""
    leases.put(foreign(holderIdentity="", leaseDurationSeconds=1))

    def b_gets_in_first() -> None:
        leases.before_write = None
        leases.put(foreign("b_00000002", leaseTransitions=5))

    leases.before_write = b_gets_in_first
    a = Replica("a_00000001", leases, time)
    async with running(a):
        assert not a.leading and leases.spec["holderIdentity"] == "b_00000002"
        await time.advance(10)
        assert not a.leading and leases.writes == []  # B's lease is valid: A does not try to write it
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_an_unreachable_api_server_is_logged_and_retried(
    time: FakeTime, leases: FakeLeases, caplog: pytest.LogCaptureFixture
) -> None:
    view = Cut(leases)
    view.failing = True
    a = Replica("a_00000001", view, time)
    async with running(a):
        await time.advance(10)
        assert not a.leading
        view.failing = False
        await time.until(lambda: a.leading, limit=2 * (1 + JITTER))
    assert "lease runbook-operator/runbook-operator: cannot reach the API server: connection refused" in [
        r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
    ]


# -- stopping and handing over --------------------------------------------------------


async def test_a_graceful_stop_releases_the_lease(time: FakeTime, leases: FakeLeases) -> None:
    a = Replica("a_00000001", leases, time)
    async with running(a) as tasks:
        await time.advance(5)
        await stop(tasks["a_00000001"], time)
        assert not a.leading and a.stopped == [1005.0]
        spec = leases.spec
        assert spec["holderIdentity"] == "" and spec["leaseDurationSeconds"] == 1
        assert spec["acquireTime"] == spec["renewTime"] and spec["leaseTransitions"] == 0
        assert a.metric("runbook_leader") == 0


async def test_a_standby_takes_a_released_lease_within_one_jittered_retry_period(
    time: FakeTime, leases: FakeLeases
) -> None:
    a, b = Replica("a_00000001", leases, time), Replica("b_00000002", leases, time)
    async with running(a, b) as tasks:
        await time.advance(20)
        assert a.leading and not b.leading
        released = time.now
        tasks["a_00000001"].cancel()
        took = await time.until(lambda: b.leading, limit=10)
        assert took <= 2 * (1 + JITTER)  # the standby's next acquire attempt
        assert a.stopped == [released] and b.started == [released + took]
        assert leases.spec["holderIdentity"] == "b_00000002" and leases.spec["leaseTransitions"] == 1


async def test_transitions_count_changes_of_holder_and_each_replica_counts_its_acquisitions(
    time: FakeTime, leases: FakeLeases
) -> None:
    a, b = Replica("a_00000001", leases, time), Replica("b_00000002", leases, time)
    async with running(a) as first, running(b) as second:
        await stop(first["a_00000001"], time)  # A hands over to B
        first["a_00000001"] = asyncio.create_task(a.elector.run())
        await stop(second["b_00000002"], time)  # and B back to A
        await time.until(lambda: a.leading, limit=10)
        holders = [w["holderIdentity"] for w in leases.writes]
        assert [h for i, h in enumerate(holders) if i == 0 or h != holders[i - 1]] == [
            "a_00000001", "", "b_00000002", "", "a_00000001",
        ]  # fmt: skip
        assert leases.spec["leaseTransitions"] == 2
        assert a.metric("runbook_leader_transitions_total") == 2
        assert b.metric("runbook_leader_transitions_total") == 1


# -- configuration --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"renew_deadline": 15.0}, "renew_deadline (15.0 s) must be shorter than lease_duration (15.0 s)"),
        ({"lease_duration": 5.0}, "renew_deadline (10.0 s) must be shorter than lease_duration (5.0 s)"),
        ({"retry_period": 10.0}, "retry_period (10.0 s) must be shorter than renew_deadline (10.0 s)"),
        ({"retry_period": 0.0}, "retry_period must be more than 0 s, got 0.0"),
        ({"lease_duration": 12.5}, "lease_duration must be a whole number of seconds"),
        ({"identity": ""}, "identity must not be empty"),
        ({"namespace": ""}, "namespace must not be empty"),
    ],
)
def test_a_bad_config_is_refused_naming_the_field(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"leader election: {message}")):
        LeaseConfig(**{"namespace": NS, "identity": "a_00000001", **fields})


def test_the_defaults_are_client_gos() -> None:
    config = LeaseConfig(NS, "a_00000001")
    assert (config.name, config.lease_duration, config.renew_deadline, config.retry_period) == (
        "runbook-operator", 15.0, 10.0, 2.0,
    )  # fmt: skip


def test_the_default_identity_is_the_pod_name_and_a_random_suffix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAME", "runbook-operator-7d9c-x2x4q")
    first, second = default_identity(), default_identity()
    assert re.fullmatch(r"runbook-operator-7d9c-x2x4q_[0-9a-f]{8}", first) and first != second
    monkeypatch.delenv("POD_NAME")
    assert default_identity().rsplit("_", 1)[0] == leader.socket.gethostname()


def test_the_cli_needs_a_lease_namespace_and_a_sane_config(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from runbook_operator.entrypoints import cli
    from runbook_operator.entrypoints.cli import run as run_command

    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    args = cli.build_parser().parse_args(["run", "--leader-elect"])
    assert run_command.lease_config(args) is None
    assert "--leader-elect needs --leader-elect-namespace or $POD_NAMESPACE" in capsys.readouterr().err
    args = cli.build_parser().parse_args(
        ["run", "--leader-elect", "--leader-elect-namespace=ops", "--leader-elect-renew-deadline=20s"]
    )
    assert run_command.lease_config(args) is None
    assert "renew" in capsys.readouterr().err
    monkeypatch.setenv("POD_NAMESPACE", "runbook-operator")
    monkeypatch.setenv("POD_NAME", "runbook-operator-7d9f-abcde")
    config = run_command.lease_config(cli.build_parser().parse_args(["run", "--leader-elect"]))
    assert (config.namespace, config.name, config.lease_duration, config.renew_deadline, config.retry_period) == (
        "runbook-operator", "runbook-operator", 15.0, 10.0, 2.0,
    )  # fmt: skip
    assert config.identity.startswith("runbook-operator-7d9f-abcde_")
