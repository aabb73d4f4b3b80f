"""The RemediationBudgets' ledgers, written before a step may start (``domain.budgets``).

Kopf's index gives the budgets as the watch last saw them (complete before any Incident is
handled, so no step ever starts unbudgeted after a restart). Our own writes are newer than the
watch for a moment; :meth:`Ledgers.of` answers with whichever copy is newer.

Every ledger write is fenced on the resourceVersion it was computed from. A write that loses
(another operator, a person's edit) reads the budget again and decides again from it, so two
operators that race never spend past a limit together. In one process, writes to a budget queue
behind each other instead of racing.

Holds (concurrentIncidents) are released when an incident resolves, escalates or is deleted; a
hold left by an operator that died first is released when the budget is full and the incident
it names is found ended or gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any, Protocol

from runbook_operator.adapters.archive import TERMINAL
from runbook_operator.adapters.kube import Conflict
from runbook_operator.domain.budgets import Budget, InvalidBudget, parse_budget
from runbook_operator.domain.progress import Reservation
from runbook_operator.domain.resources import BUDGETS, INCIDENTS
from runbook_operator.engine.events import short

log = logging.getLogger(__name__)
WRITE_TRIES = 8  # a write that keeps losing to other writers gives up, and the step waits to decide again
Parsed = tuple[Budget | InvalidBudget, str | None]  # as the index keeps it: the budget and its resourceVersion


class Cluster(Protocol):
    async def patch_status(
        self, plural: str, namespace: str, name: str, status: Mapping[str, Any], resource_version: str | None = None
    ) -> str | None: ...
    async def get(self, plural: str, namespace: str, name: str) -> dict[str, Any]: ...


class Outcome(enum.Enum):
    RESERVED = "reserved"
    REFUSED = "refused"  # a budget has no room after all (someone spent it first): decide again
    FAILED = "failed"  # the API is down or refused: try again later


def parsed(body: Mapping[str, Any]) -> Parsed:
    """What the index keeps of one RemediationBudget."""
    return parse_budget(body), body.get("metadata", {}).get("resourceVersion")


def _newer(a: str | None, b: str | None) -> bool:
    """Is resourceVersion ``a`` newer than ``b``? They are etcd revisions; anything else counts as newer."""
    try:
        return int(a or 0) > int(b or 0)
    except ValueError:
        return a != b


class Ledgers:
    def __init__(
        self,
        cluster: Cluster,
        index: Callable[[], Mapping[Any, Iterable[Parsed]]],
        clock: Callable[[], datetime],
        default: tuple[str, str] | None = None,
        ended: Callable[[str], bool | None] = lambda uid: None,
    ) -> None:
        """``index``: the budgets the watch shows, by namespace; ``default``: the operator-wide
        budget's namespace and name; ``ended``: whether the operator knows an incident (by uid)
        to have ended (None: it does not know it)."""
        self._cluster, self._index, self._clock, self._default, self._ended = cluster, index, clock, default, ended
        self._written: dict[str, tuple[Budget, str | None]] = {}  # our own writes, newer than the watch for a moment
        self._locks: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._default_missing = False  # said once in the log, until it appears
        self._tidying: dict[str, tuple[datetime, asyncio.Task[None]]] = {}  # key -> when its status is rewritten

    @property
    def default(self) -> str | None:
        return "/".join(self._default) if self._default else None

    def _current(self, namespace: str) -> list[tuple[Budget, str | None]]:
        found = []
        for budget, version in self._index().get(namespace, ()):
            if not isinstance(budget, Budget):
                continue  # invalid: its Ready condition says why; it limits nothing
            mine = self._written.get(budget.key)
            found.append(mine if mine is not None and _newer(mine[1], version) else (budget, version))
        return found

    def of(self, namespace: str) -> tuple[list[Budget], list[Budget]]:
        """The namespace's budgets and the operator-wide default, each as its newest ledger."""
        own = [b for b, _ in self._current(namespace)]
        if self._default is None:
            return own, []
        default = [b for b, _ in self._current(self._default[0]) if b.name == self._default[1]]
        if not default and not self._default_missing:
            log.warning(
                "the default budget %s does not exist (or is invalid): incidents without a budget of their own "
                "are not limited until it does (kubectl apply -k manifests/default-budget)", self.default,
            )  # fmt: skip
        self._default_missing = not default
        return own, default

    def everything(self) -> list[Budget]:
        """Every valid budget, as its newest ledger (for the metrics)."""
        return [b for namespace in list(self._index()) if namespace for b, _ in self._current(namespace)]

    def _find(self, key: str) -> tuple[Budget, str | None] | None:
        namespace, _, name = key.partition("/")
        return next(((b, v) for b, v in self._current(namespace) if b.name == name), None)

    # -- writes ------------------------------------------------------------------------------
    async def reserve(self, reservation: Reservation) -> Outcome:
        """Write the step's spend (and hold) into each budget; it may start once all are written."""
        ask, by = reservation.ask, reservation.approved_by
        for key in reservation.budgets:

            def change(budget: Budget) -> Budget | None:
                now = self._clock()
                if by is None and budget.refusal(ask, now) is not None:
                    return None
                return budget.spend(ask, now, by)

            outcome = await self._write(key, change)
            if outcome is Outcome.REFUSED and await self._reap(key):
                outcome = await self._write(key, change)
            if outcome is not Outcome.RESERVED:
                return outcome
        return Outcome.RESERVED

    def release_later(self, uid: str, namespace: str) -> None:
        """Free the incident's concurrency slots (it ended); in the background, retried."""
        own, default = self.of(namespace)
        keys = [b.key for b in (*own, *default) if any(h.uid == uid for h in b.holds)]
        if keys:
            task = asyncio.create_task(self._release(uid, keys), name=f"release/{uid}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _release(self, uid: str, keys: list[str]) -> None:
        for key in keys:
            for delay in (0.0, 1.0, 2.0, 5.0, 10.0, 30.0):
                await asyncio.sleep(delay)
                if await self._write(key, lambda b: b.release(uid)) is Outcome.RESERVED:
                    break

    async def _reap(self, key: str) -> bool:
        """Release holds whose incidents ended or are gone (an operator died before releasing them)."""
        found = self._find(key)
        if found is None or not found[0].holds:
            return False
        gone = []
        for hold in found[0].holds:
            ended = self._ended(hold.uid)
            if ended is None:
                ended = await self._ended_in_cluster(hold.uid, hold.incident)
            if ended:
                gone.append(hold.uid)
        if not gone:
            return False
        log.info("budget %s: releasing the slots of %d incident(s) that ended", key, len(gone))

        def release(budget: Budget) -> Budget:
            for uid in gone:
                budget = budget.release(uid)
            return budget

        return await self._write(key, release) is Outcome.RESERVED

    async def _ended_in_cluster(self, uid: str, incident: str) -> bool:
        namespace, _, name = incident.partition("/")
        try:
            body = await self._cluster.get(INCIDENTS, namespace, name)
        except Exception as err:  # gone (404); anything else: cannot tell now, keep the hold
            return getattr(err, "status", None) == 404
        if body.get("metadata", {}).get("uid") != uid:
            return True  # another incident of the same name: the one that held it is gone
        return (body.get("status") or {}).get("phase") in TERMINAL

    def tidy_later(self, key: str) -> None:
        """Rewrite the budget's status when a spend next leaves a window, so that `kubectl get rbud`
        and the metrics' scrape of another replica show what is spent now, not at the last step."""
        found = self._find(key)
        due = found[0].next_change(self._clock()) if found is not None else None
        scheduled = self._tidying.get(key)
        if scheduled is not None and (due is None or scheduled[0] <= due) and not scheduled[1].done():
            return
        if scheduled is not None:
            scheduled[1].cancel()
            self._tidying.pop(key)
        if due is not None:
            task = asyncio.create_task(self._tidy(key, due), name=f"tidy/{key}")
            self._tidying[key] = (due, task)

    async def _tidy(self, key: str, due: datetime) -> None:
        await asyncio.sleep(max(0.0, (due - self._clock()).total_seconds()) + 0.5)
        await self._write(key, lambda b: b.pruned(self._clock()), force=True)
        self._tidying.pop(key, None)
        self.tidy_later(key)

    async def _write(self, key: str, change: Callable[[Budget], Budget | None], force: bool = False) -> Outcome:
        lock = self._locks.setdefault(key, asyncio.Lock())
        namespace, _, name = key.partition("/")
        async with lock:
            for _ in range(WRITE_TRIES):
                found = self._find(key)
                if found is None:
                    return Outcome.REFUSED  # deleted meanwhile: decide again without it
                budget, version = found
                changed = change(budget)
                if changed is None:
                    return Outcome.REFUSED
                if changed == budget and not force:
                    return Outcome.RESERVED
                try:
                    written = await self._cluster.patch_status(
                        BUDGETS, namespace, name, changed.status(self._clock()), version
                    )
                except Conflict:
                    if not await self._reread(key):
                        return Outcome.FAILED
                    continue
                except Exception as err:
                    log.warning("budget %s: ledger write failed: %s", key, short(err))
                    return Outcome.FAILED
                self._written[key] = (changed, written)
                self.tidy_later(key)
                return Outcome.RESERVED
        log.warning("budget %s: the ledger kept changing under %d writes; trying again later", key, WRITE_TRIES)
        return Outcome.FAILED

    async def _reread(self, key: str) -> bool:
        namespace, _, name = key.partition("/")
        try:
            body = await self._cluster.get(BUDGETS, namespace, name)
        except Exception as err:
            log.warning("budget %s: cannot read it again: %s", key, short(err))
            return False
        budget, version = parsed(body)
        if isinstance(budget, Budget):
            self._written[key] = (budget, version)
        return True

    def forget(self, key: str) -> None:
        self._written.pop(key, None)

    async def close(self) -> None:
        for _, tidy in self._tidying.values():
            tidy.cancel()
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
