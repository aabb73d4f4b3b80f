"""Leader election on a ``coordination.k8s.io/v1`` Lease, with client-go's semantics.

Of several replicas only the one that holds the Lease drives Incidents; the others keep
trying to take it. As in client-go's ``tools/leaderelection``:

- a Lease held by another identity is valid until its ``leaseDurationSeconds`` after the
  moment *this* process saw its record change, on the local monotonic clock: the record's
  ``renewTime`` is another machine's wall clock, and clocks are skewed. Unlike client-go,
  never longer than this replica's own ``lease_duration``: whoever may write the Lease
  (a namespace editor) could otherwise write ``leaseDurationSeconds: 2147483647`` once and
  stop every replica for 68 years; now a holder has to keep renewing, as a real one does;
- every write is an optimistic update with the ``resourceVersion`` read: a conflict means
  another replica wrote first, a lost race rather than an error;
- ``leaseTransitions`` grows by one when the holder changes; ``acquireTime`` is kept
  while the same holder renews;
- on a graceful stop the leader releases the Lease as ``ReleaseOnCancel`` does (no holder,
  ``leaseDurationSeconds: 1``), so a standby takes over within about a retry period.

One deliberate difference: the renew deadline counts from the moment the last successful
write was *sent* (client-go counts from the end of the retry period after it). Every
other replica saw that write later, so it cannot take the Lease before ``lease_duration``
from then; stopping at ``renew_deadline`` from then, with ``renew_deadline <
lease_duration``, is what makes the old leader stop before anyone else can start, even
when an API call hangs (an attempt never waits past the deadline).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import random
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from runbook_operator.adapters.metrics import LeaderMetrics

log = logging.getLogger(__name__)
T = TypeVar("T")

JITTER = 0.2  # acquire retries wait retry_period * (1 + up to 0.2); client-go spreads up to 1.2, which
# with two replicas only delays a handover (up to 4.4 s after a release instead of 2.4 s)


class LeaseConflict(Exception):
    """The Lease changed since it was read (HTTP 409), or was created by someone else first."""


class Leases(Protocol):
    """Lease objects as the API server's JSON (``metadata.resourceVersion``, ``spec``)."""

    async def get(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    async def create(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]: ...

    async def replace(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]: ...


@dataclass(frozen=True)
class LeaseConfig:
    namespace: str
    identity: str
    name: str = "runbook-operator"
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def __post_init__(self) -> None:
        for field in ("namespace", "identity", "name"):
            if not getattr(self, field):
                raise ValueError(f"leader election: {field} must not be empty")
        for field in ("lease_duration", "renew_deadline", "retry_period"):
            if not getattr(self, field) > 0:
                raise ValueError(f"leader election: {field} must be more than 0 s, got {getattr(self, field)}")
        if self.lease_duration != int(self.lease_duration):
            raise ValueError(
                f"leader election: lease_duration must be a whole number of seconds (the Lease stores "
                f"leaseDurationSeconds), got {self.lease_duration}"
            )
        if self.renew_deadline >= self.lease_duration:
            raise ValueError(
                f"leader election: renew_deadline ({self.renew_deadline} s) must be shorter than lease_duration "
                f"({self.lease_duration} s), so a leader that cannot renew stops before its lease can be taken"
            )
        if self.retry_period >= self.renew_deadline:
            raise ValueError(
                f"leader election: retry_period ({self.retry_period} s) must be shorter than renew_deadline "
                f"({self.renew_deadline} s), so a leader retries a failed renewal before it gives up"
            )


def default_identity() -> str:
    """The pod's name (or the host's), and a random suffix: a restarted process is a new holder."""
    return f"{os.environ.get('POD_NAME') or socket.gethostname()}_{secrets.token_hex(4)}"


def _microtime() -> str:
    """Now, as a Lease's MicroTime (RFC 3339 with exactly six fractional digits)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    """Runs for the process's lifetime: tries to acquire, leads while it renews, and again.

    ``on_started`` and ``on_stopped`` (plain or async) are awaited inside the loop, so
    they should only flip what drives Incidents; ``leading`` is already False when
    ``on_stopped`` runs."""

    def __init__(
        self,
        leases: Leases,
        config: LeaseConfig,
        on_started: Callable[[], Awaitable[None] | None],
        on_stopped: Callable[[], Awaitable[None] | None],
        metrics: LeaderMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._leases, self._config = leases, config
        self._on_started, self._on_stopped = on_started, on_stopped
        self._metrics, self._clock, self._sleep = metrics, clock, sleep
        self._where = f"{config.namespace}/{config.name}"
        self._lease: dict[str, Any] | None = None  # the last object read or written (its resourceVersion)
        self._observed: dict[str, Any] = {}  # the last record (spec) seen, and when, on the local clock
        self._observed_at = 0.0
        self._renewed_at = 0.0  # when the last successful write of ours was sent
        self._leading = False
        self._error: str | None = None  # the last failed attempt's reason, for the log

    @property
    def leading(self) -> bool:
        return self._leading

    async def run(self) -> None:
        """Until cancelled; when cancelled while holding the Lease, stops leading and releases it."""
        try:
            while True:
                await self._acquire()
                await self._start()
                await self._stop(await self._renew())
        finally:
            if self._leading:
                await self._stop("the operator is stopping")
            if self._holder() == self._config.identity:
                await self._release()

    # -- the states ----------------------------------------------------------------

    async def _acquire(self) -> None:
        while not await self._attempt(self._config.renew_deadline):
            await self._sleep(self._config.retry_period * (1 + JITTER * random.random()))

    async def _renew(self) -> str:
        """Renew every retry period; the reason leading must stop."""
        deadline_s = self._config.renew_deadline
        while True:
            deadline = self._renewed_at + deadline_s
            await self._sleep(max(0.0, min(self._config.retry_period, deadline - self._clock())))
            if self._clock() < deadline and await self._attempt(deadline - self._clock()):
                continue
            holder = self._holder()
            if holder != self._config.identity:
                return f"the lease is now held by {holder or 'nobody'}"
            if self._clock() >= deadline:
                return f"it could not renew the lease within {deadline_s:g} s ({self._error or 'no answer'})"

    async def _start(self) -> None:
        self._leading = True
        if self._metrics is not None:
            self._metrics.started()
        await _maybe_await(self._on_started())

    async def _stop(self, reason: str) -> None:
        self._leading = False
        if self._metrics is not None:
            self._metrics.stopped()
        log.info("stopped leading lease %s because %s", self._where, reason)
        await _maybe_await(self._on_stopped())

    # -- one attempt -------------------------------------------------------------------

    async def _attempt(self, seconds: float) -> bool:
        """One try to acquire or renew, given up after ``seconds``; False when it did not succeed."""
        try:
            return await self._within(self._try_acquire_or_renew(), seconds)
        except LeaseConflict:
            self._error = "another replica wrote the lease first"
        except TimeoutError:
            self._error = f"the API server did not answer within {seconds:.3g} s"
        except Exception as err:  # the API refused or could not be reached: try again later
            self._error = str(err) or type(err).__name__
            log.warning("lease %s: %s", self._where, self._error)
        return False

    async def _try_acquire_or_renew(self) -> bool:
        identity = self._config.identity
        sent = self._clock()
        now = _microtime()
        record = {
            "holderIdentity": identity,
            "leaseDurationSeconds": int(self._config.lease_duration),
            "acquireTime": now,
            "renewTime": now,
            "leaseTransitions": 0,
        }
        if self._leading and self._lease is not None:  # the fast path: our own last write, its version
            record |= {k: self._observed.get(k) for k in ("acquireTime", "leaseTransitions")}
            try:
                await self._write(self._lease, record, sent)
                return True
            except LeaseConflict:
                pass  # someone wrote it meanwhile: read it and decide again
        found = await self._leases.get(self._config.namespace, self._config.name)
        if found is None:
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self._config.name, "namespace": self._config.namespace}}  # fmt: skip
            await self._write(body, record, sent, previous="nobody (a new lease)")
            return True
        self._observe(found)
        holder = self._holder()
        if holder and holder != identity and self._valid():
            self._error = f"the lease is held by {holder}"
            return False
        transitions = int(self._observed.get("leaseTransitions") or 0)
        if holder == identity:
            record |= {"acquireTime": self._observed.get("acquireTime"), "leaseTransitions": transitions}
        else:
            record["leaseTransitions"] = transitions + 1
        await self._write(found, record, sent, previous=holder or "nobody (released)")
        return True

    async def _write(
        self, lease: dict[str, Any], record: dict[str, Any], sent: float, previous: str | None = None
    ) -> None:
        """Replace ``lease`` (at the resourceVersion it was read) with ``record`` as its spec, or
        create it when it has no resourceVersion; ``sent`` is when this attempt began."""
        body = _with_spec(lease, record)
        if "resourceVersion" in lease["metadata"]:
            written = await self._leases.replace(self._config.namespace, self._config.name, body)
        else:
            written = await self._leases.create(self._config.namespace, body)
        self._observe(written)
        self._renewed_at = sent
        self._error = None
        if previous is not None and not self._leading:
            log.info(
                "became leader of lease %s (previous holder %s, transitions %s)",
                self._where, previous, record["leaseTransitions"],
            )  # fmt: skip

    async def _release(self) -> None:
        """Hand the Lease back (client-go's ReleaseOnCancel); a failure only delays the takeover."""
        try:
            await self._within(self._try_release(), self._config.renew_deadline)
        except Exception as err:
            log.warning(
                "lease %s: not released (%s); a standby takes over when it expires",
                self._where, str(err) or type(err).__name__,
            )  # fmt: skip

    async def _try_release(self) -> None:
        while True:
            found = await self._leases.get(self._config.namespace, self._config.name)
            if found is None:
                return
            self._observe(found)
            if self._holder() != self._config.identity:
                return  # someone else holds it already
            now = _microtime()
            released = {"holderIdentity": "", "leaseDurationSeconds": 1, "acquireTime": now, "renewTime": now}
            try:
                body = _with_spec(found, released)
                self._observe(await self._leases.replace(self._config.namespace, self._config.name, body))
                log.info("released lease %s", self._where)
                return
            except LeaseConflict:
                continue  # it changed since read: read it again, as client-go does

    # -- the observed record ------------------------------------------------------

    def _observe(self, lease: dict[str, Any]) -> None:
        self._lease = lease
        spec = dict(lease.get("spec") or {})
        if spec != self._observed:
            self._observed, self._observed_at = spec, self._clock()

    def _holder(self) -> str:
        return str(self._observed.get("holderIdentity") or "")

    def _valid(self) -> bool:
        try:
            duration = float(self._observed.get("leaseDurationSeconds") or 0)
        except (TypeError, ValueError):
            duration = 0.0  # not a number: nobody holds it
        return self._clock() < self._observed_at + min(duration, self._config.lease_duration)

    async def _within(self, attempt: Coroutine[Any, Any, T], seconds: float) -> T:
        """``attempt``'s result, or TimeoutError when ``seconds`` pass first on the elector's clock."""
        task = asyncio.ensure_future(attempt)
        timer = asyncio.ensure_future(self._sleep(max(0.0, seconds)))
        try:
            await asyncio.wait((task, timer), return_when=asyncio.FIRST_COMPLETED)
        finally:
            task.cancel()
            timer.cancel()
        if not task.done() or task.cancelled():
            raise TimeoutError
        return task.result()


def _with_spec(lease: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    """``lease`` with ``record``'s fields written over its spec (other fields, such as a strategy, kept)."""
    return {**lease, "spec": {**(lease.get("spec") or {}), **record}}


async def _maybe_await(result: Awaitable[None] | None) -> None:
    if inspect.isawaitable(result):
        await result
