"""Fencing: what a writer does after another one claimed a step first.

Every status write of the reconciler names the ``resourceVersion`` its decision was made
from, and a step runs only after the write that claims it (``Running`` in status) succeeded.
A second operator (a split brain, a paused leader) that decided from the same version loses
that write (409), reads the Incident again and finds the winner's claim. It then stands
aside (:func:`stand_aside_while_claimed`) until the winner has finished the claimed steps,
or until they have run longer than their timeouts and retries allow: then the winner is
taken for dead, and the core treats the steps as interrupted, as after a crash.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta

from runbook_operator.domain.matching import Candidate
from runbook_operator.domain.model import Policy, Step
from runbook_operator.domain.status import Status, StepRecord, StepState, parse_timestamp

log = logging.getLogger(__name__)
CLAIM_SLACK = 5.0  # beyond a step's own bound, before another operator's claim counts as abandoned
CLAIM_BOUND = 300.0  # the bound of a claimed step the policies no longer name
RUNNING = StepState.RUNNING.value
Key = tuple[str, str, int, int | None]


def key(record: StepRecord) -> Key:
    return (record.stage, record.name, record.attempt, record.update)


def claims(fresh: Status, ours: Status) -> list[StepRecord]:
    """Steps that are Running in ``fresh`` but were not in what we last wrote: another writer's."""
    mine = {key(r) for r in ours.steps if r.state == RUNNING}
    return [r for r in fresh.steps if r.state == RUNNING and key(r) not in mine]


def policy_step(candidates: Sequence[Candidate], status: Status, record: StepRecord) -> Step | None:
    """The step a record belongs to, in the policy the status names; None when no policy names it now."""
    policy = next((c for c in candidates if c.name == status.policy), None)
    return policy.step(record.name) if isinstance(policy, Policy) else None


def claim_deadline(record: StepRecord, bound: float | None, now: datetime) -> datetime:
    """When a step claimed at ``startedAt`` must have ended: its timeouts and backoffs (``bound``;
    None: a step the policies no longer name), plus slack."""
    started = parse_timestamp(record.startedAt) if record.startedAt else now
    return started + timedelta(seconds=(CLAIM_BOUND if bound is None else bound) + CLAIM_SLACK)


class Incident:
    """What standing aside needs of one Incident's task; the reconciler gives it."""

    def __init__(
        self,
        where: str,
        driving: Callable[[], bool],
        wait: Callable[[float], Awaitable[None]],
        reread: Callable[[], Awaitable[Status | None]],
        deadline: Callable[[Status, StepRecord], datetime],
        clock: Callable[[], datetime],
    ) -> None:
        self.where, self.driving, self.wait, self.reread = where, driving, wait, reread
        self.deadline, self.clock = deadline, clock


async def stand_aside_while_claimed(incident: Incident, fresh: Status, written: Status) -> Status:
    """Stand aside while the other writer keeps claiming steps: one that finishes a claimed
    step claims the next in the same write, and that claim is as alive as the first, not a
    dead operator's (taking it as interrupted would skip a destructive step it is running).
    A claim already waited out (outlived its bounds) is left to the core as interrupted."""
    waited: set[tuple[Key, str | None]] = set()
    found = claims(fresh, written)
    while found and incident.driving():
        waited |= {(key(r), r.startedAt) for r in found}
        fresh = await _stand_aside(incident, found, fresh)
        found = [r for r in claims(fresh, written) if (key(r), r.startedAt) not in waited]
    return fresh


async def _stand_aside(incident: Incident, claimed: list[StepRecord], status: Status) -> Status:
    """Wait while another operator runs the steps it claimed (a write of ours lost to its
    claim, so it is alive); the status once it has finished them, or once they have run
    longer than their timeouts and retries allow (it died: the core treats them as
    interrupted, as after a crash)."""
    running = {key(r): r.startedAt for r in claimed}
    deadline = max(incident.deadline(status, r) for r in claimed)
    log.info(
        "incident %s: another operator is running %s; standing aside until it finishes",
        incident.where, ", ".join(sorted(r.name for r in claimed)),
    )  # fmt: skip
    while incident.driving():
        left = (deadline - incident.clock()).total_seconds()
        if left <= 0:
            log.warning("incident %s: the other operator's steps outlived their bounds", incident.where)
            break
        await incident.wait(left)
        fresh = await incident.reread()
        if fresh is not None:
            status = fresh
            if not any(running.get(key(r)) == r.startedAt for r in fresh.steps if r.state == RUNNING):
                break
    return status
