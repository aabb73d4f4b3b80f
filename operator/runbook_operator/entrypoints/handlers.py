"""Kopf glue: the only module that imports Kopf. Decisions live in ``domain``.

No change-detecting handlers are used (only an index and watch-event handlers),
so Kopf writes no finalizers and no progress annotations: deleting an Incident
never waits for the operator, and all state is in ``.status``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import kopf

from runbook_operator.actions.catalog import default_registry
from runbook_operator.actions.registry import Registry
from runbook_operator.adapters import gate, intake
from runbook_operator.adapters.archive import Archive, ArchiveWriter
from runbook_operator.adapters.kube import Kube, KubeIncidents, KubeLeases
from runbook_operator.adapters.lease import LeaderElector, LeaseConfig
from runbook_operator.adapters.metrics import Metrics
from runbook_operator.domain import conditions
from runbook_operator.domain.budgets import InvalidBudget, parse_budget
from runbook_operator.domain.matching import Candidate
from runbook_operator.domain.model import InvalidPolicy
from runbook_operator.domain.parsing import parse_policy
from runbook_operator.domain.resources import BUDGETS, GROUP, INCIDENTS, POLICIES, VERSION
from runbook_operator.domain.status import ConditionType, Reason
from runbook_operator.engine.budgets import Ledgers, Parsed, parsed
from runbook_operator.engine.executor import Executor
from runbook_operator.engine.reconciler import Clock, Reconciler, utcnow

log = logging.getLogger(__name__)
INTAKE_WORKERS = 4  # the intake's threads (and API connections): a budget apart from the reconciler's 16
# Kopf passes the index below to every handler by its name; the default only satisfies the handler protocol.
PolicyIndex = kopf.Index[str, Candidate] | None
BudgetIndex = kopf.Index[str, Parsed] | None


@dataclass(frozen=True)
class Config:
    """How the operator runs, from the command line (``entrypoints.cli.run``)."""

    resolved_ttl: float | None = 24 * 3600.0  # delete resolved incidents after; None: never
    metrics: Metrics | None = None  # served by the command; None: not counted
    archive_dsn: str | None = None  # from the env var --archive-dsn-env names; None: no archive
    intake: intake.Settings | None = None  # the Alertmanager intake; None: off
    liveness: tuple[str, int, str] | None = None  # host, port and path of the liveness probe
    lease: LeaseConfig | None = None  # leader election on this Lease; None: drive from the start
    default_budget: tuple[str, str] | None = None  # the operator-wide RemediationBudget (namespace, name)
    clock: Clock = utcnow  # the reconciler's and the policy handler's time


@dataclass
class Runtime:
    """What the handlers share, reached through Kopf's memo (:func:`memo`): built on startup,
    torn down on cleanup. Kopf gives each resource object a shallow copy of the memo, so
    this object is one of its values, never the memo itself: every copy refers to it.

    Incident tasks outlive the handler call that started them, so the policy index Kopf
    passes to handlers is kept here for them to read.
    """

    config: Config = field(default_factory=Config)
    registry: Registry = field(default_factory=default_registry)
    kube: Kube | None = None
    reconciler: Reconciler | None = None
    intake_kube: Kube | None = None  # the intake's own client: its threads and connections, not the reconciler's
    intake_runner: gate.Listener | None = None  # the intake while it serves
    health: gate.Listener | None = None  # the liveness endpoint while it serves
    elector: asyncio.Task[None] | None = None  # the election loop while it runs
    ready: bool = False  # the watches are about to start and the intake serves: /readyz answers 200
    policies: PolicyIndex = None
    budgets: BudgetIndex = None

    def candidates(self, namespace: str) -> Sequence[Candidate]:
        return list(self.policies.get(namespace, ())) if self.policies is not None else []

    def all_budgets(self) -> Mapping[Any, Iterable[Parsed]]:
        return self.budgets if self.budgets is not None else {}


def memo(runtime: Runtime) -> kopf.Memo:
    """The memo to run Kopf with: its handlers find ``runtime`` in it."""
    return kopf.Memo(runtime=runtime)


def _runtime(memo: kopf.Memo) -> Runtime:
    runtime = memo.get("runtime")
    if not isinstance(runtime, Runtime):
        raise TypeError("Kopf runs these handlers with handlers.memo(Runtime(...))")
    return runtime


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    runtime = _runtime(memo)
    config = runtime.config
    settings.posting.level = logging.WARNING  # our own Events carry the story; Kopf only posts its errors
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.inactivity_timeout = 600
    if config.liveness is not None and runtime.health is None:  # first, so it answers while the rest starts
        try:
            runtime.health = await gate.serve_health(*config.liveness, log.getChild("health"))
        except OSError as err:
            raise kopf.PermanentError(f"cannot serve the liveness endpoint: {err}") from err
    runtime.kube = Kube.from_environment()
    executor = Executor(runtime.registry, services=runtime.kube, metrics=config.metrics)
    archive = None
    if config.archive_dsn:
        archive = ArchiveWriter(
            Archive(config.archive_dsn), config.metrics.archive() if config.metrics is not None else None
        )
        log.info("archiving finished incidents to %s", archive.archive.where)  # never the DSN itself
        archive.start()  # migrates the schema, retrying in the background while the database is down
    ledgers = Ledgers(
        runtime.kube, runtime.all_budgets, config.clock, config.default_budget, ended=lambda uid: reconciler.ended(uid)
    )
    reconciler = Reconciler(
        runtime.kube,
        executor,
        runtime.candidates,
        clock=config.clock,
        resolved_ttl=config.resolved_ttl,
        metrics=config.metrics,
        archive=archive,
        ledgers=ledgers,
    )
    if config.metrics is not None:
        config.metrics.watch(reconciler.phases, lambda: reconciler.tasks, reconciler.silences)
        config.metrics.budgets(ledgers.everything, config.clock)
    runtime.reconciler = reconciler
    if config.lease is not None:  # a standby until the Lease is ours; the watches fill it meanwhile
        reconciler.stand_by()
        elector = LeaderElector(
            KubeLeases(runtime.kube), config.lease, on_started=reconciler.lead, on_stopped=reconciler.step_down,
            metrics=config.metrics.leader() if config.metrics is not None else None,
        )  # fmt: skip
        runtime.elector = asyncio.create_task(elector.run(), name="leader-election")
    if config.intake is not None:
        counters = config.metrics.intake() if config.metrics is not None else None
        runtime.intake_kube = Kube.from_environment(workers=INTAKE_WORKERS)
        try:
            runtime.intake_runner = await intake.start(
                config.intake, KubeIncidents(runtime.intake_kube), counters, ready=lambda: runtime.ready
            )
        except OSError as err:  # the port is taken, the address is not ours: retrying will not help
            raise kopf.PermanentError(f"cannot serve the Alertmanager intake: {err}") from err
    runtime.ready = True  # Kopf starts the watches once the startup handlers are done


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    runtime = _runtime(memo)
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
def policies(namespace: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> dict[str | None, Candidate]:
    return {namespace: parse_policy(body, _runtime(memo).registry.check)}


@kopf.index(GROUP, VERSION, BUDGETS)
def budgets(namespace: str | None, body: kopf.Body, **_: Any) -> dict[str | None, Parsed]:
    """Complete before any Incident is handled: after a restart no step starts unbudgeted."""
    return {namespace: parsed(body)}


@kopf.on.event(GROUP, VERSION, INCIDENTS)
async def incident_event(
    event: kopf.RawEvent,
    body: kopf.Body,
    memo: kopf.Memo,
    policies: PolicyIndex = None,
    budgets: BudgetIndex = None,
    **_: Any,
) -> None:
    runtime = _runtime(memo)
    runtime.policies, runtime.budgets = policies, budgets
    assert runtime.reconciler is not None
    if event.get("type") == "DELETED":
        runtime.reconciler.forget(body["metadata"]["uid"], body["metadata"].get("namespace", ""), body)
    else:
        runtime.reconciler.observe(body)


@kopf.on.event(GROUP, VERSION, POLICIES)
async def policy_event(
    event: kopf.RawEvent,
    body: kopf.Body,
    namespace: str | None,
    memo: kopf.Memo,
    policies: PolicyIndex = None,
    **_: Any,
) -> None:
    runtime = _runtime(memo)
    runtime.policies = policies
    assert runtime.reconciler is not None and runtime.kube is not None and namespace is not None
    if event.get("type") == "DELETED":
        runtime.reconciler.wake_namespace(namespace)
        return
    parsed = parse_policy(body, runtime.registry.check)
    if isinstance(parsed, InvalidPolicy):
        judged = await _judge(runtime, POLICIES, body, False, Reason.INVALID_POLICY, parsed.error)
    else:
        judged = await _judge(runtime, POLICIES, body, True, Reason.VALID, "the policy is valid")
    if judged:
        runtime.reconciler.wake_namespace(namespace)


async def _judge(runtime: Runtime, plural: str, body: kopf.Body, ok: bool, reason: str, message: str) -> bool:
    """Set the Ready condition of a policy or budget, with an Event, if it changed; whether it did."""
    assert runtime.kube is not None
    generation = int(body["metadata"].get("generation") or 0)
    current = conditions.load((body.get("status") or {}).get("conditions"))
    updated = conditions.set_condition(
        current, ConditionType.READY, ok, reason, message, runtime.config.clock(), generation
    )
    if updated == current:
        return False
    await runtime.kube.patch_status(
        plural, body["metadata"]["namespace"], body["metadata"]["name"],
        {"observedGeneration": generation, "conditions": conditions.dump(updated)},
    )  # fmt: skip
    await runtime.kube.post_event(body, "Normal" if ok else "Warning", reason, message)
    return True


@kopf.on.event(GROUP, VERSION, BUDGETS)
async def budget_event(
    event: kopf.RawEvent,
    body: kopf.Body,
    namespace: str | None,
    memo: kopf.Memo,
    budgets: BudgetIndex = None,
    **_: Any,
) -> None:
    """A budget changed (its ledger, its limits): the incidents it may hold decide again."""
    runtime = _runtime(memo)
    runtime.budgets = budgets
    assert runtime.reconciler is not None and runtime.kube is not None and namespace is not None
    name = body["metadata"]["name"]
    default = runtime.config.default_budget
    runtime.reconciler.wake_namespace(None if default == (namespace, name) else namespace)
    if event.get("type") == "DELETED" or not runtime.reconciler.leading:
        return
    assert runtime.reconciler.ledgers is not None
    runtime.reconciler.ledgers.tidy_later(f"{namespace}/{name}")
    budget = parse_budget(body)
    if isinstance(budget, InvalidBudget):
        await _judge(
            runtime, BUDGETS, body, False, Reason.INVALID_BUDGET, f"{budget.error}; it limits nothing until fixed"
        )
    else:
        await _judge(runtime, BUDGETS, body, True, Reason.VALID, "the budget is valid")
