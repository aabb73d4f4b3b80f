"""The floor: the least a Kopf operator does to walk an Incident through its phases.

Run with ``python -m kopf run bench/baseline_operator.py --all-namespaces --standalone``.
For each new Incident (the same CRD as runbook-operator) one ``@kopf.on.create``
handler merge-patches ``.status`` four times, Diagnosing -> Remediating ->
Verifying -> Resolved: the same number of status writes runbook-operator makes for
a 3-step policy (one when it starts, one per finished step). It runs no actions,
matches no policy and posts no Events of its own.

The status patches go through the synchronous ``kubernetes`` client in a thread
pool, the way runbook-operator's ``adapters/kube.py`` writes them, so both pay the
same client cost per write. What Kopf adds on top is the floor Kopf itself sets
for a change-detecting handler: one PATCH of the ``last-handled-configuration``
annotation after the handler succeeds (no finalizer: there is no on.delete
handler). Kopf's own Events are switched off, as runbook-operator only lets Kopf
post warnings.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import kopf
import kubernetes

GROUP, VERSION, PLURAL = "remediation.ishchat.io", "v1alpha1", "incidents"
PHASES = ("Diagnosing", "Remediating", "Verifying", "Resolved")
WORKERS = 16  # runbook-operator's Kube thread pool and connection pool size


class _State:
    custom: Any = None
    pool: ThreadPoolExecutor | None = None


state = _State()


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.posting.enabled = False
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    config = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(client_configuration=config)
    config.connection_pool_maxsize = WORKERS
    state.custom = kubernetes.client.CustomObjectsApi(kubernetes.client.ApiClient(config))
    state.pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="kube")


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    if state.pool is not None:
        state.pool.shutdown(wait=False, cancel_futures=True)


async def _patch_status(namespace: str, name: str, status: dict[str, Any]) -> None:
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(
        state.pool,
        lambda: state.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, PLURAL, name, {"status": status}
        ),
    )


@kopf.on.create(GROUP, VERSION, PLURAL)
async def walk(namespace: str, name: str, logger: logging.Logger, **_: Any) -> None:
    for phase in PHASES:
        status: dict[str, Any] = {"phase": phase}
        if phase == "Resolved":
            status["resolvedAt"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        await _patch_status(namespace, name, status)
    logger.debug("walked %s/%s through %d phases", namespace, name, len(PHASES))
