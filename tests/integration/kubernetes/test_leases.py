"""Two leader electors on one Lease of the real API server (KubeLeases), with short durations.

Each replica records when its on_started/on_stopped ran (monotonic clock); a sampler checks
every 20 ms that at most one leads. The figures printed (run with ``-s``) are what
docs/reliability.md quotes.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any

import pytest

from runbook_operator.adapters.kube import Kube, KubeLeases
from runbook_operator.adapters.lease import JITTER, LeaderElector, LeaseConfig, LeaseConflict

LEASE = 3.0
RENEW = 2.0
RETRY = 0.5
LATENCY = 0.5  # a generous bound on the API round trips of one handover on this 2-core machine


class Partitionable:
    """A replica's KubeLeases that can be cut off from the API server (every call fails);
    ``last_sent`` is when the last write that succeeded was sent."""

    def __init__(self, leases: KubeLeases) -> None:
        self._leases = leases
        self.cut = False
        self.last_sent = 0.0

    def _check(self) -> None:
        if self.cut:
            raise ConnectionError("cannot reach the API server: partitioned by the test")

    async def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        self._check()
        return await self._leases.get(namespace, name)

    async def create(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        self._check()
        sent = time.monotonic()
        written = await self._leases.create(namespace, body)
        self.last_sent = sent
        return written

    async def replace(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        self._check()
        sent = time.monotonic()
        written = await self._leases.replace(namespace, name, body)
        self.last_sent = sent
        return written


class Replica:
    def __init__(self, kube: Kube, namespace: str, identity: str) -> None:
        self.identity = identity
        self.leases = Partitionable(KubeLeases(kube, timeout=RENEW))
        self.started: list[float] = []
        self.stopped: list[float] = []
        config = LeaseConfig(namespace, identity, lease_duration=LEASE, renew_deadline=RENEW, retry_period=RETRY)
        self.elector = LeaderElector(
            self.leases, config,
            on_started=lambda: self.started.append(time.monotonic()),
            on_stopped=lambda: self.stopped.append(time.monotonic()),
        )  # fmt: skip
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self.elector.run())

    async def stop(self) -> float:
        """Cancel run() (a graceful stop) and wait for it; how long it took."""
        assert self.task is not None
        began = time.monotonic()
        self.task.cancel()
        with suppress(asyncio.CancelledError):
            await self.task
        return time.monotonic() - began

    def terms(self) -> list[tuple[float, float]]:
        """Each time it led, as (started, stopped); a term still going ends now."""
        ends = [*self.stopped, *([time.monotonic()] * (len(self.started) - len(self.stopped)))]
        return list(zip(self.started, ends, strict=True))


@asynccontextmanager
async def replicas(kube: Kube, namespace: str) -> AsyncIterator[tuple[Replica, Replica]]:
    pair = Replica(kube, namespace, "replica-a_0000000a"), Replica(kube, namespace, "replica-b_0000000b")
    for replica in pair:
        replica.start()
    try:
        yield pair
    finally:
        for replica in pair:
            if replica.task is not None and not replica.task.done():
                await replica.stop()


async def watch(pair: tuple[Replica, Replica], until: Callable[[], bool], limit: float) -> float:
    """Sample every 20 ms, asserting that at most one leads, until ``until()``; the time it took."""
    began = time.monotonic()
    while not until():
        assert sum(r.elector.leading for r in pair) <= 1, "two replicas lead at once"
        assert time.monotonic() - began < limit, f"not within {limit} s"
        await asyncio.sleep(0.02)
    return time.monotonic() - began


async def steady(pair: tuple[Replica, Replica], seconds: float) -> None:
    """For ``seconds`` (several renewals), exactly one replica leads at every sample."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        assert sum(r.elector.leading for r in pair) == 1, "not exactly one leader"
        await asyncio.sleep(0.02)


def no_overlap(pair: tuple[Replica, Replica]) -> None:
    """No term of one replica overlaps a term of the other (from its callbacks' times)."""
    for start_a, end_a in pair[0].terms():
        for start_b, end_b in pair[1].terms():
            assert end_a <= start_b or end_b <= start_a, f"terms overlap: {pair[0].terms()} {pair[1].terms()}"


def leader_of(pair: tuple[Replica, Replica]) -> tuple[Replica, Replica]:
    return (pair[0], pair[1]) if pair[0].elector.leading else (pair[1], pair[0])


async def test_the_adapter_reads_creates_and_replaces_at_a_resource_version(admin: Kube, namespace: str) -> None:
    """Its times on a whole second too: CoordinationV1Api would send them without their fraction (400)."""
    leases = KubeLeases(admin)
    assert await leases.get(namespace, "runbook-operator") is None
    body = {"metadata": {"name": "runbook-operator"}, "spec": {"holderIdentity": "a", "leaseDurationSeconds": 3,
            "renewTime": "2026-12-02T10:00:00.000000Z", "acquireTime": "2026-12-02T10:00:00.000000Z"}}  # fmt: skip
    created = await leases.create(namespace, body)
    assert created["spec"]["renewTime"] == "2026-12-02T10:00:00.000000Z"  # the API server's own JSON
    with pytest.raises(LeaseConflict, match=f"lease {namespace}/runbook-operator: .*already exists.* \\(409\\)"):
        await leases.create(namespace, body)
    renewed = await leases.replace(
        namespace, "runbook-operator", {**created, "spec": {**created["spec"], "holderIdentity": "b"}}
    )
    assert renewed["metadata"]["resourceVersion"] != created["metadata"]["resourceVersion"]
    with pytest.raises(LeaseConflict, match="the object has been modified"):  # at the version read before
        await leases.replace(namespace, "runbook-operator", created)
    assert (await leases.get(namespace, "runbook-operator") or {})["spec"]["holderIdentity"] == "b"
    with pytest.raises(RuntimeError, match=f"lease {namespace}/runbook-operator: .*\\(422\\)"):  # not a race: says why
        await leases.replace(namespace, "runbook-operator", {**renewed, "spec": {"leaseDurationSeconds": -1}})


async def test_one_leader_at_a_time_and_a_graceful_stop_hands_over_within_a_retry_period(
    admin: Kube, namespace: str
) -> None:
    async with replicas(admin, namespace) as pair:
        await watch(pair, lambda: any(r.elector.leading for r in pair), limit=2)
        await steady(pair, 2 * RENEW)  # a few renewals: the leader keeps it, the standby stays out
        takeovers = []
        for _ in range(3):  # hand over, and back, and over again
            old, new = leader_of(pair)
            stopping = time.monotonic()
            await old.stop()
            await watch(pair, lambda new=new: new.elector.leading, limit=RETRY * (1 + JITTER) + LATENCY)
            takeovers.append(new.started[-1] - stopping)
            assert takeovers[-1] <= RETRY * (1 + JITTER) + LATENCY
            assert old.stopped[-1] <= new.started[-1]
            old.start()
            await steady(pair, 1.0)
        no_overlap(pair)
        lease = await KubeLeases(admin).get(namespace, "runbook-operator")
        assert lease is not None
        spec = lease["spec"]
        assert spec["holderIdentity"] == leader_of(pair)[0].identity
        assert spec["leaseDurationSeconds"] == 3 and spec["leaseTransitions"] == 3
    print(
        f"\ngraceful handover (release, then the standby's next retry; retry {RETRY} s, jitter {JITTER}): "
        + ", ".join(f"{t:.2f} s" for t in takeovers)
        + f"; median {statistics.median(takeovers):.2f} s, max {max(takeovers):.2f} s"
    )


async def test_a_leader_cut_off_from_the_api_server_stops_before_the_standby_takes_over(
    admin: Kube, namespace: str
) -> None:
    async with replicas(admin, namespace) as pair:
        await watch(pair, lambda: any(r.elector.leading for r in pair), limit=2)
        await steady(pair, 2 * RETRY)
        old, new = leader_of(pair)
        cut = time.monotonic()
        old.leases.cut = True  # it cannot renew, nor release
        await watch(pair, lambda: new.elector.leading, limit=LEASE + RETRY * (1 + JITTER) + LATENCY)
        renewed = old.leases.last_sent  # its last renewal, sent before the cut
        stopped, started = old.stopped[0] - cut, new.started[0] - cut
        assert old.stopped[0] - renewed <= RENEW + 0.1  # the renew deadline (and a scheduling slack)
        assert new.started[0] - renewed >= LEASE  # the standby saw that renewal after it was sent: no sooner
        assert started <= LEASE + RETRY * (1 + JITTER) + LATENCY
        assert old.stopped[0] < new.started[0]
        no_overlap(pair)
        await steady(pair, 2 * RETRY)
        assert await old.stop() < RENEW + LATENCY  # its release fails, bounded
    print(
        f"\ncut-off leader (lease {LEASE} s, renew {RENEW} s, retry {RETRY} s): its last renewal was sent "
        f"{cut - renewed:.2f} s before the cut; it stopped leading {stopped:.2f} s after the cut, the standby led "
        f"{started:.2f} s after it; nobody led for {started - stopped:.2f} s"
    )
