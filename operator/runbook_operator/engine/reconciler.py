"""One asyncio task per open Incident, driven by the pure core.

The task loops: ``decide`` -> write the status once (with its Events) -> run at
most one step -> ``complete`` -> repeat, sleeping when the core says to wait
until a time or until the Incident changes. Watch events only refresh the latest
object and wake the task, so no finalizer or annotation is ever written.
All progress is in ``.status``; a new operator process resumes from it.

Events are posted after the status write that carries them, off the incident's
path (``engine.events``). Likewise, at most ``LATER_WRITES`` writes of incidents already under way are in
flight at once: an incident's first status write (the operator has seen it and
matched a policy) never queues behind the progress of hundreds of others.

A book of every incident's target and progress (rebuilt from the watch after a
restart) gives the core its peers: the lock, the cooldown and duplicates per
target. It is updated as soon as a decision is taken, before the write, so two
incidents of one target never both start remediating.

Before a step the budgets must pay for, the core asks for a reservation: the task writes it
into the RemediationBudgets' ledgers (``engine.budgets``) and decides again. When an incident
ends, the core asks for its Alertmanager silences to be expired; a deleted incident's are
expired from the last version the watch delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from runbook_operator.actions import alertmanager
from runbook_operator.actions.api import ActionFailure
from runbook_operator.adapters.archive import TERMINAL, ArchiveRecord, ArchiveWriter
from runbook_operator.adapters.kube import Conflict
from runbook_operator.adapters.metrics import Metrics
from runbook_operator.domain.lifecycle import Event, Peer, StepCall, complete, decide
from runbook_operator.domain.matching import Candidate, PolicySet, named
from runbook_operator.domain.model import Incident, Policy, Stage, Step
from runbook_operator.domain.progress import announcement_view
from runbook_operator.domain.results import StepResult
from runbook_operator.domain.status import Phase, Silence, Status, StepRecord, parse_timestamp
from runbook_operator.engine import fencing
from runbook_operator.engine.budgets import Ledgers, Outcome
from runbook_operator.engine.events import EventLane, short
from runbook_operator.engine.executor import Executor

log = logging.getLogger(__name__)
Body = Mapping[str, Any]
Clock = Callable[[], datetime]
RETRY_DELAY = 5.0  # after an API error, try the write again this much later
REFUSED_DELAY = 0.2  # after a budget refused a reservation (someone spent first), decide again this much later
LATER_WRITES = 10  # status writes in flight at once for incidents that have a status; first writes are not held
NONCE_BYTES = 8  # an approval request's nonce: 16 hex digits, unguessable before the request exists
SILENCE_RETRY = 30.0  # after Alertmanager could not expire a silence, try again this much later (it ends anyway)
SILENCE_TIMEOUT = 10.0  # seconds for each call to Alertmanager


def utcnow() -> datetime:
    return datetime.now(UTC)


class Cluster(Protocol):
    async def patch_status(
        self, plural: str, namespace: str, name: str, status: Mapping[str, Any], resource_version: str | None = None
    ) -> str | None: ...
    async def get(self, plural: str, namespace: str, name: str) -> dict[str, Any]: ...
    async def post_event(self, body: Mapping[str, Any], type_: str, reason: str, message: str) -> None: ...
    async def delete(self, plural: str, namespace: str, name: str) -> None: ...


@dataclass
class _Worker:
    body: Body
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    version: str | None = None  # the resourceVersion the last status we wrote (or read) belongs to


class _Outcome(enum.Enum):
    WRITTEN = "written"
    FAILED = "failed"  # the API is down or refused: keep the decision, try again later
    CONFLICT = "conflict"  # someone moved the Incident since we decided: never act on that decision


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
        ledgers: Ledgers | None = None,
    ) -> None:
        self._cluster, self._executor, self._candidates, self._clock = cluster, executor, candidates, clock
        self._ttl, self._metrics, self._archive, self._ledgers = resolved_ttl, metrics, archive, ledgers
        self._workers: dict[str, _Worker] = {}
        self._phases: dict[str, str | None] = {}  # uid -> phase, of every incident seen (for the gauges)
        self._silenced: dict[str, int] = {}  # uid -> its silences not yet expired (for the gauge)
        self._finished: set[str] = set()  # resolved and its task done: later (older) watch events are ignored
        self._book: dict[str, tuple[str, Peer]] = {}  # uid -> (target, peer view)
        self._tasks: set[asyncio.Task[None]] = set()  # every incident task not yet done (a leak shows here)
        self._policy_sets: dict[str, PolicySet] = {}  # namespace -> its policies, indexed while they stay the same
        self._events = EventLane(cluster)
        self._write_slots = asyncio.Semaphore(LATER_WRITES)
        self._leading = True  # False: a standby, which keeps every Incident it sees but drives none
        self._seen: dict[str, Body] = {}  # uid -> latest version, kept while standing by

    # -- leadership (adapters.lease calls these) ------------------------------
    @property
    def leading(self) -> bool:
        return self._leading

    def stand_by(self) -> None:
        """Drive nothing until :meth:`lead`; Incidents seen meanwhile are kept, ready."""
        self._leading = False

    async def lead(self) -> None:
        """Start driving every open Incident seen while standing by (each resumes from its status)."""
        self._leading = True
        seen, self._seen = self._seen, {}
        for body in seen.values():
            self.observe(body)

    async def step_down(self) -> None:
        """Stop driving at once (the lease could not be renewed): cancel every Incident's task,
        keep their latest versions, and stand by. A step cut short is resumed by the next
        leader from the claim in status, as after a crash."""
        self._leading = False
        workers = list(self._workers.items())
        self._workers.clear()
        for _, worker in workers:
            if worker.task:
                worker.task.cancel()
        for uid, worker in workers:
            if worker.task:
                with contextlib.suppress(asyncio.CancelledError):
                    await worker.task
            self._seen[uid] = worker.body

    # -- fed by the watch --------------------------------------------------
    def observe(self, body: Body) -> None:
        """The latest version of an Incident arrived; start or wake its task."""
        uid = body["metadata"]["uid"]
        if uid in self._finished:
            return  # the watch lags behind our own writes: an older version must not start it again
        if not self._leading:
            self._seen[uid] = body
            status = Status.from_dict(body.get("status"))
            self._track(uid, status)
            self._note(uid, Incident.from_body(body), status)
            return
        worker = self._workers.get(uid)
        if worker is None:
            status = Status.from_dict(body.get("status"))
            self._track(uid, status)
            incident = Incident.from_body(body)
            self._note(uid, incident, status)
            if status.phase in TERMINAL:  # finished before we saw it (a restart): archive it again, harmlessly
                self._archived(uid, incident, status)
            if status.phase == Phase.RESOLVED and self._ttl is None and not status.open_silences(self._clock()):
                self._finished.add(uid)
                return  # finished before we saw it; nothing to do (a silence still open is: it drives on)
            worker = self._workers[uid] = _Worker(body)
            worker.task = asyncio.create_task(self._drive(uid), name=f"incident/{uid}")
            self._tasks.add(worker.task)
            worker.task.add_done_callback(self._tasks.discard)
        worker.body = body
        worker.wakeup.set()

    def forget(self, uid: str, namespace: str = "", last: Body | None = None) -> None:
        """The Incident was deleted (``last``: as it was): stop driving it; free what it held."""
        if last is not None and self._leading:
            self._expire_silences_later(Status.from_dict(last.get("status")).open_silences(self._clock()))
        self._seen.pop(uid, None)
        worker = self._workers.pop(uid, None)
        entry = self._book.pop(uid, None)
        if self._ledgers is not None and self._leading and self._phases.get(uid) not in TERMINAL:
            self._ledgers.release_later(uid, namespace)  # deleted while it held a slot
        self._finished.discard(uid)
        self._phases.pop(uid, None)
        self._silenced.pop(uid, None)
        if worker and worker.task:
            worker.task.cancel()
        if entry:
            self._wake_target(entry[0], uid)

    def wake_namespace(self, namespace: str | None) -> None:
        """Wake the incidents of a namespace (None: of all) to decide again: its policies or budgets changed."""
        for worker in self._workers.values():
            if namespace is None or worker.body["metadata"].get("namespace") == namespace:
                worker.wakeup.set()

    @property
    def ledgers(self) -> Ledgers | None:
        return self._ledgers

    def ended(self, uid: str) -> bool | None:
        """Has this incident resolved or escalated (None: not seen, or deleted)?"""
        if uid not in self._phases:
            return None
        return self._phases[uid] in TERMINAL

    @property
    def active(self) -> int:
        return len(self._workers)

    @property
    def tasks(self) -> int:
        """Incident tasks not yet done, whether or not a worker still refers to them."""
        return len(self._tasks)

    def phases(self) -> list[str | None]:
        return list(self._phases.values())

    def silences(self) -> int:
        """Alertmanager silences the incidents' steps made that are not expired yet."""
        return sum(self._silenced.values())

    def _track(self, uid: str, status: Status) -> None:
        self._phases[uid] = status.phase
        if status.silences:
            self._silenced[uid] = len(status.open_silences(self._clock()))

    def _progressed(self, uid: str, incident: Incident, before: Status, after: Status) -> None:
        self._track(uid, after)
        if self._metrics is not None and before is not after:
            self._metrics.transition(incident, before, after)
        if after.phase in TERMINAL and (after.phase != before.phase or after.acknowledgedAt != before.acknowledgedAt):
            self._archived(uid, incident, after)
        if after.phase in TERMINAL and before.phase not in TERMINAL and self._ledgers is not None:
            self._ledgers.release_later(uid, incident.namespace)

    def _archived(self, uid: str, incident: Incident, status: Status) -> None:
        if self._archive is not None:
            policy = named(self._policies(incident.namespace), incident.namespace, status.policy)
            driven = policy if isinstance(policy, Policy) else None
            self._archive.enqueue(ArchiveRecord.of(uid, incident, status, self._clock(), driven))

    async def stop(self) -> None:
        tasks = [w.task for w in self._workers.values() if w.task]
        self._workers.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._events.close()
        if self._ledgers is not None:
            await self._ledgers.close()
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
        """Decide, write, act. Every write is fenced on the resourceVersion the decision was
        made from, and a step only runs after the write that claims it succeeded: a second
        operator (or a paused leader) that decided from the same version loses the write and
        decides again from what the winner wrote, so it never runs the same step."""
        worker = self._workers[uid]
        worker.version = worker.body["metadata"].get("resourceVersion")
        written = Status.from_dict(worker.body.get("status"))
        status, pending = written, list[Event]()
        unrecorded: tuple[StepCall, StepResult, float] | None = None  # a step that ran (seconds), not yet written
        while self._workers.get(uid) is worker:
            worker.wakeup.clear()
            body = worker.body
            incident = Incident.from_body(body)
            now = self._clock()
            candidates, peers = self._policies(incident.namespace), self._peers(uid, incident)
            budgets, defaults = self._ledgers.of(incident.namespace) if self._ledgers is not None else ([], [])
            decision = decide(
                incident, status, candidates, now, peers, nonce=secrets.token_hex(NONCE_BYTES), budgets=budgets,
                defaults=defaults,
            )  # fmt: skip
            self._progressed(uid, incident, status, decision.status)
            status = decision.status
            self._note(uid, incident, status)
            pending.extend(decision.events)
            if status != written or pending:
                outcome = await self._write(worker, status, pending, first=written.phase is None)
                if outcome is _Outcome.CONFLICT:
                    fresh = await self._reread(worker)
                    if fresh is None:  # cannot read it now: the next write is still fenced, so nothing runs
                        await self._sleep(worker, RETRY_DELAY)
                        continue
                    if unrecorded is not None and fresh == written:  # only spec or metadata changed: the result stands
                        call, result, took = unrecorded
                        status, events = complete(fresh, call, result, self._clock(), took)
                        pending = list(events)
                    else:  # another writer moved the status: its record wins, ours is dropped undone
                        fresh = await fencing.stand_aside_while_claimed(self._fenced(worker), fresh, written)
                        status, pending = fresh, []
                    written, unrecorded = fresh, None
                    self._track(uid, status)
                    self._note(uid, Incident.from_body(worker.body), status)
                    continue
                if outcome is _Outcome.FAILED:
                    await self._sleep(worker, RETRY_DELAY)
                    continue
                written, pending, unrecorded = status, [], None
            if decision.reserve is not None:  # the budgets' ledgers first; the step is claimed on the next turn
                assert self._ledgers is not None  # the core reserves only in budgets it was given
                reserved = await self._ledgers.reserve(decision.reserve)
                if reserved is not Outcome.RESERVED:  # refused: decide again from the fresher ledger, not in a spin
                    await self._sleep(worker, RETRY_DELAY if reserved is Outcome.FAILED else REFUSED_DELAY)
                continue
            if decision.run is not None:
                started = time.monotonic()
                result = await self._executor.run(
                    incident, decision.run, _details(incident, status, decision.run), status.policy,
                    status.conversations,
                )  # fmt: skip
                took = time.monotonic() - started
                _log_step(incident, status, decision.run.step, result.ok, took)
                before = status
                unrecorded = (decision.run, result, took)
                status, events = complete(status, decision.run, result, self._clock(), took)
                self._progressed(uid, incident, before, status)
                pending.extend(events)
                continue
            if decision.expire:  # it ended: Alertmanager pages for the alert again
                done = await _expire_silences(decision.expire)
                if done:
                    status = status.silences_expired(done, self._clock())
                if len(done) < len(decision.expire):
                    await self._sleep(worker, SILENCE_RETRY)
                continue
            if status.phase == Phase.RESOLVED:
                await self._expire(uid, worker, status)
                return
            delay = None if decision.wake_at is None else (decision.wake_at - self._clock()).total_seconds()
            await self._sleep(worker, delay)

    def _expire_silences_later(self, silences: Sequence[Silence]) -> None:
        """Expire a deleted incident's silences in the background (a few tries; each ends anyway)."""
        if not silences:
            return

        async def expire() -> None:
            left = list(silences)
            for delay in (0.0, 5.0, 30.0):
                await asyncio.sleep(delay)
                done = set(await _expire_silences(left))
                left = [s for s in left if s.id not in done]
                if not left:
                    return

        task = asyncio.create_task(expire(), name="expire-silences")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

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
                    log.warning("incident %s/%s: TTL delete failed: %s", meta["namespace"], meta["name"], short(err))
        if self._workers.get(uid) is worker:
            self._workers.pop(uid, None)
            self._finished.add(uid)

    async def _write(self, worker: _Worker, status: Status, events: list[Event], first: bool = False) -> _Outcome:
        body = worker.body
        meta = body["metadata"]
        try:
            async with contextlib.nullcontext() if first else self._write_slots:
                version = await self._cluster.patch_status(
                    "incidents", meta["namespace"], meta["name"], status.to_dict(), worker.version
                )
        except Conflict:
            log.info(
                "incident %s/%s: changed since resourceVersion %s, which this decision was made from; deciding again",
                meta["namespace"], meta["name"], worker.version,
            )  # fmt: skip
            return _Outcome.CONFLICT
        except Exception as err:  # API down, object gone, RBAC: keep the state, try again later
            log.warning("incident %s/%s: status write failed: %s", meta["namespace"], meta["name"], short(err))
            return _Outcome.FAILED
        worker.version = version
        for event in events:
            log.info("incident %s/%s: %s: %s", meta["namespace"], meta["name"], event.reason, event.message)
        if events:
            self._events.post_later(meta["uid"], body, events)
        return _Outcome.WRITTEN

    def _fenced(self, worker: _Worker) -> fencing.Incident:
        """What standing aside needs of this incident's task (engine.fencing)."""
        meta = worker.body["metadata"]
        namespace = meta.get("namespace", "")

        def deadline(status: Status, record: StepRecord) -> datetime:
            step = fencing.policy_step(self._policies(namespace), status, record)
            bound = self._executor.time_bound(step) if step is not None else None
            return fencing.claim_deadline(record, bound, self._clock())

        async def reread() -> Status | None:
            return await self._reread(worker)

        async def wait(seconds: float) -> None:
            await self._sleep(worker, seconds)

        return fencing.Incident(
            f"{namespace}/{meta['name']}", lambda: self._workers.get(meta["uid"]) is worker, wait, reread, deadline,
            self._clock,
        )  # fmt: skip

    async def _reread(self, worker: _Worker) -> Status | None:
        """The Incident as it is now, after a fenced write lost; None when it cannot be read."""
        meta = worker.body["metadata"]
        try:
            fresh = await self._cluster.get("incidents", meta["namespace"], meta["name"])
        except Exception as err:
            log.warning("incident %s/%s: cannot read it again: %s", meta["namespace"], meta["name"], short(err))
            return None
        worker.body, worker.version = fresh, fresh["metadata"].get("resourceVersion")
        return Status.from_dict(fresh.get("status"))

    @staticmethod
    async def _sleep(worker: _Worker, seconds: float | None) -> None:
        """Until ``seconds`` pass or the worker is woken (a newer version, a peer's move), and
        the wakeup consumed: every caller reads what is new next, and a wakeup left set would
        turn its loop into a spin (one that rereads the Incident from the API server)."""
        if seconds is not None and seconds <= 0:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):  # not wait_for: on 3.11 it can drop a cancel
                await worker.wakeup.wait()
        worker.wakeup.clear()


async def _expire_silences(silences: Sequence[Silence]) -> list[str]:
    """Expire these silences; the ids of those Alertmanager expired (or no longer knows)."""

    async def one(silence: Silence) -> str | None:
        try:
            await alertmanager.expire(silence.url, silence.id, SILENCE_TIMEOUT)
        except ActionFailure as err:
            log.warning("silence %s at %s: cannot expire it now: %s", silence.id, silence.url, err.message)
            return None
        log.info("silence %s at %s expired", silence.id, silence.url)
        return silence.id

    return [ident for ident in await asyncio.gather(*(one(s) for s in silences)) if ident is not None]


def _details(incident: Incident, status: Status, call: StepCall) -> dict[str, Any]:
    """What a notification says about the incident (actions.notify.messages reads it)."""
    announcing = status.announcing() if call.step.stage is Stage.ANNOUNCE else None
    return incident.view(status.severity) | {
        "uid": incident.uid,
        "phase": status.phase,
        "level": status.escalation.level,
        "acknowledgedBy": incident.acknowledged_by,
        "findings": [{"step": f.step, "message": f.message} for f in status.findings],
        "steps": [
            {"name": s.name, "stage": s.stage, "state": s.state, "message": s.message}
            for s in status.steps
            if s.stage not in (Stage.ESCALATE, Stage.ANNOUNCE)
        ],
        "announcement": announcement_view(announcing) if announcing is not None else None,
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
