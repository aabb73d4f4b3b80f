"""One asyncio task per open Incident, driven by the pure core.

The task loops: ``decide`` -> write the status once (with its Events) -> run at
most one step -> ``complete`` -> repeat, sleeping when the core says to wait
until a time or until the Incident changes. Watch events only refresh the latest
object and wake the task, so no finalizer or annotation is ever written.
All progress is in ``.status``; a new operator process resumes from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from runbook_operator.domain.lifecycle import Event, complete, decide
from runbook_operator.domain.matching import Candidate
from runbook_operator.domain.model import Incident
from runbook_operator.domain.status import Phase, Status
from runbook_operator.engine.executor import Executor

log = logging.getLogger(__name__)
Body = Mapping[str, Any]
Clock = Callable[[], datetime]
RETRY_DELAY = 5.0  # after an API error, try the write again this much later


def utcnow() -> datetime:
    return datetime.now(UTC)


class Cluster(Protocol):
    async def patch_status(self, plural: str, namespace: str, name: str, status: Mapping[str, Any]) -> None: ...
    async def post_event(self, body: Mapping[str, Any], type_: str, reason: str, message: str) -> None: ...


@dataclass
class _Worker:
    body: Body
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class Reconciler:
    def __init__(
        self,
        cluster: Cluster,
        executor: Executor,
        candidates: Callable[[str], Sequence[Candidate]],
        clock: Clock = utcnow,
    ) -> None:
        self._cluster, self._executor, self._candidates, self._clock = cluster, executor, candidates, clock
        self._workers: dict[str, _Worker] = {}

    # -- fed by the watch --------------------------------------------------
    def observe(self, body: Body) -> None:
        """The latest version of an Incident arrived; start or wake its task."""
        uid = body["metadata"]["uid"]
        worker = self._workers.get(uid)
        if worker is None:
            if (body.get("status") or {}).get("phase") == Phase.RESOLVED.value:
                return  # finished before we saw it; nothing to do
            worker = self._workers[uid] = _Worker(body)
            worker.task = asyncio.create_task(self._drive(uid), name=f"incident/{uid}")
        worker.body = body
        worker.wakeup.set()

    def forget(self, uid: str) -> None:
        worker = self._workers.pop(uid, None)
        if worker and worker.task:
            worker.task.cancel()

    def wake_namespace(self, namespace: str) -> None:
        for worker in self._workers.values():
            if worker.body["metadata"].get("namespace") == namespace:
                worker.wakeup.set()

    @property
    def active(self) -> int:
        return len(self._workers)

    async def stop(self) -> None:
        tasks = [w.task for w in self._workers.values() if w.task]
        self._workers.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- one incident ------------------------------------------------------
    async def _drive(self, uid: str) -> None:
        worker = self._workers[uid]
        written = Status.from_dict(worker.body.get("status"))
        status, pending = written, list[Event]()
        while self._workers.get(uid) is worker:
            worker.wakeup.clear()
            body = worker.body
            incident = Incident.from_body(body)
            decision = decide(incident, status, self._candidates(incident.namespace), self._clock())
            status = decision.status
            pending.extend(decision.events)
            if status != written or pending:
                if not await self._write(body, status, pending):
                    await self._sleep(worker, RETRY_DELAY)
                    continue
                written, pending = status, []
            if decision.run is not None:
                result = await self._executor.run(incident, decision.run)
                status, events = complete(status, decision.run, result, self._clock())
                pending.extend(events)
                continue
            if status.phase == Phase.RESOLVED.value:
                self._workers.pop(uid, None)
                return
            delay = None if decision.wake_at is None else (decision.wake_at - self._clock()).total_seconds()
            await self._sleep(worker, delay)

    async def _write(self, body: Body, status: Status, events: list[Event]) -> bool:
        meta = body["metadata"]
        try:
            await self._cluster.patch_status("incidents", meta["namespace"], meta["name"], status.to_dict())
        except Exception as err:  # API down, object gone, RBAC: keep the state, try again later
            log.warning("incident %s/%s: status write failed: %s", meta["namespace"], meta["name"], _short(err))
            return False
        for event in events:
            log.info("incident %s/%s: %s: %s", meta["namespace"], meta["name"], event.reason, event.message)
            try:
                await self._cluster.post_event(body, event.type, event.reason, event.message)
            except Exception as err:  # Events are best effort; the timeline in status has them too
                log.warning(
                    "incident %s/%s: event %s not posted: %s",
                    meta["namespace"],
                    meta["name"],
                    event.reason,
                    _short(err),
                )
        return True

    @staticmethod
    async def _sleep(worker: _Worker, seconds: float | None) -> None:
        if seconds is not None and seconds <= 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(worker.wakeup.wait(), seconds)


def _short(err: Exception) -> str:
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    return text[:300]
