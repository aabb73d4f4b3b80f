"""Kopf glue: the only module that imports Kopf. Decisions live in ``domain``.

No change-detecting handlers are used (only an index and watch-event handlers),
so Kopf writes no finalizers and no progress annotations: deleting an Incident
never waits for the operator, and all state is in ``.status``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import kopf

from runbook_operator.actions.catalog import default_registry
from runbook_operator.adapters import gate, intake
from runbook_operator.adapters.archive import Archive, ArchiveWriter
from runbook_operator.adapters.kube import Kube, KubeIncidents, KubeLeases
from runbook_operator.adapters.lease import LeaderElector, LeaseConfig
from runbook_operator.adapters.metrics import Metrics
from runbook_operator.domain import conditions
from runbook_operator.domain.matching import Candidate
from runbook_operator.domain.model import InvalidPolicy, parse_policy
from runbook_operator.domain.resources import GROUP, INCIDENTS, POLICIES, VERSION
from runbook_operator.domain.status import ConditionType, Reason
from runbook_operator.engine.executor import Executor
from runbook_operator.engine.reconciler import Clock, Reconciler, utcnow

log = logging.getLogger(__name__)
REGISTRY = default_registry()
INTAKE_WORKERS = 4  # the intake's threads (and API connections): a budget apart from the reconciler's 16
# Kopf passes the index below to every handler by its name; the default only satisfies the handler protocol.
PolicyIndex = kopf.Index[str, Candidate] | None


@dataclass
class _Runtime:
    """What the handlers share; built on startup, torn down on cleanup.

    Incident tasks outlive the handler call that started them, so the policy
    index Kopf passes to handlers is kept here for them to read.
    """

    clock: Clock = utcnow  # the reconciler's and the policy handler's time
    kube: Kube | None = None
    reconciler: Reconciler | None = None
    resolved_ttl: float | None = 24 * 3600.0  # set by the CLI before Kopf starts
    metrics: Metrics | None = None  # likewise
    archive_dsn: str | None = None  # likewise: from the env var --archive-dsn-env names; None: no archive
    intake: intake.Settings | None = None  # likewise: the Alertmanager intake, None: off
    intake_runner: Any = None  # the intake while it serves (gate.Listener)
    liveness: tuple[str, int, str] | None = None  # likewise: host, port and path of the liveness probe
    health: gate.Listener | None = None  # the liveness endpoint while it serves
    intake_kube: Kube | None = None  # the intake's own client: its threads and connections, not the reconciler's
    lease: LeaseConfig | None = None  # likewise: leader election on this Lease; None: drive from the start
    elector: asyncio.Task[None] | None = None  # the election loop while it runs
    ready: bool = False  # the watches are about to start and the intake serves: /readyz answers 200
    policies: PolicyIndex = None


runtime = _Runtime()


def _candidates(namespace: str) -> Sequence[Candidate]:
    index = runtime.policies
    return list(index.get(namespace, ())) if index is not None else []


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.posting.level = logging.WARNING  # our own Events carry the story; Kopf only posts its errors
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.inactivity_timeout = 600
    if runtime.liveness is not None and runtime.health is None:  # first, so it answers while the rest starts
        try:
            runtime.health = await gate.serve_health(*runtime.liveness, log.getChild("health"))
        except OSError as err:
            raise kopf.PermanentError(f"cannot serve the liveness endpoint: {err}") from err
    runtime.kube = Kube.from_environment()
    executor = Executor(REGISTRY, services=runtime.kube, metrics=runtime.metrics)
    archive = None
    if runtime.archive_dsn:
        archive = ArchiveWriter(
            Archive(runtime.archive_dsn), runtime.metrics.archive() if runtime.metrics is not None else None
        )
        log.info("archiving finished incidents to %s", archive.archive.where)  # never the DSN itself
        archive.start()  # migrates the schema, retrying in the background while the database is down
    reconciler = Reconciler(
        runtime.kube,
        executor,
        _candidates,
        clock=runtime.clock,
        resolved_ttl=runtime.resolved_ttl,
        metrics=runtime.metrics,
        archive=archive,
    )
    if runtime.metrics is not None:
        runtime.metrics.watch(reconciler.phases, lambda: reconciler.tasks)
    runtime.reconciler = reconciler
    if runtime.lease is not None:  # a standby until the Lease is ours; the watches fill it meanwhile
        reconciler.stand_by()
        elector = LeaderElector(
            KubeLeases(runtime.kube), runtime.lease, on_started=reconciler.lead, on_stopped=reconciler.step_down,
            metrics=runtime.metrics.leader() if runtime.metrics is not None else None,
        )  # fmt: skip
        runtime.elector = asyncio.create_task(elector.run(), name="leader-election")
    if runtime.intake is not None:
        counters = runtime.metrics.intake() if runtime.metrics is not None else None
        runtime.intake_kube = Kube.from_environment(workers=INTAKE_WORKERS)
        try:
            runtime.intake_runner = await intake.start(
                runtime.intake, KubeIncidents(runtime.intake_kube), counters, ready=lambda: runtime.ready
            )
        except OSError as err:  # the port is taken, the address is not ours: retrying will not help
            raise kopf.PermanentError(f"cannot serve the Alertmanager intake: {err}") from err
    runtime.ready = True  # Kopf starts the watches once the startup handlers are done


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    if runtime.intake_runner is not None:
        await runtime.intake_runner.cleanup()  # stop taking alerts first
        runtime.intake_runner = None
    if runtime.intake_kube is not None:
        runtime.intake_kube.close()
        runtime.intake_kube = None
    runtime.ready = False
    if runtime.reconciler and runtime.elector is not None:
        await runtime.reconciler.step_down()  # stop driving first, then hand the Lease to a standby at once
    if runtime.elector is not None:
        runtime.elector.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runtime.elector
        runtime.elector = None
    if runtime.reconciler:
        await runtime.reconciler.stop()  # then flush the Events already decided and the archive
    if runtime.kube:
        runtime.kube.close()
    if runtime.health is not None:  # last: the probe answers until the operator is done
        await runtime.health.cleanup()
        runtime.health = None


@kopf.index(GROUP, VERSION, POLICIES)
def policies(namespace: str | None, body: kopf.Body, **_: Any) -> dict[str | None, Candidate]:
    return {namespace: parse_policy(body, REGISTRY.check)}


@kopf.on.event(GROUP, VERSION, INCIDENTS)
async def incident_event(event: kopf.RawEvent, body: kopf.Body, policies: PolicyIndex = None, **_: Any) -> None:
    runtime.policies = policies
    assert runtime.reconciler is not None
    if event.get("type") == "DELETED":
        runtime.reconciler.forget(body["metadata"]["uid"])
    else:
        runtime.reconciler.observe(body)


@kopf.on.event(GROUP, VERSION, POLICIES)
async def policy_event(
    event: kopf.RawEvent, body: kopf.Body, namespace: str | None, policies: PolicyIndex = None, **_: Any
) -> None:
    runtime.policies = policies
    assert runtime.reconciler is not None and runtime.kube is not None and namespace is not None
    if event.get("type") == "DELETED":
        runtime.reconciler.wake_namespace(namespace)
        return
    parsed = parse_policy(body, REGISTRY.check)
    if isinstance(parsed, InvalidPolicy):
        ok, reason, message = False, Reason.INVALID_POLICY, parsed.error
    else:
        ok, reason, message = True, Reason.VALID, "the policy is valid"
    generation = int(body["metadata"].get("generation") or 0)
    current = conditions.load((body.get("status") or {}).get("conditions"))
    updated = conditions.set_condition(current, ConditionType.READY, ok, reason, message, runtime.clock(), generation)
    if updated == current:
        return
    await runtime.kube.patch_status(
        POLICIES, namespace, body["metadata"]["name"],
        {"observedGeneration": generation, "conditions": conditions.dump(updated)},
    )  # fmt: skip
    await runtime.kube.post_event(body, "Normal" if ok else "Warning", reason, message)
    runtime.reconciler.wake_namespace(namespace)
