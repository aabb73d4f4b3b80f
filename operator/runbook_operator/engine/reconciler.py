"""One asyncio task per open Incident, driven by the pure core.

The task loops: ``decide`` -> write the status once (with its Events) -> run at
most one step -> ``complete`` -> repeat, sleeping when the core says to wait
until a time or until the Incident changes. Watch events only refresh the latest
object and wake the task, so no finalizer or annotation is ever written.
All progress is in ``.status``; a new operator process resumes from it.

Events are posted after the status write that carries them, in order per incident,
but off the incident's path: a background lane posts at most ``EVENT_POSTS`` at a
time, so under an alert storm status writes (what ``kubectl get`` and the core
read) never queue behind Events in the API client's thread pool, and incidents
move on while their Events trail (Events are best effort; status has them too).
Likewise, at most ``LATER_WRITES`` writes of incidents already under way are in
flight at once: an incident's first status write (the operator has seen it and
matched a policy) never queues behind the progress of hundreds of others.

A book of every incident's target and progress (rebuilt from the watch after a
restart) gives the core its peers: the lock, the cooldown and duplicates per
target. It is updated as soon as a decision is taken, before the write, so two
incidents of one target never both start remediating.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from runbook_operator.domain.lifecycle import Event, Peer, complete, decide
from runbook_operator.domain.matching import Candidate, PolicySet
from runbook_operator.domain.model import Incident, Step
from runbook_operator.domain.status import Phase, Status, parse_timestamp
from runbook_operator.engine.archive import TERMINAL, ArchiveRecord, ArchiveWriter
from runbook_operator.engine.executor import Executor
from runbook_operator.engine.metrics import Metrics

log = logging.getLogger(__name__)
Body = Mapping[str, Any]
Clock = Callable[[], datetime]
RETRY_DELAY = 5.0  # after an API error, try the write again this much later
EVENT_POSTS = 4  # Events in flight at once, of the Kube adapter's 16 threads; the rest is for status writes
LATER_WRITES = 10  # status writes in flight at once for incidents that have a status; first writes are not held
NONCE_BYTES = 8  # an approval request's nonce: 16 hex digits, unguessable before the request exists
STOP_GRACE = 5.0  # on stop, seconds to let Events already decided reach the API server


def utcnow() -> datetime:
    return datetime.now(UTC)


class Cluster(Protocol):
    async def patch_status(self, plural: str, namespace: str, name: str, status: Mapping[str, Any]) -> None: ...
    async def post_event(self, body: Mapping[str, Any], type_: str, reason: str, message: str) -> None: ...
    async def delete(self, plural: str, namespace: str, name: str) -> None: ...


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
        resolved_ttl: float | None = None,
        metrics: Metrics | None = None,
        archive: ArchiveWriter | None = None,
    ) -> None:
        self._cluster, self._executor, self._candidates, self._clock = cluster, executor, candidates, clock
        self._ttl, self._metrics, self._archive = resolved_ttl, metrics, archive
        self._workers: dict[str, _Worker] = {}
        self._phases: dict[str, str | None] = {}  # uid -> phase, of every incident seen (for the gauges)
        self._finished: set[str] = set()  # resolved and its task done: later (older) watch events are ignored
        self._book: dict[str, tuple[str, Peer]] = {}  # uid -> (target, peer view)
        self._tasks: set[asyncio.Task[None]] = set()  # every incident task not yet done (a leak shows here)
        self._policy_sets: dict[str, PolicySet] = {}  # namespace -> its policies, indexed while they stay the same
        self._event_slots = asyncio.Semaphore(EVENT_POSTS)
        self._write_slots = asyncio.Semaphore(LATER_WRITES)
        self._posting: dict[str, asyncio.Task[None]] = {}  # uid -> the task posting its latest Events

    # -- fed by the watch --------------------------------------------------
    def observe(self, body: Body) -> None:
        """The latest version of an Incident arrived; start or wake its task."""
        uid = body["metadata"]["uid"]
        if uid in self._finished:
            return  # the watch lags behind our own writes: an older version must not start it again
        worker = self._workers.get(uid)
        if worker is None:
            status = Status.from_dict(body.get("status"))
            self._phases[uid] = status.phase
            incident = Incident.from_body(body)
            self._note(uid, incident, status)
            if status.phase in TERMINAL:  # finished before we saw it (a restart): archive it again, harmlessly
                self._archived(uid, incident, status)
            if status.phase == Phase.RESOLVED and self._ttl is None:
                self._finished.add(uid)
                return  # finished before we saw it; nothing to do
            worker = self._workers[uid] = _Worker(body)
            worker.task = asyncio.create_task(self._drive(uid), name=f"incident/{uid}")
            self._tasks.add(worker.task)
            worker.task.add_done_callback(self._tasks.discard)
        worker.body = body
        worker.wakeup.set()

    def forget(self, uid: str) -> None:
        worker = self._workers.pop(uid, None)
        entry = self._book.pop(uid, None)
        self._finished.discard(uid)
        self._phases.pop(uid, None)
        if worker and worker.task:
            worker.task.cancel()
        if entry:
            self._wake_target(entry[0], uid)

    def wake_namespace(self, namespace: str) -> None:
        for worker in self._workers.values():
            if worker.body["metadata"].get("namespace") == namespace:
                worker.wakeup.set()

    @property
    def active(self) -> int:
        return len(self._workers)

    @property
    def tasks(self) -> int:
        """Incident tasks not yet done, whether or not a worker still refers to them."""
        return len(self._tasks)

    def phases(self) -> list[str | None]:
        return list(self._phases.values())

    def _progressed(self, uid: str, incident: Incident, before: Status, after: Status) -> None:
        self._phases[uid] = after.phase
        if self._metrics is not None and before is not after:
            self._metrics.transition(incident, before, after)
        if after.phase in TERMINAL and (after.phase != before.phase or after.acknowledgedAt != before.acknowledgedAt):
            self._archived(uid, incident, after)

    def _archived(self, uid: str, incident: Incident, status: Status) -> None:
        if self._archive is not None:
            self._archive.enqueue(ArchiveRecord.of(uid, incident, status, self._clock()))

    async def stop(self) -> None:
        tasks = [w.task for w in self._workers.values() if w.task]
        self._workers.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        posting = list(self._posting.values())
        if posting:
            _, late = await asyncio.wait(posting, timeout=STOP_GRACE)
            for task in late:
                task.cancel()
        if self._archive is not None:
            await self._archive.close()

    def _policies(self, namespace: str) -> Sequence[Candidate]:
        """The namespace's candidates, indexed for matching; the index is rebuilt only when they change."""
        current = self._candidates(namespace)
        cached = self._policy_sets.get(namespace)
        if cached is not None and cached.same_as(current):
            return cached
        if not current:
            self._policy_sets.pop(namespace, None)
            return current
        cached = self._policy_sets[namespace] = PolicySet(current)
        return cached

    # -- one incident ------------------------------------------------------
    def _note(self, uid: str, incident: Incident, status: Status) -> None:
        if incident.target is None:
            return
        target = str(incident.target)
        peer = Peer.of(incident, status)
        previous = self._book.get(uid)
        self._book[uid] = (target, peer)
        if previous is None or previous[1] != peer:
            self._wake_target(target, uid)

    def _peers(self, uid: str, incident: Incident) -> list[Peer]:
        if incident.target is None:
            return []
        target = str(incident.target)
        return [peer for other, (t, peer) in self._book.items() if t == target and other != uid]

    def _wake_target(self, target: str, source: str) -> None:
        for uid, (t, _) in self._book.items():
            worker = self._workers.get(uid)
            if t == target and uid != source and worker is not None:
                worker.wakeup.set()

    async def _drive(self, uid: str) -> None:
        worker = self._workers[uid]
        written = Status.from_dict(worker.body.get("status"))
        status, pending = written, list[Event]()
        while self._workers.get(uid) is worker:
            worker.wakeup.clear()
            body = worker.body
            incident = Incident.from_body(body)
            now = self._clock()
            candidates, peers = self._policies(incident.namespace), self._peers(uid, incident)
            decision = decide(incident, status, candidates, now, peers, nonce=secrets.token_hex(NONCE_BYTES))
            self._progressed(uid, incident, status, decision.status)
            status = decision.status
            self._note(uid, incident, status)
            pending.extend(decision.events)
            if status != written or pending:
                if not await self._write(body, status, pending, first=written.phase is None):
                    await self._sleep(worker, RETRY_DELAY)
                    continue
                written, pending = status, []
            if decision.run is not None:
                started = time.monotonic()
                result = await self._executor.run(incident, decision.run, _details(incident, status), status.policy)
                _log_step(incident, status, decision.run.step, result.ok, time.monotonic() - started)
                before = status
                status, events = complete(status, decision.run, result, self._clock())
                self._progressed(uid, incident, before, status)
                pending.extend(events)
                continue
            if status.phase == Phase.RESOLVED:
                await self._expire(uid, worker, status)
                return
            delay = None if decision.wake_at is None else (decision.wake_at - self._clock()).total_seconds()
            await self._sleep(worker, delay)

    async def _expire(self, uid: str, worker: _Worker, status: Status) -> None:
        """Delete a resolved incident once its TTL has passed (never, without a TTL)."""
        if self._ttl is not None and status.resolvedAt:
            due = parse_timestamp(status.resolvedAt).timestamp() + self._ttl
            while self._workers.get(uid) is worker and (left := due - self._clock().timestamp()) > 0:
                await self._sleep(worker, left)
            if self._workers.get(uid) is worker:
                meta = worker.body["metadata"]
                try:
                    await self._cluster.delete("incidents", meta["namespace"], meta["name"])
                    log.info(
                        "incident %s/%s: deleted, resolved more than %gs ago",
                        meta["namespace"],
                        meta["name"],
                        self._ttl,
                    )
                except Exception as err:  # gone already, or no permission: it stays, and says why in the log
                    log.warning("incident %s/%s: TTL delete failed: %s", meta["namespace"], meta["name"], _short(err))
        if self._workers.get(uid) is worker:
            self._workers.pop(uid, None)
            self._finished.add(uid)

    async def _write(self, body: Body, status: Status, events: list[Event], first: bool = False) -> bool:
        meta = body["metadata"]
        try:
            async with contextlib.nullcontext() if first else self._write_slots:
                await self._cluster.patch_status("incidents", meta["namespace"], meta["name"], status.to_dict())
        except Exception as err:  # API down, object gone, RBAC: keep the state, try again later
            log.warning("incident %s/%s: status write failed: %s", meta["namespace"], meta["name"], _short(err))
            return False
        for event in events:
            log.info("incident %s/%s: %s: %s", meta["namespace"], meta["name"], event.reason, event.message)
        if events:
            self._post_later(meta["uid"], body, events)
        return True

    def _post_later(self, uid: str, body: Body, events: list[Event]) -> None:
        """Post the Events in the background, after the incident's earlier ones."""
        task = asyncio.create_task(self._post(self._posting.get(uid), body, events), name=f"events/{uid}")
        self._posting[uid] = task
        task.add_done_callback(lambda done: self._posting.pop(uid) if self._posting.get(uid) is done else None)

    async def _post(self, previous: asyncio.Task[None] | None, body: Body, events: list[Event]) -> None:
        if previous is not None:
            await asyncio.wait([previous])  # keeps their order; its outcome is its own
        meta = body["metadata"]
        async with self._event_slots:
            for event in events:
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

    @staticmethod
    async def _sleep(worker: _Worker, seconds: float | None) -> None:
        if seconds is not None and seconds <= 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(worker.wakeup.wait(), seconds)


def _short(err: Exception) -> str:
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    return text[:300]


def _details(incident: Incident, status: Status) -> dict[str, Any]:
    """What a notification says about the incident."""
    return incident.view(status.severity) | {
        "phase": status.phase,
        "level": status.escalation.level,
        "findings": [{"step": f.step, "message": f.message} for f in status.findings],
    }


def _log_step(incident: Incident, status: Status, step: Step, ok: bool, seconds: float) -> None:
    """One line per step outcome; with --log-format json its fields are keys of their own."""
    fields = {
        "incident": f"{incident.namespace}/{incident.name}",
        "policy": status.policy,
        "step": step.name,
        "stage": step.stage.value,
        "action": step.action,
        "outcome": "succeeded" if ok else "failed",
        "duration": round(seconds, 3),
    }
    log.info("step %(step)s (%(action)s) %(outcome)s in %(duration)ss", fields, extra=fields)
