"""The Event lane: an incident's Kubernetes Events posted after the status write that carries
them, in order per incident, but off the incident's path.

At most ``EVENT_POSTS`` are in flight at once across the process, so under an alert storm
status writes (what ``kubectl get`` and the core read) never queue behind Events in the API
client's thread pool, and incidents move on while their Events trail. Events are best
effort: the timeline in status has them too.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from runbook_operator.domain.lifecycle import Event

log = logging.getLogger(__name__)
EVENT_POSTS = 4  # Events in flight at once, of the Kube adapter's 16 threads; the rest is for status writes
STOP_GRACE = 5.0  # on stop, seconds to let Events already decided reach the API server


class Poster(Protocol):
    async def post_event(self, body: Mapping[str, Any], type_: str, reason: str, message: str) -> None: ...


class EventLane:
    def __init__(self, poster: Poster) -> None:
        self._poster = poster
        self._slots = asyncio.Semaphore(EVENT_POSTS)
        self._posting: dict[str, asyncio.Task[None]] = {}  # uid -> the task posting its latest Events

    def post_later(self, uid: str, body: Mapping[str, Any], events: Sequence[Event]) -> None:
        """Post the Events in the background, after the incident's earlier ones."""
        task = asyncio.create_task(self._post(self._posting.get(uid), body, events), name=f"events/{uid}")
        self._posting[uid] = task
        task.add_done_callback(lambda done: self._posting.pop(uid) if self._posting.get(uid) is done else None)

    async def close(self, grace: float = STOP_GRACE) -> None:
        """Give the Events already decided ``grace`` seconds to reach the API server, then drop the rest."""
        posting = list(self._posting.values())
        if posting:
            _, late = await asyncio.wait(posting, timeout=grace)
            for task in late:
                task.cancel()

    async def _post(
        self, previous: asyncio.Task[None] | None, body: Mapping[str, Any], events: Sequence[Event]
    ) -> None:
        if previous is not None:
            await asyncio.wait([previous])  # keeps their order; its outcome is its own
        meta = body["metadata"]
        async with self._slots:
            for event in events:
                try:
                    await self._poster.post_event(body, event.type, event.reason, event.message)
                except Exception as err:  # Events are best effort; the timeline in status has them too
                    log.warning(
                        "incident %s/%s: event %s not posted: %s",
                        meta["namespace"], meta["name"], event.reason, short(err),
                    )  # fmt: skip


def short(err: Exception) -> str:
    """An error's first line, at most 300 characters: for a log line."""
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    return text[:300]
